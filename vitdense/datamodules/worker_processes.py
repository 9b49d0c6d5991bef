"""OpenCV single-threaded in a process that forks DataLoader worker processes.

OpenCV's thread pool did not survive fork() in some versions: a worker forked after its parent used OpenCV
in parallel hung on its first parallel call. The workers already run in parallel, so a process that forks
them runs OpenCV single-threaded, as detectron2 and mmdet do. It is set when a loader with workers is
made, not when the kit is imported (house rule 13): a process that imports the kit, or loads its data
without workers, keeps OpenCV's threads.
"""

import cv2

__all__ = ["fork_safe_opencv"]


def fork_safe_opencv(num_workers: int) -> None:
    """Run OpenCV single-threaded from now on in this process (and the workers it forks) when a loader is
    to start ``num_workers`` > 0 worker processes; otherwise change nothing."""
    if num_workers > 0:
        cv2.setNumThreads(0)
