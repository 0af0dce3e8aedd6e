"""Fine-tunes in the background (proxyfda.live): a queue, one worker, one run directory per job."""

from __future__ import annotations

import time

import pytest

from proxyfda.errors import ProxyFDAError
from proxyfda.live import LiveTrainer
from proxyfda.runs import Run

from conftest import TINY_FINETUNE


def wait_until(condition, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_job_runs_in_the_background_into_its_own_run(tmp_path):
    trainer = LiveTrainer(tmp_path)
    job = trainer.submit(TINY_FINETUNE, owner="tab-a")
    assert job.run_dir.parent == tmp_path and job.total_steps == 4
    assert trainer.wait(job, timeout=300)
    assert job.state == "completed" and job.error is None and job.steps_done == 4
    train, evals = job.history()
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in evals] == [0, 2, 4]
    assert job.run().status == "completed" and job.run().records() == job.records
    assert trainer.jobs("tab-a") == [job] and trainer.jobs("tab-b") == []


def test_two_sessions_keep_their_runs_apart_and_the_second_waits_its_turn(tmp_path):
    trainer = LiveTrainer(tmp_path)
    first = trainer.submit(TINY_FINETUNE.replace(steps=6, lr=1e-3), owner="tab-a")
    second = trainer.submit(TINY_FINETUNE.replace(method="l2sp", seed=1), owner="tab-b")
    wait_until(lambda: first.state == "running")
    assert second.state == "queued" and trainer.place(second) == 1 and trainer.place(first) is None
    assert trainer.wait(first, timeout=300) and trainer.wait(second, timeout=300)
    assert first.run_dir != second.run_dir
    assert (Run.open(first.run_dir).config, Run.open(second.run_dir).config) == (first.config, second.config)
    assert Run.open(second.run_dir).config.method == "l2sp" and Run.open(first.run_dir).config.lr == 1e-3
    assert all("reg_loss" in r for r in second.history()[0]) and not any("reg_loss" in r for r in first.history()[0])
    assert trainer.jobs("tab-a") == [first] and trainer.jobs("tab-b") == [second]


def test_stop_keeps_a_checkpoint_and_a_waiting_job_is_cancelled_unwritten(tmp_path):
    trainer = LiveTrainer(tmp_path)
    running = trainer.submit(TINY_FINETUNE.replace(steps=500, eval_every=1000), owner="a")
    waiting = trainer.submit(TINY_FINETUNE, owner="b")
    assert running.eta_seconds() is None or running.steps_done >= 2  # no pace before two steps
    wait_until(lambda: running.steps_done >= 2)
    eta = running.eta_seconds()
    assert 0 < eta < 498 * 30  # 498 steps left at a step's pace, well under 30 s a step
    trainer.stop(waiting)
    assert waiting.state == "cancelled" and waiting.done and not waiting.run_dir.exists()
    trainer.stop(running)
    assert trainer.wait(running, timeout=60)
    assert running.state == "stopped" and 2 <= running.steps_done < 500
    assert Run.open(running.run_dir).checkpoint_state()["step"] == running.steps_done


def test_a_full_queue_and_a_bad_option_are_refused_before_anything_runs(tmp_path):
    trainer = LiveTrainer(tmp_path, max_waiting=1)
    with pytest.raises(ProxyFDAError, match="has no option"):
        trainer.submit(TINY_FINETUNE.replace(method="fda", reg_options={"kk": 3}), owner="a")
    assert list(tmp_path.iterdir()) == [] and trainer.jobs("a") == []
    running = trainer.submit(TINY_FINETUNE.replace(steps=500, eval_every=1000), owner="a")
    wait_until(lambda: running.state == "running")
    trainer.submit(TINY_FINETUNE, owner="b")
    with pytest.raises(ProxyFDAError, match=r"busy: one run is training and 1 are waiting"):
        trainer.submit(TINY_FINETUNE, owner="c")
    for job in trainer.jobs("a") + trainer.jobs("b"):
        trainer.stop(job)
    assert trainer.wait(running, timeout=60)


def test_a_failing_job_keeps_its_error_as_a_sentence(tmp_path):
    trainer = LiveTrainer(tmp_path)
    job = trainer.submit(TINY_FINETUNE.replace(data="folder:/nonexistent/images"), owner="a")
    assert trainer.wait(job, timeout=60)
    assert job.state == "failed" and "/nonexistent/images" in job.error


def test_the_eta_is_the_pace_since_the_first_step_times_the_steps_left(tmp_path, monkeypatch):
    """First step logged at t = 100 s, step 3 at t = 120 s: 10 s a step since the first, 7 of 10 steps left."""
    from proxyfda import live

    clock = iter([100.0, 120.0])
    monkeypatch.setattr(live.time, "time", lambda: next(clock))
    job = live.LiveJob("j", TINY_FINETUNE.replace(steps=10), tmp_path / "r", "a", state="running", submitted=0.0)
    job.record({"kind": "train", "step": 1})
    assert job.eta_seconds() is None  # one step is no pace yet
    job.record({"kind": "eval", "step": 2})
    job.records.append({"kind": "train", "step": 3})
    assert job.eta_seconds() == pytest.approx(70.0)
