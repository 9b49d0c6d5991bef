"""``vitdense predict``'s time per image, split into model and prediction writer, with and without overlays.

The images are synthetic JPEGs (seeded: blurred colour blobs and noise, as a photo compresses) of ``--size``
pixels; every image gets the same fixed boxes and masks (``--detections`` boxes, each with an elliptic bool
mask at full size, as the task returns them after pasting) with labels (80 classes) and scores (0.5-1.0)
drawn anew for each image (seeded), so that the captions ("class_12 0.87") vary from image to image as in
a real run, where each new caption's text is rendered once (``--captions fixed``: the same labels and scores
on every image, each caption rendered once for the whole run). The writer
(``vitdense.tasks.prediction_writer.PredictionWriter``) is driven as Lightning drives it in ``predict``:
``setup``, ``on_predict_epoch_start``, ``write_on_batch_end`` per image, ``on_predict_epoch_end``.

The model is simulated, so that the writer's cost is what differs between rows:

- ``--model cpu`` does a fixed amount of torch work per image (matrix products, as many as take
  ``--model_ms`` alone on this machine, calibrated once): a model predicting on the CPU, which shares the
  cores with any background writing;
- ``--model wait`` sleeps ``--model_ms``: the main process of a GPU run, waiting for the device.

Printed: one JSON line per run (``overlays`` off, then on): ``model_ms`` (per image, the model's steps),
``writer_ms`` (per image, the writer's calls in the main process, the final drain included), ``total_ms``
(wall time per image), ``cpu_ms`` (the process's CPU time per image, all threads: what the run costs a
shared machine) and ``writer_main_cpu_ms`` (the main thread's CPU time in the writer's calls per image);
then the ratio of the two runs' totals. Wall times depend on the machine's load; CPU times much less.

``--stages`` prints instead the CPU time of each stage of one image's outputs, one at a time: the JSON record
(in the main thread, the masks' regions included), reading the image again, drawing without masks (its
captions' text rendered anew, then as a run draws them, rendered before), the masks' regions alone, drawing
with the masks (from their regions), and saving as PNG and as JPEG.

    python benchmarks/predict_writer.py                          # 50 images of 1 MP, 100 detections
    python benchmarks/predict_writer.py --model wait --model_ms 23
    python benchmarks/predict_writer.py --stages
    python benchmarks/predict_writer.py --tiny                   # 3 small images, for the tests
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from vitdense.datamodules.instance_masks import mask_regions
from vitdense.datamodules.predict_images import as_rgb_array
from vitdense.tasks.background_writer import save_overlay
from vitdense.tasks.overlay_drawing import RenderedCaptions, detection_overlay
from vitdense.tasks.prediction_writer import PredictionWriter, detection_record

CLASS_NAMES = [f"class_{index}" for index in range(80)]
CATEGORY_IDS = list(range(1, 81))


def write_images(folder: Path, count: int, height: int, width: int, seed: int = 0) -> list[Path]:
    """``count`` RGB JPEGs of ``height`` x ``width`` in ``folder``: smooth blobs plus noise (seeded)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        coarse = rng.integers(0, 256, (max(1, height // 64), max(1, width // 64), 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.BILINEAR).filter(ImageFilter.BLUR)
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(np.asarray(smooth, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        path = folder / f"image_{index:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def fixed_detections(height: int, width: int, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``count`` detections as ``DetectionTask.predict_step`` returns them: ``boxes`` float32 (N, 4) xyxy
    pixels, ``labels`` int64 category ids, ``scores`` float32 in [0.5, 1), ``masks`` bool (N, H, W), each an
    ellipse filling its box."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, width * 0.8, count)
    y1 = rng.uniform(0, height * 0.8, count)
    x2 = np.minimum(x1 + rng.uniform(16, width * 0.3, count), width - 1)
    y2 = np.minimum(y1 + rng.uniform(16, height * 0.3, count), height - 1)
    boxes = torch.from_numpy(np.stack([x1, y1, x2, y2], 1)).float()
    rows = torch.arange(height, dtype=torch.float32)[None, :, None]
    cols = torch.arange(width, dtype=torch.float32)[None, None, :]
    x1, y1, x2, y2 = (boxes[:, index, None, None] for index in range(4))
    masks = ((2 * cols - x1 - x2) / (x2 - x1)) ** 2 + ((2 * rows - y1 - y2) / (y2 - y1)) ** 2 <= 1
    return {
        "boxes": boxes,
        "labels": torch.from_numpy(rng.choice(CATEGORY_IDS, count)).long(),
        "scores": torch.from_numpy(rng.uniform(0.5, 1.0, count)).float(),
        "masks": masks,
    }


def image_labels_scores(images: int, count: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Each image's ``labels`` (int64 category ids) and ``scores`` (float32 in [0.5, 1)) for ``count``
    detections, seeded, uniform: ~80 x 50 captions, fewer repeated than where a few classes dominate (COCO's
    person)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "labels": torch.from_numpy(rng.choice(CATEGORY_IDS, count)).long(),
            "scores": torch.from_numpy(rng.uniform(0.5, 1.0, count)).float(),
        }
        for _ in range(images)
    ]


class _Model:
    """A stand-in model step: fixed torch work (``cpu``) or a sleep (``wait``) of about ``ms`` alone."""

    def __init__(self, kind: str, ms: float) -> None:
        self.kind, self.ms = kind, ms
        self._a = torch.randn(256, 256)
        self.products = 0
        if kind == "cpu" and ms > 0:
            start, done = time.perf_counter(), 0
            while time.perf_counter() - start < 0.5:
                self._work(20)
                done += 20
            self.products = max(1, round(done * ms / 1000 / (time.perf_counter() - start)))

    def _work(self, products: int) -> None:
        b = self._a
        for _ in range(products):
            b = torch.tanh(b @ self._a)

    def __call__(self) -> None:
        if self.kind == "wait":
            time.sleep(self.ms / 1000)
        else:
            self._work(self.products)


def run(
    files: list[Path],
    detections: dict[str, torch.Tensor],
    out: Path,
    model: _Model,
    per_image: list[dict[str, torch.Tensor]] | None = None,
    **writer_options: Any,
) -> dict[str, Any]:
    """Predict ``files`` as the writer sees it, each with ``detections`` updated by its ``per_image`` entry;
    per-image milliseconds of the model, the writer and all."""
    height, width = detections["masks"].shape[-2:]
    writer = PredictionWriter(str(out), **writer_options)
    dataset = SimpleNamespace(files=[str(f) for f in files], passed_over=[], apply_exif=True)
    trainer = SimpleNamespace(
        log_dir=str(out),
        default_root_dir=str(out),
        is_global_zero=True,
        world_size=1,
        global_rank=0,
        strategy=SimpleNamespace(broadcast=lambda value, src=0: value),
        predict_dataloaders=[SimpleNamespace(dataset=dataset)],
    )
    module = SimpleNamespace(category_ids=CATEGORY_IDS, class_names=CLASS_NAMES)
    # The detection task's side of the prediction contract (vitdense.tasks.DetectionTask).
    module.write_prediction = lambda files, output: files.write_detections(module, output)
    module.finish_predictions = lambda files, records, written: files.write_predictions_json(module, records)
    writer.setup(trainer, module, "predict")
    writer.on_predict_epoch_start(trainer, module)
    model_s = writer_s = writer_cpu_s = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for index, file in enumerate(files):
        tick = time.perf_counter()
        model()
        output = {**detections, **(per_image[index] if per_image else {})}
        output.update(file_name=str(file), image_id=index, orig_size=(height, width))
        tock, thread_tock = time.perf_counter(), time.thread_time()
        writer.write_on_batch_end(trainer, module, [output], [index], None, index, 0)
        model_s += tock - tick
        writer_s += time.perf_counter() - tock
        writer_cpu_s += time.thread_time() - thread_tock
    tick, thread_tick = time.perf_counter(), time.thread_time()
    writer.on_predict_epoch_end(trainer, module)
    writer_s += time.perf_counter() - tick
    writer_cpu_s += time.thread_time() - thread_tick
    total_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    per_image = {
        "model": model_s,
        "writer": writer_s,
        "total": total_s,
        "cpu": cpu_s,
        "writer_main_cpu": writer_cpu_s,
    }
    return {
        "images": len(files),
        **{f"{name}_ms": round(1000 * s / len(files), 1) for name, s in per_image.items()},
    }


def stages(file: Path, detections: dict[str, torch.Tensor], out: Path, repeats: int = 5) -> dict[str, float]:
    """CPU milliseconds (all threads) of each stage of ``file``'s outputs, one at a time, the mean of
    ``repeats`` runs after one to warm up: the JSON record (the main thread's part), then the overlay's
    parts."""
    height, width = detections["masks"].shape[-2:]
    output = {**detections, "file_name": str(file), "orig_size": (height, width)}
    names = dict(zip(CATEGORY_IDS, CLASS_NAMES))
    boxes, labels, scores = detections["boxes"], detections["labels"], detections["scores"]  # ids = labels
    pixels = as_rgb_array(file)
    masks = mask_regions(detections["masks"])
    drawn = detection_overlay(pixels, boxes, labels, scores, CLASS_NAMES, masks=masks)
    captions = RenderedCaptions()  # as a run keeps them: rendered at the warm-up
    out.mkdir(parents=True, exist_ok=True)
    steps = {
        "json_record": lambda: detection_record(output, names),
        "read_image": lambda: as_rgb_array(file),
        "draw_boxes_new_captions": lambda: detection_overlay(pixels, boxes, labels, scores, CLASS_NAMES),
        "draw_boxes_captions": lambda: detection_overlay(
            pixels, boxes, labels, scores, CLASS_NAMES, captions=captions
        ),
        "mask_regions": lambda: mask_regions(detections["masks"]),
        "draw_all": lambda: detection_overlay(
            pixels, boxes, labels, scores, CLASS_NAMES, masks=masks, captions=captions
        ),
        "save_png": lambda: save_overlay(drawn, out / "overlay.png", "png"),
        "save_jpeg": lambda: save_overlay(drawn, out / "overlay.jpg", "jpeg"),
    }
    costs = {}
    for name, step in steps.items():
        step()
        start = time.process_time()
        for _ in range(repeats):
            step()
        costs[f"{name}_cpu_ms"] = round(1000 * (time.process_time() - start) / repeats, 1)
    return costs


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, default=(864, 1152), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument(
        "--captions",
        choices=("varied", "fixed"),
        default="varied",
        help="labels and scores drawn anew for each image (default), or the same on every image",
    )
    parser.add_argument("--model", choices=("cpu", "wait"), default="cpu")
    parser.add_argument("--model_ms", type=float, default=180.0, help="the model's time per image, alone")
    parser.add_argument(
        "--writer_option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a PredictionWriter option for the overlays run, e.g. overlay_format='\"png\"'",
    )
    parser.add_argument("--out", type=Path, help="where to write (default: a temporary folder, removed)")
    parser.add_argument("--stages", action="store_true", help="each stage's CPU time on one image instead")
    parser.add_argument("--tiny", action="store_true", help="3 images of 96 x 128, 5 detections, 1 ms model")
    options = parser.parse_args(argv)
    if options.tiny:
        options.images, options.size, options.detections, options.model_ms = 3, (96, 128), 5, 1.0
    extra = {name: json.loads(value) for name, value in (o.split("=", 1) for o in options.writer_option)}
    height, width = options.size
    with tempfile.TemporaryDirectory() as temporary:
        folder = options.out or Path(temporary)
        files = write_images(folder / "images", options.images, height, width)
        detections = fixed_detections(height, width, options.detections)
        if options.stages:
            costs = stages(files[0], detections, folder / "stages")
            print(json.dumps(costs), flush=True)
            return [costs]
        varied = options.captions == "varied"
        per_image = image_labels_scores(len(files), options.detections) if varied else None
        model = _Model(options.model, options.model_ms)
        rows = []
        for overlays in (False, True):
            options_here = extra if overlays else {}
            out = folder / f"overlays_{overlays}"
            row = run(files, detections, out, model, per_image, overlays=overlays, **options_here)
            row = {"overlays": overlays, "model": options.model, "captions": options.captions, **row}
            row.update(options_here)
            print(json.dumps(row), flush=True)
            rows.append(row)
        same = [(folder / f"overlays_{o}" / "predictions.json").read_bytes() for o in (False, True)]
    print(f"predictions.json identical with and without overlays: {same[0] == same[1]}", flush=True)
    print(f"with overlays / without: {rows[1]['total_ms'] / rows[0]['total_ms']:.2f}x per image", flush=True)
    return rows


if __name__ == "__main__":
    main()
