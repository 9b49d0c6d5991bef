"""GradientNormLogger: the logged ``train/grad_norm`` is the norm that gradient clipping compares with its
threshold, before clipping, unscaled under fp16, on the logging steps only."""

import math
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import MixedPrecision, Precision
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import built_cli
from vitdense.tasks.gradient_norm import GradientNormLogger

# The CPU demos: the other recipes download pretrained weights when built.
DEMO_RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("demo_*.yaml"))


class MetricsInMemory(Logger):
    """Every ``log_metrics`` call, by the step Lightning writes it at."""

    def __init__(self) -> None:
        super().__init__()
        self.by_step: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.by_step.setdefault(step, {}).update(metrics)


class ClippedRegression(lightning.LightningModule):
    """Clips as Lightning's default ``configure_gradient_clipping`` does, keeping the total norm that
    ``clip_grad_norm_`` returns (computed on the gradients it then clips) for each step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        self.frozen = torch.nn.Linear(4, 1).requires_grad_(False)  # no gradient: not in the norm
        self.clip_norms: dict[int, float] = {}
        self.norms_after_clipping: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        outputs = self.layers(inputs) + self.frozen(inputs).detach()
        return torch.nn.functional.mse_loss(outputs.float(), targets)  # norms 10-50, above the threshold

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        total = torch.nn.utils.clip_grad_norm_(self.layers.parameters(), gradient_clip_val)
        self.clip_norms[self.global_step] = float(total)
        gradients = [parameter.grad for parameter in self.layers.parameters()]
        self.norms_after_clipping[self.global_step] = float(torch.nn.utils.get_total_norm(gradients))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class CountingPrecision(Precision):
    """32-bit precision that counts the calls for the parameters to clip (the test module clips its own)."""

    def __init__(self) -> None:
        self.calls = 0

    def main_params(self, optimizer):
        self.calls += 1
        return super().main_params(optimizer)


def _fit(tmp_path, **trainer_options) -> tuple[ClippedRegression, MetricsInMemory]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(28, 4, generator=generator)
    data = DataLoader(TensorDataset(inputs, 5.0 * inputs.sum(1, keepdim=True) + 3.0), batch_size=4)
    metrics = MetricsInMemory()
    trainer = lightning.Trainer(
        default_root_dir=tmp_path,
        logger=metrics,
        callbacks=[GradientNormLogger()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **{"max_steps": 7, "log_every_n_steps": 3, "gradient_clip_val": 0.5, **trainer_options},
    )
    model = ClippedRegression()
    trainer.fit(model, data)
    return model, metrics


def _logged_norms(metrics: MetricsInMemory) -> dict[int, float]:
    by_step = metrics.by_step.items()
    return {step: logged["train/grad_norm"] for step, logged in by_step if "train/grad_norm" in logged}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_logged_norm_is_the_clipped_norm_before_clipping_on_logging_steps_only(tmp_path, precision):
    model, metrics = _fit(tmp_path, precision=precision)
    logged = _logged_norms(metrics)
    # Steps 0-6, every 3rd written: Lightning writes step k's metrics at step k when (k + 1) % 3 == 0.
    assert sorted(logged) == [2, 5]
    for step, norm in logged.items():
        assert norm == model.clip_norms[step]  # the same float: the same gradients, the same reduction
        assert norm > 0.5 and model.norms_after_clipping[step] == pytest.approx(0.5, rel=1e-4)


def test_under_fp16_the_logged_norm_is_unscaled(tmp_path):
    """fp16 gradients are scaled by 64 here; Lightning unscales them before on_before_optimizer_step."""
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0, growth_interval=1000)
    model, metrics = _fit(tmp_path / "fp16", plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    reference, _ = _fit(tmp_path / "fp32", precision="32-true")
    logged = _logged_norms(metrics)
    assert sorted(logged) == [2, 5]
    assert scaler.get_scale() == 64.0  # no overflow: every step was taken
    for step, norm in logged.items():
        assert math.isfinite(norm) and norm == model.clip_norms[step]
        # fp16 rounding apart, the fp32 run's norm, not 64 times it
        assert norm == pytest.approx(reference.clip_norms[step], rel=1e-2)


@pytest.mark.parametrize(("log_every_n_steps", "logged_steps"), [(3, [2, 5]), (0, [])])
def test_the_norm_is_computed_on_logging_steps_only(tmp_path, log_every_n_steps, logged_steps):
    """Other steps pay nothing: no gradient read, no reduction."""
    precision = CountingPrecision()
    model, metrics = _fit(tmp_path, plugins=[precision], log_every_n_steps=log_every_n_steps)
    assert sorted(_logged_norms(metrics)) == logged_steps
    assert precision.calls == len(logged_steps)
    assert len(model.clip_norms) == 7  # every step trained and clipped


@pytest.mark.parametrize("recipe", DEMO_RECIPES, ids=lambda path: path.stem)
def test_the_cli_gives_every_run_the_logger(recipe, tmp_path):
    """The CLI adds it to every run, as its other default callbacks: no recipe lists it."""
    cli = built_cli(["--config", str(recipe), f"--trainer.default_root_dir={tmp_path}"])
    assert sum(isinstance(callback, GradientNormLogger) for callback in cli.trainer.callbacks) == 1
