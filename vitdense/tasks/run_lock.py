"""One training run at a time in a checkpoint folder."""

import datetime
import os
import socket
from pathlib import Path

from vitdense.atomic_write import OutputWriteError, check_writable_folder

__all__ = ["FolderInUseError", "RunLock"]

LOCK_NAME = ".vitdense-run.lock"


class FolderInUseError(RuntimeError):
    """Another run holds the checkpoint folder; the message names it, the holder and the fixes."""


class RunLock:
    """An exclusive lock on a checkpoint folder for the length of one training run.

    The lock is an advisory ``flock`` on ``<folder>/.vitdense-run.lock``, which holds the holder's pid, host
    and start time for the message a second run gets. The system drops the lock when its process ends, however
    it ends (killed, out of memory, pre-empted): no stale lock outlives its run. The file is removed on
    :meth:`release`; a run that dies leaves it unlocked, and the next run takes it over.

    Args:
        folder: the checkpoint folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock, or fail at once.

        Raises:
            FolderInUseError: another run holds it.
            OutputWriteError: the folder cannot be created or written (read-only, a file, a full disk).
        """
        if self._descriptor is not None:
            return
        import fcntl  # POSIX (Linux, macOS): imported here so that the kit still imports where it is missing

        check_writable_folder(self.folder)
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise OutputWriteError(f"cannot write into {self.folder}: {error.strerror}") from error
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(descriptor)
                os.close(descriptor)
                raise FolderInUseError(
                    f"{self.folder} is in use by another training run ({holder}), which writes its "
                    "step*.ckpt and last.ckpt there: this run would overwrite them. Give this run another "
                    "trainer.default_root_dir, or wait for that run to end and continue it with "
                    "--ckpt_path last"
                ) from None
            # The holder may have released and removed the file between our open and lock: lock the file that
            # is now at the path, not a removed one.
            if self._is_current(descriptor):
                break
            os.close(descriptor)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()} on {socket.gethostname()}, started {started}".encode())
        self._descriptor = descriptor

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing when not held)."""
        if self._descriptor is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so that no other run locks the removed file
        os.close(self._descriptor)
        self._descriptor = None

    def _is_current(self, descriptor: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _holder(descriptor: int) -> str:
        text = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
        return text or "it has just started"
