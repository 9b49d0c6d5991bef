"""CPU seconds per training step of the demo configuration, with vitdense's gather RoIAlign and with
torchvision's (whose CPU backward is a scalar loop), on the same batches.

    python benchmarks/demo_step_cpu.py [--steps 20]
"""

import argparse
import contextlib
import importlib
import json
import time
from unittest import mock

import torch
import torchvision
import yaml
from jsonargparse import ArgumentParser

from vitdense.datamodules import ShapesDataModule
from vitdense.tasks import DetectionTask

# The module, not the function of the same name that vitdense.heads exports.
roi_align_module = importlib.import_module("vitdense.heads.roi_align")


def torchvision_roi_align(features, rois, output_size, spatial_scale, sampling_ratio=2):
    return torchvision.ops.roi_align(
        features, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=True
    )


def build_demo(data_root: str) -> tuple[DetectionTask, ShapesDataModule]:
    recipe = yaml.safe_load(open("recipes/demo_shapes_mask_rcnn.yaml"))
    datamodule = ShapesDataModule(**{**recipe["data"]["init_args"], "root": data_root, "num_workers": 0})
    parser = ArgumentParser()
    parser.add_subclass_arguments(DetectionTask, "model")
    model = recipe["model"]
    model["init_args"]["num_classes"] = datamodule.num_classes
    task = parser.instantiate_classes(parser.parse_object({"model": model})).model
    return task, datamodule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-root", default="data/shapes")
    args = parser.parse_args()

    torch.manual_seed(0)
    task, datamodule = build_demo(args.data_root)
    datamodule.setup("fit")
    batches = [batch for _, batch in zip(range(args.steps + 2), datamodule.train_dataloader())]
    initial = {name: value.clone() for name, value in task.state_dict().items()}
    for name, patch in (("gather", None), ("torchvision", torchvision_roi_align)):
        task.load_state_dict(initial)
        optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)
        task.train()

        def step(batch) -> None:
            images, targets = batch
            losses = task.model(images, [target["image_size"] for target in targets], targets)
            sum(losses.values()).backward()
            optimizer.step()
            optimizer.zero_grad()

        context = (
            mock.patch.object(roi_align_module, "roi_align_gather", patch)
            if patch
            else contextlib.nullcontext()
        )
        with context:
            for batch in batches[:2]:
                step(batch)
            start = time.perf_counter()
            for batch in batches[2:]:
                step(batch)
            seconds = (time.perf_counter() - start) / args.steps
        print(
            json.dumps(
                {
                    "name": f"demo_train_step_cpu_{name}_roi_align",
                    "batch": 4,
                    "size": 224,
                    "s_per_step": round(seconds, 3),
                    "threads": torch.get_num_threads(),
                }
            )
        )


if __name__ == "__main__":
    main()
