"""Atomic file writes: a file a user relies on is either the old one or the whole new one, never half.

Write to a temporary name in the same folder, flush it to disk, then ``os.replace`` it onto the
real name (atomic on POSIX and Windows within one file system). A run killed mid-write leaves at
most a hidden ``.name.XXXX.tmp`` file, which no reader mistakes for the real one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hf_model.exit_status import UserInputError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    ``mode`` is ``"w"`` (text; ``open_kwargs`` such as ``newline=""`` pass through) or ``"wb"``.
    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a normal file is world-readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, data, **dump_kwargs) -> Path:
    """``json.dump(data)`` to ``path`` atomically (``indent=2`` unless given); returns ``path``."""
    dump_kwargs.setdefault("indent", 2)
    with atomic_write(path) as f:
        json.dump(data, f, **dump_kwargs)
    return Path(path)


class FolderBusyError(UserInputError, RuntimeError):
    """Another process holds the folder's lock (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file in it, ``fcntl.flock``) while the block runs.

    Two processes writing one folder's results (a study's CSV, a search's trials) would undo each other's
    work; the second gets :class:`FolderBusyError` at once, naming ``what`` runs there. The lock goes with the
    process, so a killed run never leaves the folder locked.
    """
    import fcntl

    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(f"another {what} is running in {folder}: wait for it to finish, or give another "
                                  "--output_dir") from None
        yield
