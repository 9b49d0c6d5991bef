"""The benchmark tools that run on the CPU: what they report must stay true."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid
from vitdense.heads import MaskRCNN, paste_detections

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _host_syncs():
    return _benchmark("host_syncs")


def _model_and_batch():
    host_syncs = _host_syncs()
    torch.manual_seed(0)
    backbone = SimpleFeaturePyramid(BirderBackbone(TINY_NETWORK, config=TINY_CONFIG), out_channels=32)
    model = MaskRCNN(80, backbone, head_dim=32, fc_dim=64)
    images, targets = host_syncs.synthetic_batch(2, 224, 10, torch.device("cpu"))
    return host_syncs, model, images, targets


def test_the_training_step_synchronises_only_in_torchvisions_nms_and_subsampling():
    host_syncs, model, images, targets = _model_and_batch()
    model.train()
    step = lambda: sum(model(images, [(224, 224)] * 2, targets).values()).backward()  # noqa: E731
    step()
    with host_syncs.as_on_cuda(), host_syncs.counting_host_syncs() as counter:
        step()
    where = list(counter.counts)
    # Matching, sampling, box coding and anchors no longer synchronise (torchvision's det_utils would)...
    assert not [w for w in where if "detection/_utils.py" in w or "anchor_generator" in w]
    # ...and vitdense's own code does so once per batch (input check), once per pooled level and, picking the
    # mask branch's positive RoIs (torchvision's RoIHeads did the same), once per image.
    ours = {w.split(" @ ")[1].split(":")[0] + " " + w.rsplit(" ", 1)[1] for w in where if "vitdense/" in w}
    ours = {w.replace("roi_heads.py <listcomp>", "roi_heads.py forward") for w in ours}  # Python < 3.12
    assert ours == {
        "vitdense/heads/detector.py _check_inputs",
        "vitdense/heads/roi_align.py forward",
        "vitdense/heads/roi_heads.py forward",
    }
    assert sum(n for w, n in counter.counts.items() if "vitdense/heads/roi_heads.py" in w) == 2
    assert sum(n for w, n in counter.counts.items() if "roi_align.py" in w) <= 8
    assert sum(counter.counts.values()) <= 30  # 2 images: NMS and proposal filtering per image, subsampling


def test_inference_with_mask_pasting_synchronises_a_few_times_per_image():
    host_syncs, model, images, _ = _model_and_batch()
    model.eval()
    host_syncs.busy_box_predictor(model)

    def step():
        with torch.inference_mode():
            detections = model(images, [(224, 224)] * 2)
        assert [len(d["boxes"]) for d in detections] == [100, 100]
        paste_detections(detections, [0.5, 0.5], [(448, 448)] * 2)

    step()
    with host_syncs.as_on_cuda(), host_syncs.counting_host_syncs() as counter:
        step()
    # torchvision's pasting alone made ~14 per mask: 2800 here.
    assert sum(counter.counts.values()) <= 20 * 2


def test_the_frozen_probe_scores_its_four_variants_on_tiny_data(capsys):
    frozen_probe = _benchmark("frozen_probe")
    options = ["--size", "238", "--steps", "10", "--num-train", "4", "--num-val", "2", "--batch-size", "4"]
    rows = frozen_probe.main(["--tiny", *options])
    assert [(row["positions"], row["final_norm"]) for row in rows] == [
        ("extrapolated", False),
        ("mapped", False),
        ("extrapolated", True),
        ("mapped", True),
    ]
    assert all(0.0 <= row[name] <= 1.0 for row in rows for name in ("mIoU", "aAcc", "mAcc"))
    assert rows[0]["mIoU"] != rows[2]["mIoU"]  # the final norm reaches the features the head is fitted on
    assert capsys.readouterr().out.count("| mapped | True |") == 1


def test_the_synthetic_val_split_gives_the_evaluator_what_the_results_files_hold(tmp_path):
    synthetic = _benchmark("coco_synthetic")
    synthetic.write_val(tmp_path, images=4, detections=7)
    gt = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())
    bbox = json.loads((tmp_path / "results" / "bbox_results.json").read_text())
    segm = json.loads((tmp_path / "results" / "segm_results.json").read_text())
    arrays = np.load(tmp_path / "results" / "detections.npz")
    assert len(gt["images"]) == 4 and len(bbox) == len(segm) == len(arrays["score"]) == 28
    xyxy = arrays["boxes_xyxy"]
    widths = (xyxy[:, 2:] - xyxy[:, :2]).tolist()  # float32, as CocoEvaluator.update computes them
    assert [r["bbox"] for r in bbox] == [[*a[:2], *w] for a, w in zip(xyxy.tolist(), widths)]
    sizes = {image["id"]: [image["height"], image["width"]] for image in gt["images"]}
    assert all(r["segmentation"]["size"] == sizes[r["image_id"]] for r in segm)
    assert {a["category_id"] for a in gt["annotations"]} <= set(synthetic.COCO_CATEGORY_IDS)


def test_the_coco_evaluation_benchmark_reports_every_tool_with_pycocotools_numbers(tmp_path, capsys):
    evaluation = _benchmark("coco_evaluation")
    evaluation.main(["--tiny", "--data", str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in printed if line.startswith("{")]
    assert [row["tool"] for row in rows] == list(evaluation.TOOLS)
    for row in rows:
        assert row["compute_s"] > 0 and len(row["stats"]["bbox"]) == len(row["stats"]["segm"]) == 12
    kit = [row for row in rows if row["tool"].startswith("evaluator")]
    assert all(row["update_ms_per_image"] > 0 and row["compute_peak_gb"] > 0 for row in kit)
    table = {line.split(" | ")[0][2:]: line for line in printed if line.startswith("| ")}
    assert table.keys() >= set(evaluation.TOOLS)
    for tool in ("pycocotools", "evaluator", "evaluator-pycocotools"):
        assert table[tool].endswith("| identical |"), table[tool]


def test_the_coco_setup_benchmark_reports_time_and_memory(tmp_path, capsys):
    _benchmark("coco_setup").main(["--tiny", "--data", str(tmp_path)])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["train_images"] > 0 and report["val_images"] == 20
    assert report["total_s"] > 0 and report["rss_after_setup_gb"] > 0 and report["peak_rss_gb"] > 0


def test_the_predict_writer_benchmark_times_model_and_writer_with_and_without_overlays(capsys):
    rows = _benchmark("predict_writer").main(["--tiny", "--writer_option", 'overlay_format="jpeg"'])
    assert [(row["overlays"], row.get("overlay_format")) for row in rows] == [(False, None), (True, "jpeg")]
    assert all(row["images"] == 3 and row["model_ms"] > 0 and row["writer_ms"] > 0 for row in rows)
    assert all(row["total_ms"] >= row["model_ms"] for row in rows)
    assert "predictions.json identical with and without overlays: True" in capsys.readouterr().out
