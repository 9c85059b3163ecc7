"""How every command ends: exit statuses, one line for an error in the user's input, tracebacks only on request.

The statuses are the ones shell users know from coreutils and argparse:

- 0: the job was done. A partial result (some photos unreadable) still says how many failed.
- 1: the job produced nothing, or stopped on the user's input (data, folders, a model that does not load).
- 2: a usage error in the flags (argparse's own status).
- 130: interrupted with Ctrl-C (128 + SIGINT, as shells report it).

Errors about the user's input derive from :class:`UserInputError` (or are a missing or unwritable path).
:func:`command` prints them as ``prog: error: message``. ``--debug`` anywhere in a command's arguments,
or ``HF_MODEL_DEBUG=1``, lets them raise with their full traceback instead, as does every other exception
(a bug) always.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

FAILED, USAGE, INTERRUPTED = 1, 2, 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "HF_MODEL_DEBUG"
FALSE_WORDS = ("", "0", "false", "no", "off", "n", "f")  # what environment switches conventionally read as off

Main = TypeVar("Main", bound=Callable)


class UserInputError(Exception):
    """Base of the errors about what the user gave (photos, folders, models, settings), as opposed to bugs.

    :func:`command` prints one as a single line and exits with status 1.
    """


# A path the user named that is missing, a folder where a file was asked for, a folder they cannot write.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def exit_statuses(done: str, failed: str) -> str:
    """The ``--help`` epilog every command ends with: what its statuses 0 and 1 mean, then 2, 130 and ``--debug``."""
    return (f"exit status: 0 {done}; 1 {failed}; 2 usage error in the flags; 130 interrupted. "
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
    ``KeyboardInterrupt`` with status 130, saying ``resume_hint`` (how to continue) when given. With ``--debug`` or
    ``HF_MODEL_DEBUG=1`` both propagate unchanged.
    """
    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None):
            argv = list(sys.argv[1:] if argv is None else argv)
            if debug_requested(argv):
                return main(without_debug_flag(argv))
            name = prog() if callable(prog) else prog
            try:
                return main(argv)
            except (UserInputError, *PATH_ERRORS) as err:
                raise SystemExit(f"{name}: error: {one_line(err)}") from None
            except KeyboardInterrupt:
                print(f"\n{name}: interrupted" + (f"; {resume_hint}" if resume_hint else ""), file=sys.stderr)
                raise SystemExit(INTERRUPTED) from None
        return run  # type: ignore[return-value]
    return decorate
