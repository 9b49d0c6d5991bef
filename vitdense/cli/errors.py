"""How the ``vitdense`` command reports an error: a user's mistake in one line, anything else with its
traceback."""

import linecache
import os
import re
from pathlib import Path

from vitdense.datamodules import BadDataError


def error_message(error: BaseException) -> str:
    """The message of ``error``, without the worker's traceback PyTorch puts into errors from DataLoader
    workers."""
    message = str(error)
    if "Original Traceback" in message:
        message = message.rstrip().rsplit(f"{type(error).__name__}: ", 1)[-1]
    return message


_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # vitdense/
# A frame of the worker's traceback that PyTorch writes into the message of an error from a DataLoader worker.
_WORKER_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in .*\n    (?P<code>.*)$', re.MULTILINE)


def is_user_error(error: BaseException) -> bool:
    """Whether vitdense raised ``error`` itself, with a message that names the problem and the fix (bad
    data, a bad path, option or config value), so that a traceback would only bury the message.

    That is a :class:`BadDataError` or a ``FileNotFoundError`` (e.g. Lightning's for a ``--ckpt_path``), or an
    error whose innermost frame (in a DataLoader worker: the worker's) is a ``raise`` statement in vitdense's
    own code. An error raised anywhere else (a bug, in vitdense's code or another package's)
    keeps its traceback.
    """
    if isinstance(error, (BadDataError, FileNotFoundError)):
        return True
    worker_frames = list(_WORKER_FRAME.finditer(str(error)))
    if "Original Traceback" in str(error) and worker_frames:  # raised in a DataLoader worker
        file, raising_line = worker_frames[-1]["file"], worker_frames[-1]["code"]
    else:
        traceback = error.__traceback__
        while traceback is not None and traceback.tb_next is not None:
            traceback = traceback.tb_next
        if traceback is None:
            return False
        file = traceback.tb_frame.f_code.co_filename
        raising_line = linecache.getline(file, traceback.tb_lineno)
    return os.path.realpath(file).startswith(_PACKAGE_DIR) and raising_line.lstrip().startswith("raise ")
