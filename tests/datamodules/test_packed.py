"""PackedRecords: a read-only sequence of records in one buffer, and the COCO dataset that keeps them so."""

import pickle
from dataclasses import dataclass, field

import pytest

from vitdense.datamodules import CocoDetection, EvalTransform
from vitdense.datamodules.packed import PackedRecords


@dataclass
class Record:
    name: str
    values: list[float] = field(default_factory=list)


def test_records_come_back_equal_in_order_and_as_copies():
    records = [Record(f"r{i}", [i * 0.5] * i) for i in range(5)]
    packed = PackedRecords(records)
    assert len(packed) == 5 and list(packed) == records
    assert packed[-1] == records[4]
    packed[2].values.append(99.0)
    assert packed[2] == records[2], "a record taken out is a copy"
    for index in (5, -6):
        with pytest.raises(IndexError):
            packed[index]
    assert len(PackedRecords([])) == 0
    assert list(pickle.loads(pickle.dumps(packed))) == records  # DataLoader workers under spawn


def test_coco_dataset_keeps_its_records_packed_through_filtering(shapes):
    dataset = CocoDetection(
        shapes["train_images"], shapes["train_annotations"], EvalTransform(224), masks=True
    )
    assert isinstance(dataset._records, PackedRecords)
    first = dataset[1]
    dataset._keep([1, 2])
    assert isinstance(dataset._records, PackedRecords) and len(dataset) == 2
    assert dataset[0][1]["image_id"] == first[1]["image_id"] == dataset.image_ids[0]
