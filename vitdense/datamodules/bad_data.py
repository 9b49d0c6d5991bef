"""The bad-data policy shared by the kit's datasets: raise with the file and the fix, or skip and count.

Every problem a dataset finds is a :class:`Finding` (kind, message, file, record). Under ``"error"`` the
first one raises :class:`BadDataError`; under ``"skip"`` the record is dropped, logged and counted; under
``"collect"`` (what :func:`vitdense.datamodules.data_check.check_data` uses) it is dropped and counted
without a log line, the report lists it. The same rules run in all three, so a data check and training
agree on what is bad.
"""

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from torch.utils.data import Dataset, get_worker_info

logger = logging.getLogger(__name__)

OnBadData = Literal["error", "skip"]
# "collect": as "skip", without a log line per record (the data check reports them all at once).
Policy = Literal["error", "skip", "collect"]
Severity = Literal["error", "note"]
# Exceptions PIL raises for unreadable, truncated or hostile files (SyntaxError: some malformed headers).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
SKIP_HINT = "or pass on_bad_data='skip' to drop it"
# One ViT patch: a smaller image holds no whole patch, and its objects are a few pixels at most.
MIN_IMAGE_SIDE = 14


@dataclass(frozen=True)
class Finding:
    """One problem of a data set, or (``severity="note"``) something converted on load.

    Attributes:
        kind: what is wrong, e.g. ``"degenerate_box"``; the key of :attr:`CheckedDataset.skipped`.
        message: the whole story: file, record and fix.
        file: the file concerned (image, label PNG or annotation JSON).
        record: the record, e.g. ``"annotation id 7"``, ``"image id 3"``, or the stem of an image/label pair.
        severity: ``"error"``: the record raises or is dropped; ``"note"``: it is converted and used.
    """

    kind: str
    message: str
    file: str = ""
    record: str = ""
    severity: Severity = "error"


class BadDataError(ValueError):
    """A record of the data set is unusable; the message names the file, the record and the fix.

    Args:
        message: the text shown.
        finding: the structured finding, when one record is at fault.
    """

    def __init__(self, message: str, finding: Finding | None = None) -> None:
        super().__init__(message)
        self.finding = finding


class CheckedDataset(Dataset):
    """A dataset whose bad records raise :class:`BadDataError` (``"error"``) or are dropped and counted.

    Records found bad at construction are dropped; every finding is kept in ``findings`` and counted in
    ``skipped`` by kind. A record that fails when it is loaded (decoding, checks that need the pixels, or
    the transform) raises under ``"error"``, always with its file and record in the message; otherwise it
    is remembered and the next record that loads is returned in its place (counts made in DataLoader
    workers stay in those processes; :meth:`verify` + :meth:`exclude` find them up front instead). An
    evaluation split (``replace_bad`` False) returns None instead, which the collate functions drop: a
    replacement would be scored twice, and the record is left out of the scores.

    Subclasses build their records in ``__init__`` and implement :meth:`__len__`, :meth:`_where`,
    :meth:`_read`, :meth:`_sample`, :meth:`_keep` and optionally :meth:`_notes`.

    Args:
        on_bad_data: ``"error"``, ``"skip"`` or ``"collect"``.
    """

    source: str = "dataset"  # what messages about the whole dataset name (a file or folders)
    replace_bad: bool = True  # False for evaluation: a record that fails to load yields None

    def __init__(self, on_bad_data: Policy) -> None:
        if on_bad_data not in ("error", "skip", "collect"):
            raise ValueError(f"on_bad_data={on_bad_data!r}; use 'error' or 'skip'")
        self.on_bad_data: Policy = on_bad_data
        self.skipped: Counter[str] = Counter()
        self.findings: list[Finding] = []
        self._bad_indices: set[int] = set()
        self._stream_seed: int | None = None  # the worker seed the transform's stream was seeded with

    # ---------------------------------------------------------------------------------- subclass hooks

    def __len__(self) -> int:
        raise NotImplementedError

    def _where(self, index: int) -> tuple[str, str]:
        """``(file, record)`` that name record ``index`` in messages."""
        raise NotImplementedError

    def _read(self, index: int) -> Any:
        """Decode record ``index`` and run the checks that need its pixels; no transform.

        Raises:
            BadDataError: with its :class:`Finding` (see :meth:`_error`), for any bad file.
        """
        raise NotImplementedError

    def _sample(self, index: int, data: Any, seed: int | None) -> Any:
        """The sample of record ``index`` from what :meth:`_read` returned (the transform runs here, with
        ``seed``: see :meth:`sample`)."""
        raise NotImplementedError

    def _keep(self, indices: list[int]) -> None:
        """Keep only the records at ``indices`` (ascending)."""
        raise NotImplementedError

    def _notes(self, index: int) -> list[Finding]:
        """Notes on record ``index`` (what loading converts, such as the image mode); none by default."""
        return []

    # ---------------------------------------------------------------------------------------- policy

    def _error(self, kind: str, message: str, file: object, record: str) -> BadDataError:
        """The :class:`BadDataError` for a bad record found while loading."""
        return BadDataError(message, Finding(kind, message, str(file), record))

    def _bad(self, kind: str, message: str, *, file: object = "", record: str = "") -> None:
        """A record found bad at construction: raise under ``"error"``, else drop (the caller) and count."""
        finding = Finding(kind, message, str(file), record)
        if self.on_bad_data == "error":
            raise BadDataError(message, finding)
        self._count(finding)

    def _count(self, finding: Finding) -> None:
        self.findings.append(finding)
        self.skipped[finding.kind] += 1
        if self.on_bad_data == "skip":
            # The hint to pass on_bad_data='skip' is moot here.
            logger.warning("skipping: %s", finding.message.replace(f", {SKIP_HINT}", ""))

    def _note(self, kind: str, message: str, *, file: object, record: str) -> None:
        """Something converted but usable; kept in ``findings`` as a note, never raised or counted."""
        self.findings.append(Finding(kind, message, str(file), record, severity="note"))
        logger.debug("%s", message)

    def _log_skips(self) -> None:
        if self.skipped and self.on_bad_data == "skip":
            total = sum(self.skipped.values())
            logger.warning("%s: skipped %d bad records: %s", self.source, total, dict(self.skipped))

    def _load_finding(self, index: int, exc: Exception) -> Finding:
        """The finding of record ``index`` failing to load with ``exc``."""
        if isinstance(exc, BadDataError) and exc.finding is not None:
            return exc.finding
        file, record = self._where(index)
        return Finding(
            "load_failed",
            f"{file} ({record}) failed to load ({type(exc).__name__}: {exc}); fix or replace the file or "
            f"remove the record (if the file looks fine, please report this with the file), {SKIP_HINT}",
            file,
            record,
        )

    # --------------------------------------------------------------------------------------- loading

    def __getitem__(self, index: int) -> Any:
        """:meth:`sample` ``index`` with the transform's own random stream.

        In a DataLoader worker the stream is first seeded with the worker's seed (``get_worker_info().seed``,
        which torch derives from the loader's generator and the worker id): forked workers would otherwise
        all draw the copy of the stream they inherited.
        """
        worker = get_worker_info()
        if worker is not None and worker.seed != self._stream_seed:
            self._stream_seed = worker.seed
            return self.sample(index, worker.seed)
        return self.sample(index)

    def sample(self, index: int, seed: int | None = None) -> Any:
        """Sample ``index``, or under ``"skip"``/``"collect"`` the next record that loads (None when
        ``replace_bad`` is False).

        Args:
            index: the record.
            seed: the seed of its augmentation (see :class:`~vitdense.datamodules.resumable.SeededSamples`);
                None: the transform goes on with its own random stream.

        Raises:
            BadDataError: under ``"error"``, naming the file and the record, whatever went wrong
                (the original exception is chained); or when no record loads at all.
        """
        count = len(self)
        for step in range(count):
            i = (index + step) % count
            if i in self._bad_indices:
                if not self.replace_bad:
                    return None
                continue
            try:
                return self._sample(i, self._read(i), seed)
            except Exception as exc:  # any failure must name its file, also in a DataLoader worker
                finding = self._load_finding(i, exc)
                if self.on_bad_data == "error":
                    if isinstance(exc, BadDataError):
                        raise
                    raise BadDataError(finding.message, finding) from exc
            self._bad_indices.add(i)
            self._count(finding)
            if not self.replace_bad:
                return None
        raise BadDataError(f"{self.source}: none of its {count} records loads; see the messages logged above")

    def verify(self, index: int) -> list[Finding]:
        """Read record ``index`` as loading does, without the transform: its error, or its notes.

        Changes nothing, so it can run in DataLoader workers; pass what it finds to :meth:`exclude`.
        """
        try:
            self._read(index)
        except Exception as exc:  # reported as a finding that names the file
            return [self._load_finding(index, exc)]
        try:
            return self._notes(index)
        except DECODE_ERRORS:  # the file decoded; an odd metadata block only costs its notes
            return []

    def exclude(self, bad: Mapping[int, Finding], notes: Iterable[Finding] = ()) -> None:
        """Drop the records that :meth:`verify` found bad and count them; keep its ``notes``.

        Raises:
            BadDataError: under ``"error"``, when ``bad`` is not empty (its first finding).
        """
        for index in sorted(bad):
            if self.on_bad_data == "error":
                raise BadDataError(bad[index].message, bad[index])
            self._count(bad[index])
        self.findings.extend(notes)
        if bad:
            self._keep([i for i in range(len(self)) if i not in bad])
        self._bad_indices.clear()
