"""Files the kit writes are never half-written under their final name.

Each is written to a temporary file in its destination folder, flushed to disk (``fsync``) and renamed over
the final name (``os.replace``, atomic on one file system); the folder is synced so that the rename survives
a crash. A write that fails (a full disk, a read-only folder) leaves the earlier file under that name as it
was, removes the temporary file and raises :class:`OutputWriteError`, whose message names the folder, why and
the fix.
"""

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

__all__ = ["OutputWriteError", "atomic_file", "atomic_path", "check_writable_folder", "write_atomically"]

# Errors of a write itself, as opposed to those of whatever produces the content.
_WRITE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EISDIR
}


class OutputWriteError(OSError):
    """A file could not be written into its folder (full, read-only, not a folder); the message says which,
    why and the fix."""


def _blocking_file(folder: Path) -> Path | None:
    """The file that stands where ``folder`` or one of its parents should be, if any."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def _unwritable(folder: Path, name: str, error: OSError, probe: bool = False) -> OutputWriteError:
    """The one-line error for ``error``, met writing file ``name`` (or a probe) into ``folder``."""
    blocking = _blocking_file(folder)
    fix = "write elsewhere"
    if blocking is not None:
        why = f"{blocking} is a file, not a folder"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why, fix = f"its disk is full ({error.strerror})", "free some space there or write elsewhere"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = f"it is read-only for this process ({error.strerror})"
    else:
        why = error.strerror or str(error)
    if probe:
        return OutputWriteError(f"cannot write into {folder}: {why}; {fix}")
    return OutputWriteError(f"cannot write {name} into {folder}: {why}; {fix} (any earlier {name} is kept)")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it is synced and renamed to ``path``.

    For writers that take a path (``torch.onnx.export``); :func:`atomic_file` gives an open file.

    Raises:
        OutputWriteError: the folder cannot be created or written, or the write failed for lack of space or
            permission.
    """
    path = Path(path)
    folder = path.parent
    temp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(folder, path.name, error) from error
    try:
        yield temp
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # the error that stopped the write is the one to report
            temp.unlink(missing_ok=True)
        write_error = _write_error(error)
        if write_error is not None:
            raise _unwritable(folder, path.name, write_error) from error
        raise
    _sync_folder(folder)


def _write_error(error: BaseException) -> OSError | None:
    """The failed write behind ``error``, if any: a writer may wrap it (``torch.save`` raises a RuntimeError
    while closing the archive whose write failed)."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, OutputWriteError):
        if isinstance(seen, OSError) and seen.errno in _WRITE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: Literal["wb", "w"] = "wb") -> Iterator[IO]:
    """A new file open for writing (binary, or UTF-8 text with ``mode="w"``) that replaces ``path`` only
    once it is whole (see :func:`atomic_path`)."""
    with atomic_path(path) as temp:
        encoding = "utf-8" if mode == "w" else None
        try:
            file = open(temp, mode.replace("w", "x"), encoding=encoding)
        except OSError as error:
            raise _unwritable(Path(path).parent, Path(path).name, error) from error
        with file:
            yield file


def write_atomically(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` through :func:`atomic_file`; return ``path``."""
    with atomic_file(path, "w" if isinstance(content, str) else "wb") as file:
        file.write(content)
    return Path(path)


def check_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that a file can be written into it, before a long run writes
    its first output there; return it.

    Raises:
        OutputWriteError: it is a file, or read-only, or on a full disk.
    """
    folder = Path(folder)
    probe = folder / f".vitdense-write-check.{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(descriptor, b"\0")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            probe.unlink()
    except OSError as error:
        raise _unwritable(folder, "", error, probe=True) from error
    return folder


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Not every file system syncs folders (some network ones refuse):
    the rename itself is then all there is."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
