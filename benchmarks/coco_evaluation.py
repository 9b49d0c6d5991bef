"""Box and mask AP at COCO val2017's scale: the kit's evaluator, plain pycocotools and faster-coco-eval.

The data are ``coco_synthetic.py val``'s (5,000 images, ~36.5k annotations, 500k detections with RLE masks;
written under ``--data`` first when missing). Each tool runs in a fresh process, one after the other:

- ``pycocotools``, ``faster_coco_eval``: the plain libraries as a user runs them on the two results files
  (``COCO(gt)``, ``loadRes(file)``, ``COCOeval``): time of loading the results and scoring both IoU types,
  and the process's peak resident memory (ground truth and results loaded included).
- ``evaluator``, ``evaluator-pycocotools``: ``CocoEvaluator`` with each backend, fed as the task feeds it
  (``update()`` per image with bool masks at full size, decoded from the results file, not timed);
  then ``compute()`` and the two results files' text (``results_json``). The peak is the process's high-water
  mark during ``compute()``, which starts at what ``update()`` left (the evaluator's results and the ground
  truth).
- ``evaluator@<commit>``: ``CocoEvaluator`` as it was at that commit (its source read from git), its results
  files' text as ``write_report`` wrote them then (``strict_json(scored_results, indent=1)``): the "before".

Printed: one JSON line per tool, then a table with, per tool, the largest difference of its 24 stats (12 per
IoU type; the "before" evaluator kept the 6 AP ones) from plain pycocotools'. With ``--tiny`` the tools run in
this process, one after the other: the memory column then means nothing.

    python benchmarks/coco_evaluation.py --before 069e94b            # ~25 min on 2 cores
    python benchmarks/coco_evaluation.py --tiny                       # 20 images, in this process
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from coco_synthetic import DEFAULT_OUT, TINY_IMAGES, write_val  # noqa: E402
from process_memory import peak_rss_gb, reset_peak_rss, rss_gb  # noqa: E402

IOU_TYPES = ("bbox", "segm")
TOOLS = ("pycocotools", "faster_coco_eval", "evaluator", "evaluator-pycocotools")
REPOSITORY = Path(__file__).resolve().parents[1]


def plain(tool: str, data: Path) -> dict:
    """The library on the results files, as a user would run it."""
    if tool == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Evaluator
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Evaluator
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data / "annotations" / "instances_val.json"))
    load_s = time.perf_counter() - start
    stats = {}
    start = time.perf_counter()
    for iou_type in IOU_TYPES:
        with contextlib.redirect_stdout(io.StringIO()):
            results = gt.loadRes(str(data / "results" / f"{iou_type}_results.json"))
            evaluation = Evaluator(gt, results, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats[iou_type] = [float(v) for v in evaluation.stats[:12]]
        del evaluation
    compute_s = time.perf_counter() - start
    return {"gt_load_s": load_s, "compute_s": compute_s, "peak_gb": peak_rss_gb(), "stats": stats}


def detections_by_image(data: Path) -> Iterator[tuple[int, dict]]:
    """Per image, what the task passes to ``update()``: float32 xyxy boxes, scores, labels 1..80 and bool
    (N, H, W) masks, decoded from ``segm_results.json`` one record (line) at a time."""
    import torch
    from pycocotools import mask as mask_utils

    from coco_synthetic import COCO_CATEGORY_IDS

    arrays = np.load(data / "results" / "detections.npz")
    label = {category_id: index + 1 for index, category_id in enumerate(COCO_CATEGORY_IDS)}
    image_ids, starts = np.unique(arrays["image_id"], return_index=True)
    ends = [*starts[1:], len(arrays["image_id"])]
    with (data / "results" / "segm_results.json").open() as lines:
        next(lines)  # "["
        for image_id, start, end in zip(image_ids.tolist(), starts, ends):
            rles = [json.loads(next(lines).rstrip().rstrip(","))["segmentation"] for _ in range(end - start)]
            masks = torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1).contiguous().bool()
            labels = [label[c] for c in arrays["category_id"][start:end].tolist()]
            yield image_id, {
                "boxes": torch.from_numpy(arrays["boxes_xyxy"][start:end]),
                "scores": torch.from_numpy(arrays["score"][start:end]),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": masks,
            }


def evaluator_module(commit: str | None):
    """``vitdense.tasks.coco_evaluator``, or its source at ``commit`` loaded as a module of its own."""
    if commit is None:
        from vitdense.tasks import coco_evaluator

        return coco_evaluator
    source = subprocess.run(
        ["git", "-C", str(REPOSITORY), "show", f"{commit}:vitdense/tasks/coco_evaluator.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader(f"coco_evaluator_{commit}", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{commit}:vitdense/tasks/coco_evaluator.py", "exec"), module.__dict__)
    return module


def kit(tool: str, data: Path) -> dict:
    """``CocoEvaluator`` fed image by image, then ``compute()`` and its results files."""
    import torch
    from pycocotools.coco import COCO

    from coco_synthetic import COCO_CATEGORY_IDS
    from vitdense.tasks.base import strict_json

    commit = tool.split("@")[1] if "@" in tool else None
    module = evaluator_module(commit)
    if commit is not None:
        evaluator = module.CocoEvaluator(IOU_TYPES)

        def results_text(iou_type: str) -> str:
            return strict_json(evaluator.scored_results[iou_type], indent=1)

    else:
        backend = "pycocotools" if tool == "evaluator-pycocotools" else "faster_coco_eval"
        evaluator = module.CocoEvaluator(IOU_TYPES, backend=backend)
        results_text = evaluator.results_json
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data / "annotations" / "instances_val.json"))
    update_s, images = 0.0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # update() runs in the training process, beside its other threads
    try:
        for image_id, detection in detections_by_image(data):
            start = time.perf_counter()
            evaluator.update(image_id, detection, COCO_CATEGORY_IDS)
            update_s += time.perf_counter() - start
            images += 1
    finally:
        torch.set_num_threads(threads)
    rss_before = rss_gb()
    reset_peak_rss()
    start = time.perf_counter()
    metrics = evaluator.compute(gt)
    compute_s = time.perf_counter() - start
    peak = peak_rss_gb()
    start = time.perf_counter()
    written = sum(len(results_text(iou_type)) for iou_type in IOU_TYPES)
    write_s = time.perf_counter() - start
    if commit is not None:  # it kept COCOeval's first 6 stats only
        stats = {t: [metrics[f"{t}_{name}"] for name in module.STAT_NAMES] for t in IOU_TYPES}
    else:
        stats = {t: evaluator.stats[t] for t in IOU_TYPES}
    return {
        "update_ms_per_image": 1e3 * update_s / max(images, 1),
        "rss_before_compute_gb": rss_before,
        "compute_s": compute_s,
        "compute_peak_gb": peak,
        "results_text_s": write_s,
        "results_text_mb": written / 1e6,
        "stats": stats,
    }


def run(tool: str, data: Path) -> dict:
    outcome = plain(tool, data) if tool in ("pycocotools", "faster_coco_eval") else kit(tool, data)
    return {"tool": tool, **outcome}


def run_in_fresh_process(tool: str, data: Path) -> dict:
    command = [sys.executable, __file__, "--data", str(data), "--tool", tool]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{tool} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    reference = next((row for row in rows if row["tool"] == "pycocotools"), None)
    lines = [
        "| tool | update() ms/image | scoring s (bbox + segm) | results files' text s | peak RSS GB | "
        "max |stat - pycocotools'| |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if reference is None:
            difference = "-"
        else:
            gaps = [abs(a - b) for t in IOU_TYPES for a, b in zip(row["stats"][t], reference["stats"][t])]
            difference = "identical" if max(gaps) == 0 else f"{max(gaps):.1e}"
        update = f"{row['update_ms_per_image']:.1f}" if "update_ms_per_image" in row else "-"
        text = f"{row['results_text_s']:.1f}" if "results_text_s" in row else "-"
        peak = row.get("compute_peak_gb", row.get("peak_gb"))
        lines.append(
            f"| {row['tool']} | {update} | {row['compute_s']:.1f} | {text} | {peak:.2f} | {difference} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_OUT, help="coco_synthetic.py's --out")
    tiny = f"{TINY_IMAGES} images, the tools run in this process"
    parser.add_argument("--tiny", action="store_true", help=tiny)
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), help=f"of {TOOLS} and evaluator@<commit>")
    parser.add_argument("--before", metavar="COMMIT", help="also the evaluator at COMMIT (evaluator@COMMIT)")
    parser.add_argument("--tool", help=argparse.SUPPRESS)  # one tool, in a fresh process (internal)
    args = parser.parse_args(argv)
    if args.tool:
        print(json.dumps(run(args.tool, args.data)))
        return
    if not (args.data / "results" / "detections.npz").exists():
        if args.tiny:
            write_val(args.data, TINY_IMAGES, 10)
        else:
            generator = [sys.executable, str(Path(__file__).with_name("coco_synthetic.py")), "val"]
            subprocess.run([*generator, "--out", str(args.data)], check=True)
    tools = args.tools + ([f"evaluator@{args.before}"] if args.before else [])
    rows = []
    for tool in tools:
        row = run(tool, args.data) if args.tiny else run_in_fresh_process(tool, args.data)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows))
    if not args.tiny:
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
