"""How every command ends: exit statuses, one line for an error in the user's input, tracebacks only on request.

The statuses are the ones shell users know from coreutils and argparse:

- 0: the job was done. A partial result (some photos unreadable) still says how many failed.
- 1: the job produced nothing, or stopped on the user's input (data, folders, a model that does not load).
- 2: a usage error in the flags (argparse's own status).
- 130: interrupted with Ctrl-C (128 + SIGINT, as shells report it).
- 143: stopped with SIGTERM (``kill``, a scheduler's stop or preemption; 128 + SIGTERM). Like Ctrl-C, it raises in
  the command, so what it writes atomically is cleaned up and finished work is kept.

Errors about the user's input derive from :class:`UserInputError` (or are a missing or unwritable path).
:func:`command` prints them as ``prog: error: message``. ``--debug`` anywhere in a command's arguments,
or ``HF_MODEL_DEBUG=1``, lets them raise with their full traceback instead, as does every other exception
(a bug) always.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

FAILED, USAGE, INTERRUPTED, TERMINATED = 1, 2, 130, 128 + signal.SIGTERM
DEBUG_FLAG = "--debug"
DEBUG_ENV = "HF_MODEL_DEBUG"
FALSE_WORDS = ("", "0", "false", "no", "off", "n", "f")  # what environment switches conventionally read as off

Main = TypeVar("Main", bound=Callable)


class UserInputError(Exception):
    """Base of the errors about what the user gave (photos, folders, models, settings), as opposed to bugs.

    :func:`command` prints one as a single line and exits with status 1.
    """


class Terminated(BaseException):
    """SIGTERM arrived while a command ran (raised by :func:`sigterm_raises`). A ``BaseException``, as
    ``KeyboardInterrupt`` is, so that no ``except Exception`` on the way swallows it."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread, as Ctrl-C raises
    ``KeyboardInterrupt``: ``finally`` blocks and context managers run (an unfinished file's temporary copy is
    removed) where the signal's default action would end the process on the spot. Outside the main thread, where
    Python allows no handler, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated


# A path the user named that is missing, a folder where a file was asked for, a folder they cannot write.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def exit_statuses(done: str, failed: str) -> str:
    """The ``--help`` epilog every command ends with: what its statuses 0 and 1 mean, then 2, 130 and ``--debug``."""
    return (f"exit status: 0 {done}; 1 {failed}; 2 usage error in the flags; 130 interrupted; 143 stopped. "
            f"Add {DEBUG_FLAG} (or set {DEBUG_ENV}=1) to see the full traceback of an error.")


def debug_requested(argv: list[str]) -> bool:
    """Whether ``--debug`` is among the options (before any ``--``) or ``HF_MODEL_DEBUG`` is set to a true value."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return DEBUG_FLAG in options or os.environ.get(DEBUG_ENV, "").strip().lower() not in FALSE_WORDS


def without_debug_flag(argv: list[str]) -> list[str]:
    """``argv`` without the ``--debug`` options (those after ``--`` are operands and stay)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return [arg for arg in argv[:cut] if arg != DEBUG_FLAG] + argv[cut:]


def one_line(err: BaseException) -> str:
    """The message of ``err`` for a person: ``path: reason`` for an ``OSError`` about a path, else its text."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    return str(err).strip() or type(err).__name__


def command(prog: str | Callable[[], str], resume_hint: str = "") -> Callable[[Main], Main]:
    """Decorate a command's ``main(argv)`` so that the user's errors end it with one line, not a traceback.

    ``prog`` is the command as the user typed it (``"hf-model predict"``), or a function giving it at run time.
    The wrapped ``main`` receives ``argv`` (``sys.argv[1:]`` when ``None``) without ``--debug``. A
    :class:`UserInputError` or a :data:`PATH_ERRORS` error exits with status 1 and ``prog: error: message``;
    ``KeyboardInterrupt`` with status 130 and SIGTERM with 143, saying ``resume_hint`` (how to continue) when given.
    With ``--debug`` or ``HF_MODEL_DEBUG=1`` the errors propagate unchanged.
    """
    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None):
            argv = list(sys.argv[1:] if argv is None else argv)
            name = prog() if callable(prog) else prog
            hint = f"; {resume_hint}" if resume_hint else ""
            try:
                with sigterm_raises():
                    return _one_line_errors(main, argv, name, hint)
            except Terminated:
                print(f"\n{name}: stopped (SIGTERM){hint}", file=sys.stderr)
                raise SystemExit(TERMINATED) from None
        return run  # type: ignore[return-value]
    return decorate


def _one_line_errors(main: Callable, argv: list[str], name: str, hint: str):
    if debug_requested(argv):
        return main(without_debug_flag(argv))
    try:
        return main(argv)
    except (UserInputError, *PATH_ERRORS) as err:
        raise SystemExit(f"{name}: error: {one_line(err)}") from None
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted{hint}", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
