"""Dataset records packed into one NumPy buffer, so that DataLoader workers share them instead of copying.

A forked DataLoader worker shares its parent's memory until a page is written. Reading a Python object writes
its reference count, and Python's garbage collector writes to every container it traverses, so a worker that
walks a list of records copies, page by page, the whole list into its own memory: on a COCO-sized training
file about 150 MB per worker per 20k images, times workers, times GPUs. Records pickled into one byte array
are a handful of objects whatever their number; reading one unpickles a private copy and writes nothing
shared. detectron2 (``DatasetFromList(serialize=True)``) and mmengine (``serialize_data``) do the same.
"""

import pickle
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["PackedRecords"]


class PackedRecords(Sequence):
    """A read-only sequence of picklable records, stored pickled in one ``uint8`` array.

    ``records[i]`` returns a new copy of record ``i``: changing it does not change the sequence.

    Args:
        records: the records, in order.
    """

    def __init__(self, records: Iterable[Any]) -> None:
        # Each pickle goes into the buffer as soon as it is made: a list of them joined at the end held every
        # record twice, and left ~600 MB of freed blocks that the process kept (train2017's file).
        buffer, ends = bytearray(), []
        for record in records:
            buffer += pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
            ends.append(len(buffer))
        self._ends = np.array(ends, dtype=np.int64)
        self._buffer = np.frombuffer(buffer, dtype=np.uint8)
        self._buffer.flags.writeable = False

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        index %= len(self)
        start = int(self._ends[index - 1]) if index else 0
        return pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))
