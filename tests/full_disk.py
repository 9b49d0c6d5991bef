"""A disk that fills up: the kit's file writes (vitdense.atomic_write) fail with ENOSPC after some bytes."""

import builtins
import errno
import io
import os

import pytest

from vitdense import atomic_write


class _FillingFile:
    """A file open for writing that takes ``room`` more bytes, writes part of the next chunk, then fails as a
    full disk does. It has no ``fileno``, so that writers (PIL) go through :meth:`write`."""

    def __init__(self, file: io.IOBase, room: list[int]) -> None:
        self._file = file
        self._room = room

    def write(self, data):
        if len(data) > self._room[0]:
            self._file.write(data[: self._room[0]])
            self._file.flush()
            self._room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= len(data)
        return self._file.write(data)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self) -> "_FillingFile":
        return self

    def __exit__(self, *exception) -> None:
        self._file.close()


def fill_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """From now on the kit's writes have ``room`` bytes left, all files together."""
    left = [room]

    def opened(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        return _FillingFile(file, left) if any(flag in mode for flag in "wxa") else file

    monkeypatch.setattr(atomic_write, "open", opened, raising=False)
