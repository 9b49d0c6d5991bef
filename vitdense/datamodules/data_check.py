"""The data check: every record of every split read once, images and label PNGs decoded, one report.

The check builds each split's dataset under ``on_bad_data="collect"`` and reads every record with the
dataset's own loading code (:meth:`CheckedDataset.verify`), so it applies exactly the rules training
applies. Each :class:`~vitdense.datamodules.bad_data.Finding` names the file and the record; ``"error"``
findings are records that ``on_bad_data="error"`` stops on and ``"skip"`` drops, ``"note"`` findings are
images converted on load (grayscale, alpha, palette, 16-bit, float, EXIF orientation) and still used.

``check_data(datamodule)`` serves the ``check-data`` command; DataModules built with ``check_data=True``
run it in ``setup`` and train on the checked datasets.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch.utils.data import DataLoader, Dataset

from vitdense.datamodules.bad_data import SKIP_HINT, BadDataError, CheckedDataset, Finding, Policy
from vitdense.datamodules.worker_processes import fork_safe_opencv

__all__ = [
    "CheckableDataModule",
    "DataReport",
    "SplitReport",
    "check_data",
    "check_datasets",
    "require_samples",
]

logger = logging.getLogger(__name__)


class CheckableDataModule(Protocol):
    """What :func:`check_data` needs of a DataModule (``SplitDataModule`` provides it)."""

    num_workers: int

    def checked_splits(self, stage: str | None = None) -> list[str]: ...

    def split_source(self, split: str) -> tuple[str, ...]: ...

    def split_dataset(self, split: str, on_bad_data: Policy) -> CheckedDataset: ...


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


def _counts(findings: list[Finding], severity: str) -> Counter[str]:
    return Counter(f.kind for f in findings if f.severity == severity)


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


@dataclass
class SplitReport:
    """The findings of one split.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"``.
        source: the split's files (annotation file, or image and label folders).
        samples: usable samples left after the check (0 when the split could not be read at all).
        findings: errors and notes, in the order found.
        dataset: the checked dataset (bad records removed), or None when it could not be built.
    """

    split: str
    source: str
    samples: int
    findings: list[Finding]
    dataset: CheckedDataset | None = field(default=None, repr=False, compare=False)

    @property
    def errors(self) -> int:
        """Number of bad records (each raises under ``"error"`` and is dropped under ``"skip"``)."""
        return sum(f.severity == "error" for f in self.findings)

    @property
    def notes(self) -> int:
        """Number of records converted on load and used."""
        return sum(f.severity == "note" for f in self.findings)

    def counts(self, severity: str = "error") -> Counter[str]:
        """Findings of ``severity`` (``"error"`` or ``"note"``) by kind."""
        return _counts(self.findings, severity)


@dataclass
class DataReport:
    """What :func:`check_data` found, split by split.

    Attributes:
        splits: one :class:`SplitReport` per split checked.
    """

    splits: list[SplitReport]

    @property
    def findings(self) -> list[Finding]:
        """Every finding of every split."""
        return [f for split in self.splits for f in split.findings]

    @property
    def errors(self) -> int:
        """Number of bad records over all splits; 0 means training under ``on_bad_data="error"`` can start."""
        return sum(split.errors for split in self.splits)

    @property
    def notes(self) -> int:
        """Number of converted-but-used records over all splits."""
        return sum(split.notes for split in self.splits)

    def counts(self, severity: str = "error") -> dict[str, Counter[str]]:
        """Per split, findings of ``severity`` by kind."""
        return {split.split: split.counts(severity) for split in self.splits}

    def format(self, max_notes_per_kind: int | None = 20, skip_hint: bool = True) -> str:
        """The report as text: a summary line, then per split its counts and every finding.

        Args:
            max_notes_per_kind: notes listed per kind and split (the rest are counted); None lists all.
                Errors are always all listed.
            skip_hint: keep the hint to pass ``on_bad_data='skip'`` (False: the data is read under it).
        """
        lines = [
            f"Data check of {len(self.splits)} split(s): {self.errors} bad record(s), {self.notes} note(s) "
            "(converted on load, still used)"
        ]
        for split in self.splits:
            errors, notes = split.counts("error"), split.counts("note")
            head = f"{split.split} ({split.source}): {split.samples} usable samples"
            if errors:
                head += f"; {split.errors} bad: {_summary(errors)}"
            if notes:
                head += f"; {split.notes} note(s): {_summary(notes)}"
            lines.append(head)
            shown: Counter[str] = Counter()
            for f in split.findings:
                if f.severity == "note":
                    shown[f.kind] += 1
                    if max_notes_per_kind is not None and shown[f.kind] > max_notes_per_kind:
                        continue
                message = f.message if skip_hint else f.message.replace(f", {SKIP_HINT}", "")
                lines.append(f"  {f.severity:<5}  {f.kind}: {message}")
            for kind, n in sorted(shown.items()):
                if max_notes_per_kind is not None and n > max_notes_per_kind:
                    lines.append(f"  note   {kind}: ... and {n - max_notes_per_kind} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------------------


class _Verify(Dataset):
    """``(index, findings)`` of each record of a dataset, for a DataLoader's workers."""

    def __init__(self, dataset: CheckedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, list[Finding]]:
        return index, self.dataset.verify(index)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _verify_all(dataset: CheckedDataset, num_workers: int) -> tuple[dict[int, Finding], list[Finding]]:
    """Bad records (index -> finding) and notes of ``dataset``, each record read once."""
    verify = _Verify(dataset)
    if num_workers > 0 and len(dataset) > 1:
        fork_safe_opencv(num_workers)
        loader = DataLoader(verify, batch_size=16, num_workers=num_workers, collate_fn=_as_list)
        results = (item for batch in loader for item in batch)
    else:
        results = (verify[i] for i in range(len(verify)))
    bad, notes = {}, []
    for index, findings in results:
        for f in findings:
            if f.severity == "error":
                bad.setdefault(index, f)
            else:
                notes.append(f)
    return bad, notes


def require_samples(split: str, dataset: Dataset) -> None:
    """Raise when ``dataset`` (of ``split``) has no record left: Lightning would run no step and exit 0; or,
    for a dataset that counts its ``num_objects`` (COCO), no object: training would learn background only
    and AP would be -1.

    Raises:
        BadDataError: with a ``no_samples`` or ``no_objects`` :class:`Finding` for the whole split.
    """
    source = getattr(dataset, "source", "the dataset")
    skipped = getattr(dataset, "skipped", {})
    if len(dataset) > 0:
        if getattr(dataset, "num_objects", None) != 0:
            return
        if skipped:
            why = (
                f"{sum(skipped.values())} bad record(s) were dropped ({dict(skipped)}; each is named in the "
                "messages above); fix them"
            )
        else:
            why = "the file annotates none; add the annotations or point the DataModule at the annotated file"
        use = "train on" if split == "train" else "score"
        message = (
            f"{source}: the {split} split has {len(dataset)} image(s) but not one object (crowd regions "
            f"aside) to {use}: {why}."
        )
        raise BadDataError(message, Finding("no_objects", message, str(source), "the whole split"))
    if skipped:
        why = (
            f"all {sum(skipped.values())} record(s) were bad and dropped ({dict(skipped)}; each is named in "
            "the messages above); fix them"
        )
    else:
        why = "it holds no record; point the DataModule at the right files"
    message = f"{source}: the {split} split has no usable sample: {why}."
    raise BadDataError(message, Finding("no_samples", message, str(source), "the whole split"))


def _check_one(name: str, dataset: CheckedDataset, num_workers: int) -> SplitReport:
    logger.info("data check: reading the %d records of %s (%s)", len(dataset), name, dataset.source)
    bad, notes = _verify_all(dataset, num_workers)
    dataset.exclude(bad, notes)
    findings = list(dataset.findings)
    try:
        require_samples(name, dataset)
    except BadDataError as exc:  # training would refuse the split: the check says so too
        findings.append(exc.finding)
    return SplitReport(name, dataset.source, len(dataset), findings, dataset)


def check_datasets(datasets: Mapping[str, CheckedDataset], num_workers: int = 0) -> DataReport:
    """Read every record of each dataset once; drop the bad ones from it and report.

    Args:
        datasets: split name -> dataset, built under ``on_bad_data="collect"`` (its construction findings
            are in the report too).
        num_workers: DataLoader workers reading the records (0: this process).

    Returns:
        The report; each dataset then holds only records that load, its ``skipped`` counts every bad one.
    """
    return DataReport([_check_one(name, dataset, num_workers) for name, dataset in datasets.items()])


def check_data(
    datamodule: CheckableDataModule, splits: Sequence[str] | None = None, num_workers: int | None = None
) -> DataReport:
    """Check the data of a DataModule: every image and annotation of every split read once.

    Works for :class:`~vitdense.datamodules.CocoDataModule`,
    :class:`~vitdense.datamodules.SegmentationFolderDataModule` and their subclasses. A split whose files
    cannot be read at all (a missing folder, an annotation file that is not JSON) is reported as one error.

    Args:
        datamodule: an instantiated DataModule; ``setup`` need not have run.
        splits: the splits to check (default: train, val and, when it has its own files, test).
        num_workers: DataLoader workers reading the files (default: the DataModule's).

    Returns:
        The :class:`DataReport`; ``report.errors`` is the number of bad records and ``report.format()``
        the text to show. Its ``splits[i].dataset`` are the checked datasets, bad records removed.
    """
    if not all(hasattr(datamodule, name) for name in ("checked_splits", "split_source", "split_dataset")):
        raise TypeError(
            f"{type(datamodule).__name__} cannot be checked: check_data needs checked_splits, split_source "
            "and split_dataset, as SplitDataModule subclasses (CocoDataModule, SegmentationFolderDataModule) "
            "have"
        )
    workers = datamodule.num_workers if num_workers is None else num_workers
    reports = []
    for split in datamodule.checked_splits() if splits is None else splits:
        try:
            dataset = datamodule.split_dataset(split, "collect")
        except (BadDataError, FileNotFoundError) as exc:
            source = " + ".join(str(s) for s in datamodule.split_source(split))
            finding = getattr(exc, "finding", None)
            if finding is None:
                kind = "missing_file" if isinstance(exc, FileNotFoundError) else "unreadable_split"
                finding = Finding(kind, str(exc), source, "the whole split")
            reports.append(SplitReport(split, source, 0, [finding]))
            continue
        reports.append(_check_one(split, dataset, workers))
    return DataReport(reports)
