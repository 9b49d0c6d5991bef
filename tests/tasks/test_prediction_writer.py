"""The prediction writer keeps a process's detections when the processes cannot gather them."""

import json
from types import SimpleNamespace

import pytest

from vitdense.tasks import prediction_writer
from vitdense.tasks.prediction_writer import PeerStoppedError, PredictionWriter


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
