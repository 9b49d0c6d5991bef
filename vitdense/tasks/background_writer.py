"""The prediction writer's per-image work on background threads: each image's JSON record (its masks' RLEs)
and its overlay, drawn and saved, so that predicting never waits for encoding or image compression.

Threads rather than processes: drawing (numpy, OpenCV), PNG's zlib and libjpeg run in C with the GIL
released, so threads use the cores as processes would, and they share the detections the model returned,
where a process would be sent each image's masks, a copy that costs more than the drawing.
"""

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image

from vitdense.atomic_write import atomic_file

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["OVERLAY_FORMATS", "BackgroundWriter", "OverlayFormat", "save_overlay"]

OverlayFormat = Literal["png", "jpeg"]
OVERLAY_FORMATS: dict[str, str] = {"png": ".png", "jpeg": ".jpg"}  # format -> file suffix
# zlib level 1: the pixels of the default level 6 at a quarter of its time, in files a few percent larger.
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 90


def save_overlay(pixels: np.ndarray, path: Path, image_format: OverlayFormat) -> None:
    """Write uint8 (H, W, 3) ``pixels`` to ``path`` as ``image_format``, whole or not at all."""
    with atomic_file(path) as file:
        if image_format == "png":
            Image.fromarray(pixels).save(file, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        else:
            Image.fromarray(pixels).save(file, format="JPEG", quality=JPEG_QUALITY)


class BackgroundWriter:
    """Runs jobs (:meth:`run`) and draws and saves overlays (:meth:`submit`) on ``workers`` threads, with at
    most ``workers + 1`` waiting or in progress.

    :meth:`run` and :meth:`submit` return at once while a slot is free, and wait for one otherwise, so that
    memory stays bounded when the writing is slower than predicting (each waiting job holds its image's
    detections). The first job that fails (a full disk, an image that can no longer be read) is raised by
    the next :meth:`run` or :meth:`submit` or by :meth:`drain`, where a synchronous write would have raised
    it; the overlays submitted after it are not written.

    Args:
        image_format: ``"jpeg"`` (quality 90) or ``"png"`` (the drawn pixels, zlib level 1).
        workers: threads; default the cores this process may use, at most 4.
    """

    def __init__(self, image_format: OverlayFormat = "jpeg", workers: int | None = None) -> None:
        self.image_format = image_format
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._slots = threading.BoundedSemaphore(self.workers + 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._failure: BaseException | None = None  # the first, kept: later overlays are not written
        self._raised = False

    @property
    def suffix(self) -> str:
        """The overlay files' suffix: ``.png`` or ``.jpg``."""
        return OVERLAY_FORMATS[self.image_format]

    def submit(self, draw: Callable[[], np.ndarray], path: Path) -> None:
        """Save what ``draw()`` returns (uint8 (H, W, 3)) to ``path``, in the background.

        Raises:
            BaseException: the failure of work submitted before.
        """
        self.run(lambda: self._write(draw, path))

    def run(self, job: Callable[[], T]) -> "Future[T]":
        """Run ``job()`` on the threads, under the same bound as the overlays; the future holds its result.

        Raises:
            BaseException: the failure of work submitted before.
        """
        self._raise_failure()
        self._slots.acquire()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vitdense-writer")
        future = self._pool.submit(job)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _write(self, draw: Callable[[], np.ndarray], path: Path) -> None:
        if self._failure is None:  # after a failure, the run stops: no more files
            save_overlay(draw(), path, self.image_format)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
            if self._failure is None and not future.cancelled() and future.exception() is not None:
                self._failure = future.exception()
        self._slots.release()

    def _raise_failure(self) -> None:
        with self._lock:
            failure, self._raised = self._failure, self._raised or self._failure is not None
        if failure is not None:
            raise failure

    def drain(self) -> None:
        """Wait until every job and overlay submitted is done.

        Raises:
            BaseException: the first failure.
        """
        self._wait()
        self._raise_failure()

    def close(self) -> None:
        """Wait for the jobs and overlays submitted (a run that stops keeps those of the images it predicted),
        then stop the threads. A failure not raised yet is logged: the error that stopped the run is the one
        to report."""
        self._wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._failure is not None and not self._raised:
            logger.warning("A prediction's output could not be written either: %s", self._failure)
        self._failure, self._raised = None, False

    def _wait(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.exception()  # waits; failures are kept by _done
