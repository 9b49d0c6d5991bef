import numpy as np
import pytest
import torch
from lightning import Trainer
from PIL import Image
from torch.utils.data import DataLoader

from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid
from vitdense.datamodules import EvalTransform, PredictImages, ShapesDataModule, collate_detection
from vitdense.heads import MaskRCNN
from vitdense.tasks import DetectionTask, LabelSpace, WarmupMultiStepLR


def _detector(num_classes: int) -> MaskRCNN:
    backbone = SimpleFeaturePyramid(BirderBackbone(TINY_NETWORK, config=TINY_CONFIG), out_channels=32)
    # score_thresh 0: an untrained model still returns detections to check the mapping on
    return MaskRCNN(num_classes, backbone, head_dim=32, fc_dim=64, score_thresh=0.0, detections_per_img=5)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return ShapesDataModule(
        root=str(tmp_path_factory.mktemp("shapes")), num_train=4, num_val=2, num_workers=0
    )


def test_predict_returns_original_frame_category_ids_and_full_size_masks(shapes, tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (150, 310), "tall.jpg": (260, 120)}  # (h, w)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    task = DetectionTask(shapes.num_classes, _detector)
    task.label_space = LabelSpace.of(shapes.class_names, shapes.category_ids)
    loader = DataLoader(
        PredictImages(str(tmp_path), EvalTransform(224)), batch_size=2, collate_fn=collate_detection
    )
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (outputs,) = trainer.predict(task, loader)
    assert len(outputs) == 2
    for output in outputs:
        h, w = sizes[output["file_name"].rsplit("/", 1)[-1]]
        assert output["orig_size"] == (h, w)
        assert len(output["boxes"]) > 0
        assert set(output["labels"].tolist()) <= set(shapes.category_ids)
        assert output["masks"].shape == (len(output["boxes"]), h, w) and output["masks"].dtype == torch.bool
        boxes = output["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_class_count_mismatch_with_the_datamodule_is_explained(shapes):
    task = DetectionTask(shapes.num_classes + 1, _detector)
    trainer = Trainer(accelerator="cpu", logger=False, fast_dev_run=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match="num_classes"):
        trainer.fit(task, shapes)


def test_mask_rcnn_on_data_without_masks_is_explained_at_setup(tmp_path):
    boxes_only = ShapesDataModule(root=str(tmp_path), num_train=2, num_val=1, num_workers=0, masks=False)
    task = DetectionTask(boxes_only.num_classes, _detector)
    trainer = Trainer(accelerator="cpu", logger=False, fast_dev_run=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"has a mask head but the datamodule is built with masks: false.*"
                       r"set data.init_args.masks: true.*recipes/coco_faster_rcnn.yaml"):  # fmt: skip
        trainer.fit(task, boxes_only)


def test_optimizer_uses_layer_decay_and_a_per_step_scheduler():
    task = DetectionTask(
        3,
        _detector,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
        lr_scheduler=lambda optimizer: WarmupMultiStepLR(optimizer, milestones=[10], warmup_steps=0),
        layer_decay=0.5,
    )
    config = task.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = {name: group["lr"] for group in config["optimizer"].param_groups for name in group["param_names"]}
    assert lrs["model.roi_heads.box_predictor.cls_score.weight"] == pytest.approx(1e-3)
    assert lrs["model.backbone.vit.net.encoder.block.1.attn.qkv.weight"] == pytest.approx(5e-4)
    assert lrs["model.backbone.vit.net.pos_embedding"] == pytest.approx(1.25e-4)


def test_checkpoint_keeps_the_category_ids(shapes):
    task = DetectionTask(shapes.num_classes, _detector)
    task.label_space = LabelSpace.of(["a", "b", "c", "d"], [5, 9, 11, 40])
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    restored = DetectionTask(shapes.num_classes, _detector)
    restored.on_load_checkpoint(checkpoint)
    assert restored.category_ids == [5, 9, 11, 40]
    assert set(checkpoint) >= {"label_space", "image_size"} and "category_ids" not in checkpoint
    assert restored.label_space == task.label_space


def test_a_checkpoint_saved_before_label_spaces_loads_its_classes(shapes):
    """Checkpoints written before the label space was one entry keep their ids and names at the top."""
    legacy = {"category_ids": [5, 9, 11, 40], "class_names": ["a", "b", "c", "d"], "image_size": 224}
    restored = DetectionTask(shapes.num_classes, _detector)
    restored.on_load_checkpoint(legacy)
    assert restored.label_space == LabelSpace(("a", "b", "c", "d"), (5, 9, 11, 40))
    assert restored.image_size == 224
    with pytest.raises(ValueError, match="the checkpoint has a malformed 'label_space' entry: .*category id"):
        restored.on_load_checkpoint({"label_space": {"class_names": ["a"], "category_ids": [1, 2]}})


def test_evaluation_and_prediction_paste_one_image_at_a_time(shapes, tmp_path, monkeypatch):
    # Pasted masks are full-resolution: 100 on a 12 MP photo take 1.2 GB, so a batch's are never all alive.
    import vitdense.tasks.detection as detection_module

    pasted_at_once = []
    paste = detection_module.paste_detections

    def counting_paste(detections, *args, **kwargs):
        pasted_at_once.append(len(detections))
        return paste(detections, *args, **kwargs)

    monkeypatch.setattr(detection_module, "paste_detections", counting_paste)
    task = DetectionTask(shapes.num_classes, _detector)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    shapes.eval_batch_size = 2
    (metrics,) = trainer.validate(task, datamodule=shapes, verbose=False)
    assert "val/segm_AP" in metrics and pasted_at_once == [1, 1]
    with torch.no_grad():
        outputs = task.eval().predict_step(next(iter(shapes.val_dataloader())), 0)
    assert len(outputs) == 2 and pasted_at_once == [1, 1, 1, 1]


def test_a_batch_of_skipped_images_only_is_passed_over(shapes):
    """collate_detection gives None when every evaluation image of a batch was skipped as bad."""
    task = DetectionTask(shapes.num_classes, _detector)
    assert task.validation_step(None, 0) is None and task.test_step(None, 0) is None
    assert len(task.evaluator.results) == 0


def test_the_coco_ap_backend_is_a_task_option():
    assert DetectionTask(3, _detector).evaluator.backend == "faster_coco_eval"
    assert DetectionTask(3, _detector, coco_eval_backend="pycocotools").evaluator.backend == "pycocotools"
    with pytest.raises(ValueError, match="Unknown backend 'detectron2'"):
        DetectionTask(3, _detector, coco_eval_backend="detectron2")
