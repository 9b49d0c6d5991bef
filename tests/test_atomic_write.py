"""A file the kit writes is whole under its name or not there; a write that fails names the folder and why."""

import errno
import json
import os

import pytest

from tests.full_disk import fill_disk_after
from vitdense import atomic_write
from vitdense.atomic_write import OutputWriteError, atomic_file, check_writable_folder, write_atomically


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    path = write_atomically(tmp_path / "deep" / "report.json", json.dumps({"AP": 1.0}))
    assert json.loads(path.read_text()) == {"AP": 1.0}
    write_atomically(path, b'{"AP": 2.0}')
    assert json.loads(path.read_text()) == {"AP": 2.0}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_a_full_disk_keeps_the_earlier_file_and_says_so_in_one_line(tmp_path, monkeypatch):
    path = write_atomically(tmp_path / "predictions.json", json.dumps({"images": [1, 2, 3]}))
    fill_disk_after(monkeypatch, 10)
    with pytest.raises(OutputWriteError) as error:
        write_atomically(path, json.dumps({"images": list(range(1000))}))
    assert str(error.value).startswith(f"cannot write predictions.json into {tmp_path}: its disk is full")
    assert "free some space there or write elsewhere" in str(error.value) and "\n" not in str(error.value)
    assert json.loads(path.read_text()) == {"images": [1, 2, 3]}, "the earlier file is intact"
    with pytest.raises(OutputWriteError):
        write_atomically(tmp_path / "new.json", "x" * 100)
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.json"], "no truncated file, no temporary one"


def test_an_error_of_the_content_leaves_no_file(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_file(tmp_path / "model.pt2") as file:
            file.write(b"half")
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_a_file_or_read_only_is_named(tmp_path, monkeypatch):
    (tmp_path / "out").write_text("a file where the folder should be")
    for folder in (tmp_path / "out", tmp_path / "out" / "overlays"):
        blocked = f"{tmp_path / 'out'} is a file, not a folder; write elsewhere"
        with pytest.raises(OutputWriteError, match=f"cannot write into {folder}: {blocked}"):
            check_writable_folder(folder)
        with pytest.raises(OutputWriteError, match=f"cannot write classes.json into {folder}: {blocked}"):
            write_atomically(folder / "classes.json", "{}")

    def read_only(path, *args, **kwargs):  # tests run as root, which no chmod stops
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(atomic_write.os, "open", read_only)
    monkeypatch.setattr(atomic_write, "open", read_only, raising=False)
    with pytest.raises(OutputWriteError, match=rf"cannot write into {tmp_path}: it is read-only for this"):
        check_writable_folder(tmp_path)
    with pytest.raises(OutputWriteError, match=rf"cannot write a.json into {tmp_path}: it is read-only"):
        write_atomically(tmp_path / "a.json", "{}")
    monkeypatch.undo()
    assert check_writable_folder(tmp_path / "new") == tmp_path / "new"
    assert list((tmp_path / "new").iterdir()) == [], "the probe is gone"
