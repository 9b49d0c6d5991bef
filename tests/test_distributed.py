"""Two processes (DDP on the CPU, gloo) report the same validation metrics as one process, and resume to the
weights of an uninterrupted run.

Most commands run on a pair of processes that stay up (tests/process_pair.py: started as torchrun starts a
job's processes, ~2 s a command against ~16 s for a command started afresh); a predict that fails and the
run stopped by a lock start afresh, so that Lightning's own start of rank 1 stays tested."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import reads_demo_run
from tests.process_pair import ProcessPair
from tests.tasks.test_run_lock import _holder
from vitdense.cli import main

RECIPES = Path(__file__).parents[1] / "recipes"


def _arguments(subcommand: str, recipe: str, data_root: Path, run_root: Path, extra: list[str]) -> list[str]:
    """``vitdense <subcommand>``'s arguments: a recipe, its data in ``data_root``, no loader workers."""
    return [
        *(subcommand, "--config", str(RECIPES / recipe)),
        f"--data.init_args.root={data_root}",
        "--data.init_args.num_workers=0",
        "--data.init_args.eval_batch_size=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run_root}",
        *extra,
    ]


def _on_two_processes(pair: ProcessPair, arguments: list[str], cwd: Path) -> str:
    """``vitdense <arguments>`` on the two processes of ``pair`` (one DDP run, as torchrun starts one);
    returns what rank 0 printed."""
    cwd.mkdir(parents=True, exist_ok=True)
    ranks = pair.run(arguments, cwd)
    assert [rank["code"] for rank in ranks] == [0, 0], ranks
    return ranks[0]["stdout"]


def _vitdense(
    pair: ProcessPair, subcommand: str, recipe: str, data_root: Path, run_root: Path, extra: list[str]
) -> str:
    """Run the CLI on the two processes of ``pair``; return what rank 0 printed."""
    return _on_two_processes(pair, _arguments(subcommand, recipe, data_root, run_root, extra), run_root)


def _validate_in_this_process(recipe: str, data_root: Path, run_root: Path, extra: list[str], capsys) -> dict:
    """``vitdense validate`` on one process, run in this one (no interpreter to start); returns the metrics it
    printed. On one thread, as each process of a DDP run (OMP_NUM_THREADS=1)."""
    run_root.mkdir(parents=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(_arguments("validate", recipe, data_root, run_root, [*extra, "--trainer.devices=1"]))
    finally:
        torch.set_num_threads(threads)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("recipe", "trained", "keys"),
    [
        pytest.param(
            "demo_shapes_mask_rcnn.yaml",
            "demo_detector_run",
            ["bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50", "segm_APs"],
            # and the demo run it reads; the last predict starts its two processes afresh
            marks=[reads_demo_run("demo_detector_run"), pytest.mark.slow(seconds=40)],
            id="detection",
        ),
        pytest.param(
            "demo_shapes_semseg.yaml",
            "demo_segmenter_run",
            ["mIoU", "aAcc", "mAcc"],
            marks=[reads_demo_run("demo_segmenter_run"), pytest.mark.slow(seconds=12)],
            id="semseg",
        ),
    ],
)
def test_two_processes_match_one_on_an_odd_split(
    recipe, trained, keys, tmp_path, capsys, request, process_pair
):
    """5 images over 2 processes: a sampler that repeated one to even out the ranks would count it twice."""
    data = tmp_path / "data"
    # Trained weights (the learning test's run, tests/conftest.py), so that the scores are not all zero.
    last = request.getfixturevalue(trained).checkpoint
    checkpoint = f"--ckpt_path={last}"
    extra = ["--data.init_args.num_train=8", "--data.init_args.num_val=5"]
    single = _validate_in_this_process(recipe, data, tmp_path / "one", [*extra, checkpoint], capsys)
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp", checkpoint]
    two = _vitdense(process_pair, "validate", recipe, data, tmp_path / "two", [*extra, *ddp])
    double = json.loads(two.strip().splitlines()[-1])
    for key in keys:
        assert double[key] == pytest.approx(single[key], abs=1e-9), (key, single, double)
    assert any(single[key] > 0 for key in keys), single

    # Fewer images than processes: the process without one runs an empty step and joins the gathering.
    # (Lightning skips the evaluation of a process without batches; the other would wait for it forever.)
    lone = tmp_path / "lone"
    one_image = ["--data.init_args.num_train=2", "--data.init_args.num_val=1", checkpoint]
    one = _validate_in_this_process(recipe, lone, tmp_path / "one1", one_image, capsys)
    two = _vitdense(process_pair, "validate", recipe, lone, tmp_path / "two1", [*one_image, *ddp[:2]])
    assert json.loads(two.strip().splitlines()[-1]) == one

    image = next(path for path in lone.rglob("*.jpg") if path.parent.name in ("val", "validation"))
    predict = ["predict", "--ckpt_path", str(last), "--images", str(image), "--output_dir", "out"]
    predict += ["--accelerator", "cpu", "--devices", "2", "--num_workers", "0", "--batch_size", "1"]
    _on_two_processes(process_pair, predict, tmp_path)
    if "semseg" in recipe:
        assert [path.name for path in (tmp_path / "out" / "labels").iterdir()] == [f"{image.stem}.png"]
        return
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    assert [Path(record["file_name"]).name for record in records] == [image.name]

    # An unreadable image is left out by the process that loads it; the others' detections are gathered and
    # written, and the command names the file at the end. Started afresh: Lightning starts rank 1 itself.
    folder = tmp_path / "some_bad"
    folder.mkdir()
    images = sorted((data / "images" / "val").iterdir())  # 5: processes 0 and 1 take 0, 2, 4 and 1, 3
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes()[: 300 if path == images[3] else None])
    predict[predict.index(str(image))] = str(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vitdense", *predict]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 of 5 images could not be read" in result.stderr and images[3].name in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    assert {Path(record["file_name"]).name for record in records} == {images[i].name for i in (0, 1, 2, 4)}


@pytest.mark.slow(seconds=20)  # with the start of its process pair
def test_two_processes_resumed_mid_epoch_end_with_the_uninterrupted_weights(tmp_path, process_pair):
    """Each process resumes its own random streams: proposal sampling draws as many numbers as its images
    have proposals, so the two processes' streams part after the first step, and a process that resumed
    another's would sample other RoIs."""
    data = tmp_path / "data"
    extra = ["--data.init_args.num_train=8", "--data.init_args.num_val=2", "--data.init_args.batch_size=2"]
    extra += ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.limit_val_batches=0"]
    extra += ["--trainer.max_epochs=10", "--model.init_args.lr_scheduler.init_args.total_steps=5"]
    extra += ["--model.init_args.lr_scheduler.init_args.warmup_steps=2"]
    straight = [*extra, "--trainer.max_steps=5"]
    _vitdense(process_pair, "fit", "demo_shapes_mask_rcnn.yaml", data, tmp_path / "straight", straight)
    # 2 steps per epoch (8 images, 2 processes, batch 2): step 3 stops in the middle of the second epoch.
    stopped = tmp_path / "stopped"
    first_three = [*extra, "--trainer.max_steps=3"]
    _vitdense(process_pair, "fit", "demo_shapes_mask_rcnn.yaml", data, stopped, first_three)
    resume = [*extra, "--trainer.max_steps=5", "--ckpt_path=last"]
    _vitdense(process_pair, "fit", "demo_shapes_mask_rcnn.yaml", data, stopped, resume)

    straight, resumed = (
        torch.load(next((tmp_path / run).rglob("last.ckpt")), weights_only=False)
        for run in ("straight", "stopped")
    )
    assert resumed["global_step"] == straight["global_step"] == 5
    torch.testing.assert_close(resumed["state_dict"], straight["state_dict"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow(seconds=22)
def test_two_processes_in_a_folder_another_run_holds_stop_together_naming_it(tmp_path):
    """Rank 0 finds the checkpoint folder locked; every process stops with its message, none waits."""
    run_root = tmp_path / "run"
    holder = _holder(run_root / "checkpoints")
    extra = ["--data.init_args.num_train=4", "--data.init_args.num_val=2", "--trainer.max_steps=2"]
    command = [
        *(sys.executable, "-m", "vitdense", "fit", "--config", str(RECIPES / "demo_shapes_mask_rcnn.yaml")),
        f"--data.init_args.root={tmp_path / 'data'}",
        "--data.init_args.num_workers=0",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        f"--trainer.default_root_dir={run_root}",
        *extra,
    ]
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr[-3000:]
    in_use = f"{run_root / 'checkpoints'} is in use by another training run (pid {holder.pid} on "
    assert in_use in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not list((run_root / "checkpoints").glob("*.ckpt"))
