"""The prediction writer keeps a process's detections when the processes cannot gather them, never leaves a
truncated file, and writes inside its output folder only."""

import json
import threading
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.full_disk import fill_disk_after
from vitdense.atomic_write import OutputWriteError
from vitdense.tasks import prediction_writer
from vitdense.tasks.overlay_drawing import draw_detections
from vitdense.tasks.prediction_writer import PeerStoppedError, PredictionWriter, output_names


def _built(record):
    """A record as the writer's background threads leave it: a finished future."""
    future = Future()
    future.set_result(record)
    return future


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
    writer._records = [_built({"file_name": "b.jpg", "height": 4, "width": 6, "detections": []})]
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
    writer._records = [_built({"file_name": "b.jpg", "height": 4, "width": 6, "detections": detections})]
    (tmp_path / "predictions.json").write_text('{"images": []}')  # an earlier run's, whole
    fill_disk_after(monkeypatch, 100)
    writer.on_exception(trainer, module, MemoryError("out of memory"))
    assert "its detections could not be kept: cannot write predictions.partial.json" in caplog.text
    assert [path.name for path in tmp_path.iterdir()] == ["predictions.json"]
    assert json.loads((tmp_path / "predictions.json").read_text()) == {"images": []}
    monkeypatch.undo()
    writer._records = [_built({"file_name": "b.jpg", "height": 4, "width": 6, "detections": detections})]
    writer.on_exception(trainer, module, MemoryError("out of memory"))
    assert len(json.loads((tmp_path / "predictions.partial.json").read_text())["images"]) == 1


def test_outputs_stay_inside_the_output_folder_whatever_the_paths_hold():
    files = ["d/photos/x/../../../b/1.jpg", "d/photos/y/../../../b/2.jpg", "d/photos/y/../../../b/sub/3.jpg"]
    names = {file: str(name) for file, name in output_names(files).items()}
    assert names == {files[0]: "1.png", files[1]: "2.png", files[2]: "sub/3.png"}
    same = ["d/x/../b/1.jpg", "d/y/../b/1.jpg"]  # one image by two paths: two names, neither above the folder
    assert sorted(str(name) for name in output_names(same).values()) == ["1.jpg-1.png", "1.jpg.png"]


def _one_process_trainer(folder, files):
    """What the writer reads of Lightning's trainer in a one-process ``predict`` of ``files``."""
    dataset = SimpleNamespace(files=[str(f) for f in files], passed_over=[], apply_exif=True)
    return SimpleNamespace(
        log_dir=str(folder),
        default_root_dir=str(folder),
        is_global_zero=True,
        world_size=1,
        global_rank=0,
        strategy=SimpleNamespace(broadcast=lambda value, src=0: value),
        predict_dataloaders=[SimpleNamespace(dataset=dataset)],
    )


def _predict(writer, folder, files, detections):
    """Drive ``writer`` as Lightning's predict does, one image per batch, with the same ``detections``."""
    trainer = _one_process_trainer(folder, files)
    module = SimpleNamespace(category_ids=[3, 7], class_names=["circle", "square"])
    # The detection task's side of the prediction contract (vitdense.tasks.DetectionTask).
    module.write_prediction = lambda files, output: files.write_detections(module, output)
    module.finish_predictions = lambda files, records, written: files.write_predictions_json(module, records)
    writer.setup(trainer, module, "predict")
    writer.on_predict_epoch_start(trainer, module)
    for index, file in enumerate(files):
        output = {**detections, "file_name": str(file), "image_id": index, "orig_size": (30, 40)}
        writer.write_on_batch_end(trainer, module, [output], [index], None, index, 0)
    return trainer, module


def _photos_and_detections(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for index in range(3):
        files.append(tmp_path / "photos" / f"{index}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(files[-1])
    masks = torch.zeros(3, 30, 40, dtype=torch.bool)
    masks[0, 2:20, 3:30], masks[1, 10:25, 20:38], masks[2, 0:5, 0:5] = True, True, True
    detections = {
        "boxes": torch.tensor([[3.0, 2.0, 30.0, 20.0], [20.0, 10.0, 38.0, 25.0], [0.0, 0.0, 5.0, 5.0]]),
        "labels": torch.tensor([3, 7, 3]),
        "scores": torch.tensor([0.9, 0.6, 0.2]),
        "masks": masks,
    }
    return files, detections


def test_background_overlays_leave_predictions_json_byte_identical_and_draw_the_same_pixels(tmp_path):
    files, detections = _photos_and_detections(tmp_path)
    written = {}
    for overlays, overlay_format in ((False, "png"), (True, "png"), (True, "jpeg"), (True, None)):
        out = tmp_path / f"{overlays}-{overlay_format}"
        chosen = {} if overlay_format is None else {"overlay_format": overlay_format}
        writer = PredictionWriter(str(out), overlays=overlays, **chosen)
        writer.on_predict_epoch_end(*_predict(writer, out, files, detections))
        written[overlays, overlay_format] = (out / "predictions.json").read_bytes()
    assert len(set(written.values())) == 1
    assert not (tmp_path / "False-png" / "overlays").exists()
    for chosen in ("jpeg", None):  # JPEG by default
        jpegs = sorted(p.name for p in (tmp_path / f"True-{chosen}" / "overlays").iterdir())
        assert jpegs == ["0.jpg", "1.jpg", "2.jpg"]
    for file in files:
        image = torch.from_numpy(np.array(Image.open(file))).permute(2, 0, 1)
        labels = torch.tensor([1, 2, 1])  # category ids 3, 7 -> labels 1, 2
        boxes, scores, masks = detections["boxes"], detections["scores"], detections["masks"]
        expected = draw_detections(image, boxes, labels, scores, ["circle", "square"], masks=masks)
        overlay = np.asarray(Image.open(tmp_path / "True-png" / "overlays" / f"{file.stem}.png"))
        assert np.array_equal(overlay, expected.permute(1, 2, 0).numpy())


def test_a_stopped_predict_keeps_the_overlays_of_the_images_it_predicted(tmp_path, monkeypatch):
    files, detections = _photos_and_detections(tmp_path)
    release = threading.Event()
    drawing = prediction_writer.detection_overlay
    late = lambda *args, **kwargs: release.wait(10) and drawing(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(prediction_writer, "detection_overlay", late)
    writer = PredictionWriter(str(tmp_path / "out"), overlay_format="jpeg")
    trainer, module = _predict(writer, tmp_path / "out", files[:2], detections)
    assert list((tmp_path / "out").glob("overlays/*.jpg")) == []  # submitted, still drawing
    threading.Timer(0.2, release.set).start()
    writer.on_exception(trainer, module, KeyboardInterrupt())
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == ["0.jpg", "1.jpg"]
    assert len(json.loads((tmp_path / "out" / "predictions.partial.json").read_text())["images"]) == 2


def test_a_record_that_fails_in_the_background_stops_the_run_and_the_others_are_kept(tmp_path, monkeypatch):
    files, detections = _photos_and_detections(tmp_path)
    building = prediction_writer.detection_record

    def failing_on_the_second(prediction, *args, **kwargs):
        if prediction["file_name"].endswith("1.png"):
            raise ValueError(f"{prediction['file_name']}: boxes and scores differ in length")
        return building(prediction, *args, **kwargs)

    monkeypatch.setattr(prediction_writer, "detection_record", failing_on_the_second)
    writer = PredictionWriter(str(tmp_path / "out"), overlays=False)
    # The last image's record fails: raised at the end (one that fails earlier is raised by a later image's
    # write, whichever comes first), as a record built in the main thread would have stopped the run.
    trainer, module = _predict(writer, tmp_path / "out", files[:2], detections)
    with pytest.raises(ValueError, match="1.png: boxes and scores differ"):
        writer.on_predict_epoch_end(trainer, module)
    assert not (tmp_path / "out" / "predictions.json").exists()
    writer.on_exception(trainer, module, ValueError())
    saved = json.loads((tmp_path / "out" / "predictions.partial.json").read_text())
    assert [Path(record["file_name"]).name for record in saved["images"]] == ["0.png"]


def test_label_maps_are_saved_in_the_background_and_a_full_disk_still_stops_the_run(tmp_path, monkeypatch):
    trainer = _one_process_trainer(tmp_path, ["a.jpg", "b.jpg"])
    module = SimpleNamespace(num_classes=300, class_names=[f"c{index}" for index in range(300)])
    module.write_prediction = lambda files, output: files.write_label_map(module, output)
    module.finish_predictions = lambda files, records, written: files.write_classes_json(module, written)
    labels = torch.tensor([[0, 299], [7, 7]])

    def started(out):
        writer = PredictionWriter(str(out), overlays=False)
        writer.setup(trainer, module, "predict")
        writer.on_predict_epoch_start(trainer, module)
        return writer

    def write(writer, names):
        for index, name in enumerate(names):
            output = {"label": labels, "file_name": name, "image_id": index}
            writer.write_on_batch_end(trainer, module, [output], [index], None, index, 0)

    out = tmp_path / "out"
    writer = started(out)
    write(writer, ["a.jpg", "b.jpg"])
    writer.on_predict_epoch_end(trainer, module)
    saved = np.asarray(Image.open(out / "labels" / "a.png"))
    assert saved.dtype == np.uint16 and saved.tolist() == [[0, 299], [7, 7]]  # 16-bit above 256 classes
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.png", "b.png"]

    full = tmp_path / "full"
    writer = started(full)
    fill_disk_after(monkeypatch, 10)
    write(writer, ["a.jpg"])
    with pytest.raises(OutputWriteError, match=r"cannot write a.png into .*labels: its disk is full"):
        writer.on_predict_epoch_end(trainer, module)  # the background save's failure, raised at the end
    writer.on_exception(trainer, module, OSError())
    assert not list((full / "labels").glob("*.png")) and not (full / "classes.json").exists()
