"""The bad-data policy shared by the kit's datasets: raise with the file and the fix, or skip and count."""

import logging
from collections import Counter
from collections.abc import Callable
from typing import Literal, TypeVar

from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

OnBadData = Literal["error", "skip"]
# Exceptions PIL raises for unreadable, truncated or hostile files (SyntaxError: some malformed headers).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
SKIP_HINT = "or pass on_bad_data='skip' to drop it"

Sample = TypeVar("Sample")


class BadDataError(ValueError):
    """A record of the data set is unusable; the message names the file, the record and the fix."""


class CheckedDataset(Dataset):
    """A dataset whose bad records raise :class:`BadDataError` (``"error"``) or are logged and counted.

    Under ``"skip"``, records found bad at construction are dropped and counted in ``skipped`` by reason; a
    record that fails to load is remembered and another one is returned in its place (counts made in
    DataLoader workers stay in those processes).

    Args:
        on_bad_data: ``"error"`` or ``"skip"``.
    """

    def __init__(self, on_bad_data: OnBadData) -> None:
        if on_bad_data not in ("error", "skip"):
            raise ValueError(f"on_bad_data={on_bad_data!r}; use 'error' or 'skip'")
        self.on_bad_data = on_bad_data
        self.skipped: Counter[str] = Counter()
        self._bad_indices: set[int] = set()

    def _bad(self, reason: str, message: str) -> None:
        if self.on_bad_data == "error":
            raise BadDataError(message)
        logger.warning("skipping: %s", message)
        self.skipped[reason] += 1

    def _log_skips(self, source: object) -> None:
        if self.skipped:
            total = sum(self.skipped.values())
            logger.warning("%s: skipped %d bad records: %s", source, total, dict(self.skipped))

    def _first_readable(
        self,
        index: int,
        count: int,
        load: Callable[[int], Sample],
        decode_message: Callable[[int, Exception], str],
        reasons: tuple[str, str],
        nothing_readable: str,
    ) -> Sample:
        """``load(index)``, or under ``"skip"`` the next record that loads.

        Args:
            index: the requested record.
            count: number of records.
            load: loads record ``i``; raises :class:`BadDataError` or a decode error.
            decode_message: the message (file and fix) for a decode error of record ``i``.
            reasons: the skip reasons of a :class:`BadDataError` and of a decode error.
            nothing_readable: the message when no record loads at all.
        """
        for step in range(count):
            i = (index + step) % count
            if i in self._bad_indices:
                continue
            try:
                return load(i)
            except BadDataError as exc:
                if self.on_bad_data == "error":
                    raise
                reason, message = reasons[0], str(exc)
            except DECODE_ERRORS as exc:
                message = decode_message(i, exc)
                if self.on_bad_data == "error":
                    raise BadDataError(message) from exc
                reason = reasons[1]
            self._bad_indices.add(i)
            self._bad(reason, message)
        raise BadDataError(nothing_readable)
