"""What every task shares: ``torch_compile`` (a detector's backbone, a whole segmenter), the lr schedule's
length, strict JSON reports; and the segmentation task's sliding-window check."""

import json
import logging
import re
from functools import partial

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch._dynamo.utils import counters

from tests.helpers import QUIET_TRAINER
from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid
from vitdense.datamodules import ShapesDataModule, ShapesSegmentationDataModule
from vitdense.heads import FasterRCNN, MaskRCNN, PyramidSegmenter
from vitdense.tasks import DetectionTask, SemanticSegmentationTask
from vitdense.tasks.base import strict_json
from vitdense.tasks.optim import WarmupCosineLR, WarmupMultiStepLR, WarmupPolyLR


def _detector(num_classes: int) -> MaskRCNN:
    backbone = SimpleFeaturePyramid(BirderBackbone(TINY_NETWORK, config=TINY_CONFIG), out_channels=32)
    return MaskRCNN(num_classes, backbone, head_dim=32, fc_dim=64)


def _segmenter(num_classes: int) -> PyramidSegmenter:
    vit = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG)
    backbone = SimpleFeaturePyramid(vit, out_channels=32, scale_factors=(4.0, 2.0, 1.0), top_block=False)
    return PyramidSegmenter(num_classes, backbone, in_features=("p2", "p3", "p4"), channels=32)


@pytest.fixture
def aot_eager(monkeypatch):
    """Compile with AOTAutograd but no code generation: the same graphs (forward and backward) are traced,
    in seconds instead of the minute inductor's C++ build takes on these CPUs."""
    compile_module = torch.nn.Module.compile

    def compile_aot_eager(module, *args, **kwargs):
        compile_module(module, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_aot_eager)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _batch(seed: int = 0) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=generator)
    targets = []
    for _ in range(2):
        boxes = torch.tensor([[20.0, 30.0, 120.0, 150.0], [100.0, 40.0, 200.0, 90.0]])
        masks = torch.zeros(2, 224, 224, dtype=torch.uint8)
        for index, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[index, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def _losses_and_grads(task: DetectionTask) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    images, targets = _batch()
    task.train()
    task.zero_grad()
    torch.manual_seed(1)  # proposal and RoI sampling
    losses = task.model(images, [(224, 224)] * 2, targets)
    sum(losses.values()).backward()
    grads = {name: param.grad.clone() for name, param in task.named_parameters() if param.grad is not None}
    return losses, grads


def test_torch_compile_compiles_the_backbone_in_place_as_one_graph_with_the_eager_results(aot_eager):
    torch.manual_seed(0)
    eager = DetectionTask(3, _detector)
    compiled = DetectionTask(3, _detector, torch_compile=True)
    compiled.load_state_dict(eager.state_dict())
    names = list(compiled.state_dict())

    assert not compiled.compiled
    compiled.configure_model()
    compiled.configure_model()  # Lightning calls it for every trainer entry point: compiling once is enough
    assert compiled.compiled and not eager.compiled
    assert list(compiled.state_dict()) == names  # checkpoints and optimizer groups are unchanged

    eager_losses, eager_grads = _losses_and_grads(eager)
    compiled_losses, compiled_grads = _losses_and_grads(compiled)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    torch.testing.assert_close(compiled_losses, eager_losses)
    assert compiled_grads.keys() == eager_grads.keys()
    torch.testing.assert_close(compiled_grads, eager_grads)


def test_the_segmenter_compiles_whole_and_whole_image_evaluation_runs_eager(aot_eager, tmp_path):
    # Whole-image evaluation runs each image at its own size; compiled with static shapes, every size would
    # compile again. Only the training crop's graph may be compiled.
    data = ShapesSegmentationDataModule(
        root=str(tmp_path / "data"), num_train=2, num_val=3, crop_size=112, batch_size=2, num_workers=0
    )
    task = SemanticSegmentationTask(data.num_classes, _segmenter, torch_compile=True)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=2,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **QUIET_TRAINER,
    )
    trainer.fit(task, data)
    assert task.compiled
    assert counters["stats"]["unique_graphs"] == 1  # the training graph of the whole segmenter
    assert not counters["graph_break"]
    assert task.final_metrics["mIoU"] >= 0


@pytest.mark.parametrize("scheduler", [WarmupPolyLR, WarmupCosineLR])
def test_a_run_longer_than_its_decaying_lr_schedule_is_refused_before_the_first_step(scheduler, tmp_path):
    # A finished run resumed with a larger max_steps alone would train its extra steps at lr 0.
    data = ShapesSegmentationDataModule(
        root=str(tmp_path / "data"), num_train=2, num_val=1, crop_size=56, batch_size=2, num_workers=0
    )
    task = SemanticSegmentationTask(
        data.num_classes, _segmenter, lr_scheduler=partial(scheduler, total_steps=4, warmup_steps=1)
    )
    trainer = Trainer(
        accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match=r"runs 5 optimizer steps .* total_steps=4: .*total_steps to 5"):
        trainer.fit(task, data)
    assert trainer.global_step == 0


def _faster_rcnn(num_classes: int) -> FasterRCNN:
    backbone = SimpleFeaturePyramid(BirderBackbone(TINY_NETWORK, config=TINY_CONFIG), out_channels=32)
    return FasterRCNN(num_classes, backbone, head_dim=32, fc_dim=64)


@pytest.mark.parametrize(
    ("kind", "callback", "logged"),
    [
        ("detection", ModelCheckpoint(monitor="val/segm_AP", mode="max"), "val/bbox_AP, val/bbox_AP50"),
        ("segmentation", EarlyStopping(monitor="val/miou", mode="max"), "val/mIoU, val/aAcc, val/mAcc"),
    ],
)
def test_a_monitor_of_a_metric_the_model_never_logs_is_refused_at_fit_start(kind, callback, logged, tmp_path):
    """Lightning would only fail at the end of the first validation (a Faster R-CNN logs no segm AP)."""
    if kind == "detection":
        data = ShapesDataModule(
            root=str(tmp_path / "data"), num_train=2, num_val=1, num_workers=0, masks=False
        )
        task = DetectionTask(data.num_classes, _faster_rcnn)
    else:
        data = ShapesSegmentationDataModule(
            root=str(tmp_path / "data"), num_train=2, num_val=1, crop_size=56, batch_size=2, num_workers=0
        )
        task = SemanticSegmentationTask(data.num_classes, _segmenter)
    trainer = Trainer(
        accelerator="cpu", max_steps=1, logger=False, callbacks=[callback], default_root_dir=tmp_path
    )
    with pytest.raises(
        ValueError, match=rf"monitors '{callback.monitor}', which .* never logs; its validation logs {logged}"
    ):
        trainer.fit(task, data)
    assert trainer.global_step == 0


def test_reports_are_strict_json_with_null_for_nan():
    text = strict_json({"AP": float("nan"), "per_class": {"a": [0.5, float("inf")]}, "n": 3})
    expected = {"AP": None, "per_class": {"a": [0.5, None]}, "n": 3}
    assert json.loads(text, parse_constant=pytest.fail) == expected


def test_a_sliding_window_off_the_patch_grid_is_refused_when_the_task_is_built():
    with pytest.raises(ValueError, match=r"sliding_window crop 500 must be a multiple .* 14; use 490 or 504"):
        SemanticSegmentationTask(3, _segmenter, sliding_window=(500, 300))
    with pytest.raises(ValueError, match=r"sliding_window crop 10 must be .* 14; use 14 \(usually"):
        SemanticSegmentationTask(3, _segmenter, sliding_window=(10, 5))
    SemanticSegmentationTask(3, _segmenter, sliding_window=(504, 300))


@pytest.mark.parametrize(
    ("scheduler", "warning"),
    [
        (
            partial(WarmupPolyLR, total_steps=9, warmup_steps=1),
            "ends at total_steps=9, after the run's 2 steps",
        ),
        (partial(WarmupMultiStepLR, milestones=[1, 5], warmup_steps=1), r"milestones \[5\] are at or after"),
    ],
)
def test_a_run_shorter_than_its_lr_schedule_is_warned_of(scheduler, warning, tmp_path, caplog):
    task = SemanticSegmentationTask(3, _segmenter, lr_scheduler=scheduler)
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, default_root_dir=tmp_path)
    task.trainer = trainer
    with caplog.at_level(logging.WARNING, logger="vitdense.tasks.base"):
        task.configure_optimizers()
    assert re.search(warning, caplog.text)


def test_an_lr_schedule_stepped_by_a_metric_is_refused_with_the_per_step_ones():
    task = SemanticSegmentationTask(3, _segmenter, lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau .* every optimizer step.*WarmupCosineLR"):
        task.configure_optimizers()
