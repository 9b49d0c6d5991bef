"""The prediction writer keeps a process's detections when the processes cannot gather them, never leaves a
truncated file, and writes inside its output folder only."""

import json
from types import SimpleNamespace

import pytest

from tests.full_disk import fill_disk_after
from vitdense.tasks import prediction_writer
from vitdense.tasks.prediction_writer import PeerStoppedError, PredictionWriter, output_names


def test_detections_a_failed_gathering_leaves_are_saved_by_their_process(tmp_path, monkeypatch):
    def peer_gone(*_):
        raise RuntimeError(
            "[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:21735.\nmore"
        )

    monkeypatch.setattr(prediction_writer.dist, "is_available", lambda: True)
    monkeypatch.setattr(prediction_writer.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(prediction_writer.dist, "all_gather_object", peer_gone)
    trainer = SimpleNamespace(world_size=2, global_rank=1, is_global_zero=False)
    module = SimpleNamespace(category_ids=[3], class_names=["circle"])
    writer = PredictionWriter(str(tmp_path))
    writer._folder = tmp_path
    writer._records = [{"file_name": "b.jpg", "height": 4, "width": 6, "detections": []}]
    (tmp_path / "predictions.json").write_text("{}")  # an earlier run's

    with pytest.raises(
        PeerStoppedError, match="another process stopped .*: .*Connection closed by peer"
    ) as info:
        writer.on_predict_epoch_end(trainer, module)
    assert "more" not in str(info.value)
    writer.on_exception(trainer, module, info.value)
    saved = json.loads((tmp_path / "predictions.partial.rank1.json").read_text())
    assert [record["file_name"] for record in saved["images"]] == ["b.jpg"]
    assert saved["categories"] == [{"id": 3, "name": "circle"}]
    assert not (tmp_path / "predictions.json").exists()


def test_a_full_disk_keeps_the_earlier_predictions_and_leaves_no_truncated_partial_file(
    tmp_path, monkeypatch, caplog
):
    trainer = SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True)
    module = SimpleNamespace(category_ids=[3], class_names=["circle"])
    writer = PredictionWriter(str(tmp_path))
    writer._folder = tmp_path
    detections = [{"bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "category_id": 3} for _ in range(50)]
    writer._records = [{"file_name": "b.jpg", "height": 4, "width": 6, "detections": detections}]
    (tmp_path / "predictions.json").write_text('{"images": []}')  # an earlier run's, whole
    fill_disk_after(monkeypatch, 100)
    writer.on_exception(trainer, module, MemoryError("out of memory"))
    assert "its detections could not be kept: cannot write predictions.partial.json" in caplog.text
    assert [path.name for path in tmp_path.iterdir()] == ["predictions.json"]
    assert json.loads((tmp_path / "predictions.json").read_text()) == {"images": []}
    monkeypatch.undo()
    writer._records = [{"file_name": "b.jpg", "height": 4, "width": 6, "detections": detections}]
    writer.on_exception(trainer, module, MemoryError("out of memory"))
    assert len(json.loads((tmp_path / "predictions.partial.json").read_text())["images"]) == 1


def test_outputs_stay_inside_the_output_folder_whatever_the_paths_hold():
    files = ["d/photos/x/../../../b/1.jpg", "d/photos/y/../../../b/2.jpg", "d/photos/y/../../../b/sub/3.jpg"]
    names = {file: str(name) for file, name in output_names(files).items()}
    assert names == {files[0]: "1.png", files[1]: "2.png", files[2]: "sub/3.png"}
    same = ["d/x/../b/1.jpg", "d/y/../b/1.jpg"]  # one image by two paths: two names, neither above the folder
    assert sorted(str(name) for name in output_names(same).values()) == ["1.jpg-1.png", "1.jpg.png"]
