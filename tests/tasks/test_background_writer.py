"""Overlays and other jobs run in the background, a bounded number at a time, and their failures still stop a
run."""

import threading
import time

import numpy as np
import pytest
from PIL import Image

from vitdense.atomic_write import OutputWriteError
from vitdense.tasks.background_writer import BackgroundWriter


def _waiting_draw(release: threading.Event, started: list[int]):
    def draw():
        started.append(1)
        release.wait(10)
        return np.full((4, 6, 3), 7, np.uint8)

    return draw


def test_submitting_returns_while_drawing_runs_until_the_queue_is_full(tmp_path):
    writer = BackgroundWriter("png", workers=2)
    release, started = threading.Event(), []
    for index in range(3):  # 2 drawing, 1 waiting: submit returned each time
        writer.submit(_waiting_draw(release, started), tmp_path / f"{index}.png")
    fourth_draw = _waiting_draw(release, started)
    fourth = threading.Thread(target=writer.submit, args=(fourth_draw, tmp_path / "3.png"))
    fourth.start()
    time.sleep(0.3)
    assert fourth.is_alive() and len(started) == 2  # bounded: the 4th waits for a slot
    release.set()
    fourth.join(10)
    writer.drain()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    assert (np.asarray(Image.open(tmp_path / "3.png")) == 7).all()  # PNG: the drawn pixels exactly
    writer.close()


def test_a_failed_overlay_is_raised_by_the_next_submit_or_the_drain_and_stops_the_others(tmp_path, caplog):
    def failing():
        raise OutputWriteError("cannot write a.png into out: its disk is full")

    writer = BackgroundWriter("jpeg", workers=1)
    writer.submit(failing, tmp_path / "a.jpg")
    with pytest.raises(OutputWriteError, match="its disk is full"):
        writer.drain()
    with pytest.raises(OutputWriteError):
        writer.submit(lambda: np.zeros((4, 6, 3), np.uint8), tmp_path / "b.jpg")
    writer.close()
    assert list(tmp_path.iterdir()) == [] and "could not be written" not in caplog.text  # raised already

    writer.submit(failing, tmp_path / "a.jpg")  # a failure the run stopped before raising: logged
    writer.close()
    assert "A prediction's output could not be written either: cannot write a.png" in caplog.text
    writer.submit(lambda: np.zeros((4, 6, 3), np.uint8), tmp_path / "c.jpg")  # a fresh start after close
    writer.drain()
    assert Image.open(tmp_path / "c.jpg").format == "JPEG"
    writer.close()


def test_a_job_returns_its_result_and_its_failure_stops_the_overlays_after_it(tmp_path):
    writer = BackgroundWriter("png", workers=2)
    assert writer.run(lambda: {"file_name": "a.jpg"}).result(10) == {"file_name": "a.jpg"}

    def failing():
        raise ValueError("record of b.jpg: no such category")

    failed = writer.run(failing)
    assert isinstance(failed.exception(10), ValueError)
    with pytest.raises(ValueError, match="no such category"):
        writer.submit(lambda: np.zeros((4, 6, 3), np.uint8), tmp_path / "c.png")
    with pytest.raises(ValueError):
        writer.drain()
    writer.close()
    assert list(tmp_path.iterdir()) == []
