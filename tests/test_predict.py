"""What a run leaves behind and what users do with it: reports, logs, checkpoints, predict, inference."""

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.full_disk import fill_disk_after
from tests.test_checkpoint_trust import _one_line_error
from tests.tiny import TINY_CONFIG
from vitdense.cli import main
from vitdense.cli.export_checkpoint import _exported_classes, _program_path
from vitdense.datamodules import BadDataError
from vitdense.inference import Predictor, load_checkpoint
from vitdense.tasks import DetectionTask, LabelSpace, SemanticSegmentationTask
from vitdense.tasks.prediction_writer import detection_record, output_names

RECIPES = Path(__file__).parents[1] / "recipes"


def _tiny_vit() -> dict:
    return {"init_args": {"config": TINY_CONFIG}}


def _fit_tiny_demo(
    tmp: Path, recipe: str, model: str, network: dict, num_train: int = 8, num_val: int = 4
) -> Path:
    """Fits a shapes demo recipe for 4 steps, on images it generates in ``tmp``, with a tiny ViT.

    Args:
        tmp: folder of the run and its data.
        recipe: file name of the recipe in ``recipes/``.
        model: the task's argument that takes the network (``detector``, ``segmenter``).
        network: that argument's override (``init_args``, optionally ``class_path``), less the backbone.
        num_train: generated training images.
        num_val: generated validation images.

    Returns:
        The run's log folder.
    """
    backbone = {"init_args": {"out_channels": 32, "vit": _tiny_vit()}}
    network = {**network, "init_args": {**network["init_args"], "backbone": backbone}}
    overrides = tmp / "tiny.yaml"
    overrides.write_text(yaml.safe_dump({"model": {"init_args": {model: network}}}))
    main(
        [
            "fit",
            "--config",
            str(RECIPES / recipe),
            "--config",
            str(overrides),
            f"--data.init_args.root={tmp / 'shapes'}",
            f"--data.init_args.num_train={num_train}",
            f"--data.init_args.num_val={num_val}",
            "--data.init_args.num_workers=0",
            "--trainer.max_steps=4",
            "--trainer.max_epochs=2",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={tmp / 'run'}",
        ]
    )
    (log_dir,) = (tmp / "run" / "lightning_logs").iterdir()
    return log_dir


def _last_checkpoint(log_dir: Path) -> Path:
    """``last.ckpt`` of a run: in ``<default_root_dir>/checkpoints``, shared by its versions."""
    return log_dir.parents[1] / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("detection")
    return _fit_tiny_demo(
        tmp, "demo_shapes_mask_rcnn.yaml", "detector", {"init_args": {"head_dim": 32, "fc_dim": 64}}
    )


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("segmentation")
    segmenter = {"init_args": {"channels": 32, "aux_channels": 32}}
    return _fit_tiny_demo(tmp, "demo_shapes_semseg.yaml", "segmenter", segmenter)


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Images as cameras and web pages make them, and the (h, w) each must be predicted at.

    Two share a stem (``camera.jpg``, ``camera.png``): see :data:`OUTPUT_NAMES`.
    """
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    rgb = np.zeros((150, 200, 3), np.uint8)
    rgb[30:100, 40:150] = (220, 40, 40)
    rgb += rng.integers(0, 30, rgb.shape, dtype=np.uint8)
    # Stored on its side with EXIF orientation 6 ("rotate 90 clockwise to view"): viewed as 150 x 200.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(folder / "camera.jpg", exif=exif.tobytes())
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "transparent.png")
    Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257).save(
        folder / "deep.png"
    )
    Image.fromarray(rgb).resize((97, 61)).convert("P").save(folder / "palette.gif")
    Image.fromarray(rgb[:90, :120]).save(folder / "camera.png")
    sizes = {"camera.jpg": (150, 200), "gray.png": (150, 200), "transparent.png": (150, 200)}
    sizes |= {"deep.png": (150, 200), "palette.gif": (61, 97), "camera.png": (90, 120)}
    return folder, sizes


# Where predict writes each image's overlay / label map: photos sharing a stem keep their whole names.
OUTPUT_NAMES = {
    "camera.jpg": "camera.jpg.png",
    "camera.png": "camera.png.png",
    "gray.png": "gray.png",
    "transparent.png": "transparent.png",
    "deep.png": "deep.png",
    "palette.gif": "palette.png",
}
# Overlays are JPEGs by default (--overlay_format png for PNGs).
OVERLAY_NAMES = {image: str(Path(name).with_suffix(".jpg")) for image, name in OUTPUT_NAMES.items()}


@pytest.mark.oldest
def test_a_run_leaves_reports_logs_images_and_checkpoints(detection_run):
    assert (detection_run / "val_step4_metrics.json").is_file()
    assert {path.name for path in detection_run.glob("*_results.json")} == {
        "val_step4_bbox_results.json",
        "val_step4_segm_results.json",
    }, "COCO results files from the validation that ends fit, not from every validation"
    (best,) = (detection_run / "checkpoints").iterdir()  # the best by val/segm_AP, in the run's own folder
    assert best.name.startswith("best-step")
    latest = _last_checkpoint(detection_run)  # the latest state, in a folder every version shares
    assert {path.name for path in latest.parent.iterdir()} == {"last.ckpt", "step4.ckpt"}
    assert latest.resolve().name == "step4.ckpt"
    header = (detection_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/images_per_sec", "train/loss", "val/segm_AP"} <= set(header)
    assert any(name.startswith("lr-AdamW") for name in header)
    (events,) = detection_run.glob("events.out.tfevents.*")
    tags = EventAccumulator(str(events), size_guidance={"images": 0}).Reload().Tags()
    assert {"val/predictions/0", "val/predictions/3"} <= set(tags["images"])
    assert "train/images_per_sec" in tags["scalars"]


def test_predict_writes_json_and_overlays_in_original_orientation_and_size(
    detection_run, mixed_images, tmp_path
):
    folder, sizes = mixed_images
    out = tmp_path / "predictions"
    main(
        [
            "predict",
            "--config",
            str(detection_run / "config.yaml"),
            "--ckpt_path",
            str(_last_checkpoint(detection_run)),
            f"--data.init_args.predict_images={folder}",
            f"--writer.output_dir={out}",
            "--writer.score_threshold=0.0",
        ]
    )
    written = json.loads((out / "predictions.json").read_text())
    assert [c["name"] for c in written["categories"]] == ["circle", "rectangle", "triangle", "diamond"]
    by_name = {Path(record["file_name"]).name: record for record in written["images"]}
    assert set(by_name) == set(sizes)
    for name, (height, width) in sizes.items():
        record = by_name[name]
        assert (record["height"], record["width"]) == (height, width)
        assert record["detections"], "a random tiny model still returns low-score detections"
        for detection in record["detections"]:
            assert detection["segmentation"]["size"] == [height, width]
            assert detection["category_name"] in {"circle", "rectangle", "triangle", "diamond"}
        overlay = Image.open(out / "overlays" / OVERLAY_NAMES[name])
        assert overlay.size == (width, height) and overlay.mode == "RGB"
    assert sorted(path.name for path in (out / "overlays").iterdir()) == sorted(OVERLAY_NAMES.values())

    # Python inference from the checkpoint alone gives the same predictions, from a path or a PIL image.
    predictor = Predictor.from_checkpoint(_last_checkpoint(detection_run))
    names = dict(zip(predictor.task.category_ids, predictor.class_names, strict=True))
    for name, record in by_name.items():
        assert detection_record(predictor(folder / name), names) == {
            **record,
            "file_name": str(folder / name),
        }
        from_pil = predictor(Image.open(folder / name))
        assert detection_record(from_pil, names)["detections"] == record["detections"]
        assert from_pil["names"] == [d["category_name"] for d in record["detections"]]


@pytest.mark.oldest
def test_predict_from_a_checkpoint_alone_writes_what_the_recipe_writes(
    detection_run, mixed_images, tmp_path, monkeypatch
):
    folder, sizes = mixed_images
    checkpoint = _last_checkpoint(detection_run)
    from_recipe = tmp_path / "from_recipe"
    main(
        [
            "predict",
            "--config",
            str(detection_run / "config.yaml"),
            "--ckpt_path",
            str(checkpoint),
            f"--data.init_args.predict_images={folder}",
            f"--writer.output_dir={from_recipe}",
        ]
    )
    # A deployment: the checkpoint alone, without the run's data (annotation files) or config.
    data = detection_run.parents[2] / "shapes"
    data.rename(data.with_name("moved"))
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(SystemExit) as exit_status:
            main(["predict", "--ckpt_path", str(checkpoint), "--images", str(folder), "--batch_size=4"])
    finally:
        data.with_name("moved").rename(data)
    assert exit_status.value.code == 0
    out = tmp_path / "predictions"  # the default output folder
    assert json.loads((out / "predictions.json").read_text()) == json.loads(
        (from_recipe / "predictions.json").read_text()
    )
    assert sorted(path.name for path in (out / "overlays").iterdir()) == sorted(OVERLAY_NAMES.values())


def test_predict_from_a_checkpoint_says_what_is_wrong(detection_run, tmp_path, capsys, caplog):
    checkpoint = str(_last_checkpoint(detection_run))
    for arguments, message in [
        (
            ["--ckpt_path", str(tmp_path / "no.ckpt"), "--images", str(tmp_path)],
            "no.ckpt: checkpoint not found",
        ),
        (["--ckpt_path", checkpoint, "--images", str(tmp_path / "*.jpg")], "no image file matches"),
        (["--ckpt_path", checkpoint], "the following arguments are required: --images"),
        (
            ["--ckpt_path", checkpoint, "--images", str(tmp_path), "--score_threshold", "2"],
            "from 0 to 1: got 2",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_status:
            main(["predict", *arguments])
        error = capsys.readouterr().err
        assert exit_status.value.code == 2 and message in error and "usage:" not in error
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp_path / "a.png")  # read before broken.jpg
    Image.new("RGB", (50, 40), (30, 200, 30)).save(tmp_path / "c.png")  # and this one after it
    for workers in (0, 1):  # the file is found unreadable in a worker, and named by the main process
        out = tmp_path / f"out{workers}"
        with pytest.raises(SystemExit) as exit_status:
            main(
                ["predict", "--ckpt_path", checkpoint, "--images", str(tmp_path), f"--num_workers={workers}"]
                + [f"--output_dir={out}"]
            )
        assert exit_status.value.code == 1
        error = capsys.readouterr().err
        assert "vitdense predict: 1 of 3 images could not be read and have no outputs" in error, error
        assert f"{tmp_path / 'broken.jpg'} cannot be decoded" in error, error
        # The other images, before and after it, are predicted.
        records = json.loads((out / "predictions.json").read_text())["images"]
        assert [record["file_name"] for record in records] == [str(tmp_path / n) for n in ("a.png", "c.png")]
        assert sorted(path.name for path in (out / "overlays").iterdir()) == ["a.jpg", "c.jpg"]
    (tmp_path / "broken.jpg").unlink()
    with pytest.raises(SystemExit) as exit_status:
        main(["predict", "--ckpt_path", checkpoint, "--images", str(tmp_path), "--output_dir", str(out)])
    assert exit_status.value.code == 0
    assert f"{out} holds an earlier run's outputs (predictions.json, overlays)" in caplog.text
    # A glob that takes in the output folder would predict an earlier run's overlays as images.
    with pytest.raises(ValueError, match=r"2 of the images to predict are in the output folder .*out1"):
        main(
            [
                "predict",
                "--ckpt_path",
                checkpoint,
                "--images",
                str(tmp_path / "**" / "*"),
                "--output_dir",
                str(out),
            ]
        )


def test_predict_keeps_the_stored_pixels_when_asked(detection_run, mixed_images, tmp_path):
    """A dataset annotated on the stored pixels of EXIF-rotated photos is predicted in its own frame."""
    folder, _ = mixed_images
    checkpoint = str(_last_checkpoint(detection_run))
    for flag, size in [("--apply_exif", (150, 200)), ("--no-apply_exif", (200, 150))]:
        out = tmp_path / flag
        with pytest.raises(SystemExit) as exit_status:
            main(
                ["predict", "--ckpt_path", checkpoint, "--images", str(folder / "camera.jpg"), flag]
                + [f"--output_dir={out}", "--num_workers=0"]
            )
        assert exit_status.value.code == 0
        (record,) = json.loads((out / "predictions.json").read_text())["images"]
        assert (record["height"], record["width"]) == size
        assert Image.open(out / "overlays" / "camera.jpg").size == size[::-1]


def test_segmentation_predict_writes_label_maps_and_python_inference_agrees(
    segmentation_run, mixed_images, tmp_path, capsys
):
    folder, sizes = mixed_images
    out = tmp_path / "predictions"
    main(
        [
            "predict",
            "--config",
            str(segmentation_run / "config.yaml"),
            "--ckpt_path",
            str(_last_checkpoint(segmentation_run)),
            f"--data.init_args.predict_images={folder}",
            f"--writer.output_dir={out}",
        ]
    )
    predictor = Predictor.from_checkpoint(_last_checkpoint(segmentation_run))
    assert isinstance(predictor.task, SemanticSegmentationTask)
    assert sorted(path.name for path in (out / "labels").iterdir()) == sorted(OUTPUT_NAMES.values())
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == predictor.task.class_names and classes[0]["index"] == 0
    for name, (height, width) in sizes.items():
        saved = np.asarray(Image.open(out / "labels" / OUTPUT_NAMES[name]))
        assert saved.shape == (height, width) and saved.max() < predictor.task.num_classes
        assert Image.open(out / "overlays" / OVERLAY_NAMES[name]).size == (width, height)
        np.testing.assert_array_equal(predictor(folder / name)["label"].numpy(), saved)

    alone = tmp_path / "alone"
    with pytest.raises(SystemExit) as exit_status:
        main(
            ["predict", "--ckpt_path", str(_last_checkpoint(segmentation_run)), "--images", str(folder)]
            + [f"--output_dir={alone}", "--no-overlays", "--num_workers=0"]
        )
    assert exit_status.value.code == 0 and not (alone / "overlays").exists()
    for name in sizes:
        saved = np.asarray(Image.open(out / "labels" / OUTPUT_NAMES[name]))
        np.testing.assert_array_equal(np.asarray(Image.open(alone / "labels" / OUTPUT_NAMES[name])), saved)

    # A sliding window instead of the run's whole-image evaluation: checked, then used.
    checkpoint = str(_last_checkpoint(segmentation_run))
    with pytest.raises(SystemExit) as exit_status:
        main(["predict", "--ckpt_path", checkpoint, "--images", str(folder), "--sliding_window", "100", "50"])
    assert (
        exit_status.value.code == 2
        and "sliding_window crop 100 must be a multiple" in capsys.readouterr().err
    )
    slid = tmp_path / "slid"
    with pytest.raises(SystemExit) as exit_status:
        main(
            ["predict", "--ckpt_path", checkpoint, "--images", str(folder / "camera.jpg")]
            + ["--sliding_window", "112", "56", f"--output_dir={slid}", "--num_workers=0"]
        )
    assert exit_status.value.code == 0
    predictor.task.sliding_window = (112, 56)
    np.testing.assert_array_equal(
        np.asarray(Image.open(slid / "labels" / "camera.png")),
        predictor(folder / "camera.jpg")["label"].numpy(),
    )

    # Through the recipe too: an unreadable file is named at the end, after the others' label maps.
    with_broken = tmp_path / "with_broken"
    shutil.copytree(folder, with_broken)
    (with_broken / "broken.png").write_bytes(b"\x89PNG not really")
    recipe = ["predict", "--config", str(segmentation_run / "config.yaml"), "--ckpt_path", checkpoint]
    with pytest.raises(BadDataError, match=r"(?s)1 of \d+ images could not be read.*broken.png cannot be"):
        main(
            [
                *recipe,
                f"--data.init_args.predict_images={with_broken}",
                f"--writer.output_dir={tmp_path / 'b'}",
            ]
        )
    assert sorted(path.name for path in (tmp_path / "b" / "labels").iterdir()) == sorted(
        OUTPUT_NAMES.values()
    )
    # A run of the first batch only names no image as unreadable.
    one_batch = ["--trainer.limit_predict_batches=1", f"--writer.output_dir={tmp_path / 'one'}"]
    main([*recipe, f"--data.init_args.predict_images={folder}", *one_batch])
    assert len(list((tmp_path / "one" / "labels").iterdir())) >= 1


def test_output_names_never_overwrite_one_another():
    files = ["d/a.jpg", "d/A.png", "d/a.jpg.png", "d/sub/b.jpg", "d/sub/b.tif", "d/c.gif", "d/sub/c.gif"]
    assert {file: str(name) for file, name in output_names(files).items()} == {
        "d/a.jpg": "a.jpg.png",
        "d/A.png": "A.png.png",  # a case-insensitive file system would mix a.png and A.png up
        "d/a.jpg.png": "a.jpg-1.png",
        "d/sub/b.jpg": "sub/b.jpg.png",
        "d/sub/b.tif": "sub/b.tif.png",
        "d/c.gif": "c.png",
        "d/sub/c.gif": "sub/c.png",
    }
    assert {str(name) for name in output_names(["/photos/one.jpg"]).values()} == {"one.png"}


@pytest.mark.oldest
def test_checkpoints_restore_without_their_weights_file(detection_run, tmp_path, capsys):
    # The recipe's backbone weights file has moved since training: the checkpoint holds every weight.
    missing = {"init_args": {"backbone": {"init_args": {"vit": {"init_args": {"weights": "/gone/vit.pt"}}}}}}
    override = tmp_path / "moved.yaml"
    override.write_text(yaml.safe_dump({"model": {"init_args": {"detector": missing}}}))
    ckpt = _last_checkpoint(detection_run)
    args = [
        "--config",
        str(detection_run / "config.yaml"),
        "--config",
        str(override),
        "--ckpt_path",
        str(ckpt),
    ]
    main(["validate", *args, f"--trainer.default_root_dir={tmp_path}"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trained = json.loads((detection_run / "val_step4_metrics.json").read_text())
    assert printed["step"] == 4, "reports name the checkpoint's step, not the evaluation run's 0"
    assert printed["segm_AP"] == trained["segm_AP"] and printed["bbox_AP"] == trained["bbox_AP"]

    task = load_checkpoint(ckpt)
    assert isinstance(task, DetectionTask) and not task.training
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    torch.testing.assert_close(task.state_dict(), saved)


@pytest.mark.oldest
def test_options_given_with_ckpt_path_win_over_the_checkpoints_own(detection_run, tmp_path, capsys):
    """Lightning builds the model from the checkpoint's init args; those on the command line still count."""
    main(
        [
            "test",
            "--config",
            str(detection_run / "config.yaml"),
            "--ckpt_path",
            str(_last_checkpoint(detection_run)),
            "--model.init_args.per_class_ap=true",
            "--model.init_args.detector.init_args.detections_per_img=1",
            "--model.init_args.detector.init_args.score_thresh=0.0",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert re.search(r"class\s+bbox AP %\n", capsys.readouterr().out), "the per-class table is printed"
    (report,) = tmp_path.rglob("test_step4_metrics.json")
    assert set(json.loads(report.read_text())["per_class_AP"]["bbox"]) == {
        "circle",
        "rectangle",
        "triangle",
        "diamond",
    }
    (results,) = tmp_path.rglob("test_step4_bbox_results.json")
    per_image = Counter(result["image_id"] for result in json.loads(results.read_text()))
    assert per_image and max(per_image.values()) == 1


def test_a_checkpoint_for_other_classes_says_so(detection_run, segmentation_run):
    checkpoint = torch.load(_last_checkpoint(detection_run), weights_only=False)
    task = load_checkpoint(_last_checkpoint(detection_run))
    other = DetectionTask(
        3, lambda num_classes: type(task.model)(backbone=task.model.backbone, num_classes=num_classes)
    )
    only = r"\(only in the checkpoint: \['circle', 'rectangle', 'triangle', 'diamond'\]; only in the data"
    with pytest.raises(ValueError, match=rf"was trained for 4 classes, but this data has 3 {only}") as error:
        other.on_load_checkpoint(checkpoint)
    assert "_background_" not in str(error.value)  # the hint is for checkpoints trained with that class
    checkpoint["label_space"]["class_names"] = ["_background_", "circle", "rectangle", "triangle"]
    other.label_space = LabelSpace.of(["circle", "rectangle", "triangle"], [1, 2, 3])
    with pytest.raises(ValueError, match="'_background_' category returns with keep_background_category"):
        other.on_load_checkpoint(checkpoint)

    # A checkpoint of the other task is named as such, before any weight or shape is compared.
    detection_checkpoint = checkpoint
    checkpoint = torch.load(_last_checkpoint(segmentation_run), weights_only=False)
    task = load_checkpoint(_last_checkpoint(segmentation_run))
    with pytest.raises(ValueError, match="is a DetectionTask checkpoint, but this run's model is a Semantic"):
        task.on_load_checkpoint(detection_checkpoint)
    with pytest.raises(ValueError, match="is a SemanticSegmentationTask checkpoint, but .* DetectionTask"):
        other.on_load_checkpoint(checkpoint)

    # Evaluating on a datamodule, its label space governs, not the checkpoint's.
    names = [f"class {index}" for index in range(task.num_classes)]
    task._set_label_space(LabelSpace.of(names, range(len(names)), 11))
    task._label_space_from_data = True
    task.on_load_checkpoint(checkpoint)
    assert task.ignore_index == task.confmat.ignore_index == 11 and task.class_names == names


def test_load_checkpoint_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt: checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.ckpt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="bare.ckpt does not hold the config of its model"):
        load_checkpoint(tmp_path / "bare.ckpt")


@pytest.mark.oldest
@pytest.mark.slow(seconds=11)
def test_export_round_trips_the_trained_detector_with_its_check(
    detection_run, mixed_images, tmp_path, capsys
):
    folder, _ = mixed_images
    output = tmp_path / "detector.pt2"
    ckpt = str(_last_checkpoint(detection_run))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", ckpt, "--output", str(output), "--sample", str(folder / "camera.jpg")])
    assert exit_info.value.code == 0 and output.is_file()
    assert "detector.pt2" in capsys.readouterr().out
    program = torch.export.load(output).module()
    image = torch.zeros(1, 3, 224, 224, dtype=torch.uint8)
    outputs = program(image, torch.tensor([224, 224]))
    assert any(o.shape[-2:] == (28, 28) for o in outputs if torch.is_tensor(o)), "masks survive export"
    # The program's labels are 1..K: the file beside it maps them to the dataset's category ids.
    classes = json.loads(output.with_suffix(".classes.json").read_text())
    task = load_checkpoint(ckpt)
    assert classes["task"] == "detection"
    assert [(c["label"], c["category_id"], c["name"]) for c in classes["labels"]] == [
        (label, category_id, name)
        for label, (category_id, name) in enumerate(zip(task.category_ids, task.class_names), start=1)
    ]


def test_export_says_what_is_wrong_with_its_inputs(detection_run, tmp_path, capsys):
    ckpt = str(_last_checkpoint(detection_run))
    for arguments, message in [
        (["--ckpt_path", str(tmp_path / "no.ckpt")], "no.ckpt: checkpoint not found"),
        (["--ckpt_path", ckpt, "--sample", str(tmp_path / "no.jpg")], "no.jpg does not exist"),
        (["--ckpt_path", ckpt, "--output", str(tmp_path / "model")], "--output is a .pt2 file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--output", str(tmp_path / "d.pt2"), *arguments])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error and "usage:" not in error


def test_export_names_a_program_after_the_step_a_last_link_points_at(tmp_path):
    (tmp_path / "step100.ckpt").touch()
    (tmp_path / "last.ckpt").symlink_to("step100.ckpt")
    (tmp_path / "model.ckpt").symlink_to(tmp_path / "step100.ckpt")  # e.g. a file kept in an annex
    assert _program_path(tmp_path / "last.ckpt") == tmp_path / "step100.pt2"
    assert _program_path(tmp_path / "model.ckpt") == tmp_path / "model.pt2"
    assert _program_path(tmp_path / "step100.ckpt") == tmp_path / "step100.pt2"


def test_export_of_a_segmenter_needs_its_size(segmentation_run, tmp_path, capsys):
    ckpt = str(_last_checkpoint(segmentation_run))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", ckpt, "--output", str(tmp_path / "s.pt2")])
    assert exit_info.value.code == 2 and "needs --image_size" in capsys.readouterr().err
    task = load_checkpoint(ckpt)
    classes = _exported_classes(task)  # what export writes beside the program
    assert classes["task"] == "semantic_segmentation" and classes["ignore_index"] == task.ignore_index
    assert [c["name"] for c in classes["classes"]] == task.class_names
    assert [c["index"] for c in classes["classes"]] == list(range(task.num_classes))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", ckpt, "--image_size", "112", "168"])
    # Named after the step's checkpoint that last.ckpt links to, not after the link, which moves on.
    assert Path(ckpt).is_symlink() and not Path(ckpt).with_suffix(".pt2").exists()
    assert exit_info.value.code == 0 and Path(ckpt).resolve().with_suffix(".pt2").is_file()


def test_predict_names_the_files_it_passes_over_and_fails(detection_run, tmp_path, capsys):
    """A folder's HEIC photos, notes and dangling links were left out without a word, with exit status 0."""
    checkpoint = str(_last_checkpoint(detection_run))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (60, 40), (200, 30, 30)).save(photos / "a.png")
    (photos / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (photos / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_status:
        main(["predict", "--ckpt_path", checkpoint, "--images", str(photos), f"--output_dir={out}"])
    assert exit_status.value.code == 1
    error = capsys.readouterr().err
    assert "vitdense predict: 2 file(s) found with the images were not predicted:" in error, error
    assert f"{photos / 'phone.heic'}: a HEIC image, which this Pillow has no decoder for" in error
    assert f"{photos / 'gone.jpg'}: a link that cannot be followed" in error
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert [record["file_name"] for record in records] == [str(photos / "a.png")]
    # Through the recipe too.
    recipe = ["predict", "--config", str(detection_run / "config.yaml"), "--ckpt_path", checkpoint]
    with pytest.raises(BadDataError, match=r"(?s)^2 file\(s\) found with the images were not predicted"):
        main([*recipe, f"--data.init_args.predict_images={photos}", f"--writer.output_dir={tmp_path / 'b'}"])
    assert (tmp_path / "b" / "overlays" / "a.jpg").is_file()


def test_predict_writes_only_inside_its_output_folder(detection_run, tmp_path):
    """A glob may climb out of the folders it names: the outputs still go below the output folder."""
    for sub in ("x", "y"):
        (tmp_path / "deep" / "photos" / sub).mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for name, colour in (("1.png", (200, 30, 30)), ("2.png", (30, 200, 30))):
        Image.new("RGB", (60, 40), colour).save(tmp_path / "b" / name)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    out = tmp_path / "deep" / "out"
    images = tmp_path / "deep" / "photos" / "*" / ".." / ".." / ".." / "b" / "*.png"
    checkpoint = str(_last_checkpoint(detection_run))
    predict = ["predict", "--ckpt_path", checkpoint, "--images", str(images), f"--output_dir={out}"]
    with pytest.raises(SystemExit) as exit_status:
        main([*predict, "--num_workers=0"])
    assert exit_status.value.code == 0
    after = {
        path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and out not in path.parents
    }
    assert after == before, "nothing written or changed outside the output folder"
    # Both routes through x/ and y/ name the same two files, each predicted once.
    assert sorted(path.name for path in (out / "overlays").iterdir()) == ["1.jpg", "2.jpg"]


def test_predict_and_export_name_an_output_folder_they_cannot_write(
    detection_run, tmp_path, monkeypatch, capsys
):
    checkpoint = str(_last_checkpoint(detection_run))
    image = tmp_path / "a.png"
    Image.new("RGB", (60, 40), (200, 30, 30)).save(image)
    taken = tmp_path / "taken"
    taken.write_text("a file where the outputs should go")
    predict = ["predict", "--ckpt_path", checkpoint, "--images", str(image), "--num_workers=0"]
    not_a_folder = f"cannot write into {taken}: {taken} is a file, not a folder; write elsewhere"
    error = _one_line_error([*predict, f"--output_dir={taken}"], monkeypatch, capsys)
    assert error == f"vitdense predict: {not_a_folder}"
    with pytest.raises(SystemExit) as exit_status:
        main(["export", "--ckpt_path", checkpoint, "--output", str(taken / "model.pt2")])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {not_a_folder}"

    fill_disk_after(monkeypatch, 50)  # the disk fills while the first overlay is written
    out = tmp_path / "out"
    error = _one_line_error([*predict, f"--output_dir={out}"], monkeypatch, capsys)
    assert error.startswith(f"vitdense predict: cannot write a.jpg into {out / 'overlays'}: its disk is full")
    assert list((out / "overlays").iterdir()) == [] and not (out / "predictions.partial.json").exists()


def test_a_cascade_mask_rcnn_checkpoint_predicts_a_folder(tmp_path):
    """Cascade Mask R-CNN (recipes/coco_cascade_mask_rcnn.yaml) through `vitdense predict --ckpt_path`."""
    detector = {
        "class_path": "vitdense.heads.CascadeMaskRCNN",
        "init_args": {
            "head_dim": 32,
            "fc_dim": 64,
            "roi_batch_size_per_image": 32,
            "score_thresh": 0.0,  # a model trained for 4 steps: detections to write all the same
            "detections_per_img": 3,
        },
    }
    log_dir = _fit_tiny_demo(
        tmp_path, "demo_shapes_mask_rcnn.yaml", "detector", detector, num_train=4, num_val=2
    )
    images = tmp_path / "photos"
    images.mkdir()
    for name, colour in (("red.png", (200, 30, 30)), ("green.jpg", (30, 200, 30))):
        canvas = np.zeros((70, 90, 3), np.uint8)
        canvas[10:50, 20:70] = colour
        Image.fromarray(canvas).save(images / name)
    out = tmp_path / "out"
    checkpoint = _last_checkpoint(log_dir)
    assert torch.load(checkpoint, weights_only=True)["hyper_parameters"]["detector"]["class_path"].endswith(
        "CascadeMaskRCNN"
    )
    with pytest.raises(SystemExit) as exit_status:
        main(["predict", "--ckpt_path", str(checkpoint), "--images", str(images), f"--output_dir={out}"])
    assert exit_status.value.code == 0
    written = json.loads((out / "predictions.json").read_text())
    assert [c["name"] for c in written["categories"]] == ["circle", "rectangle", "triangle", "diamond"]
    records = {Path(record["file_name"]).name: record for record in written["images"]}
    assert set(records) == {"red.png", "green.jpg"}
    for record in records.values():
        assert (record["height"], record["width"]) == (70, 90)
        assert 0 < len(record["detections"]) <= 3
        for detection in record["detections"]:
            assert detection["category_id"] in {c["id"] for c in written["categories"]}
            assert detection["segmentation"]["size"] == [70, 90] and 0.0 <= detection["score"] <= 1.0
            x, y, w, h = detection["bbox"]
            assert 0 <= x <= x + w <= 90 and 0 <= y <= y + h <= 70
    assert sorted(path.name for path in (out / "overlays").iterdir()) == ["green.jpg", "red.jpg"]
