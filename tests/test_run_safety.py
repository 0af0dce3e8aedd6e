"""Nothing lost: a run directory is written by one process at a time, never over an earlier run without
--overwrite (and then only once the new run has finished), says how it ended (running, completed, stopped,
diverged, interrupted), and a run that did not complete, diverged or is damaged is never used silently."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from proxyfda.cli import main
from proxyfda.config import FinetuneConfig
from proxyfda.encoders import create_encoder
from proxyfda.errors import ProxyFDAError
from proxyfda.runs import LOCK, IncompleteRunWarning, Run, RunWriter, check_run_dir, list_runs
from proxyfda.training import finetune, finite_weights

import test_forgetting
from conftest import ROOT, TINY_FINETUNE

#: runs whose forgetting measurement is stubbed (a fixture of the forgetting tests)
stub_world = test_forgetting.stub_world

#: TINY_FINETUNE as command-line options
TINY_ARGS = ["--data", "digits:train", "--eval-data", "digits:test", "--image-size", "32", "--batch-size", "16",
             "--eval-size", "60", "--warmup-steps", "1", "--lr", "3e-3"]

#: a process that holds a run directory as its writer, leaves a temporary file as a checkpoint write cut
#: short would, says "ready" and waits to be killed
HOLDER = """
import sys, time
from pathlib import Path
from proxyfda.config import FinetuneConfig
from proxyfda.runs import RunWriter
writer = RunWriter(sys.argv[1], FinetuneConfig())
writer.log({"kind": "train", "step": 1, "loss": 2.0})
(Path(sys.argv[1]) / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def script(tmp_path_factory):
    """script(code): ``code`` saved as a file of its own for a child Python to run (a file, not ``-c``: a
    mutation-testing run walks the child's frames by file name, and ``-c`` code has none)."""
    def save(code: str) -> str:
        path = tmp_path_factory.mktemp("child") / "child.py"
        path.write_text(code)
        return str(path)
    return save


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(run_dir: Path, to: Path, **summary) -> Path:
    shutil.copytree(run_dir, to)
    if summary:
        (to / "summary.json").write_text(json.dumps({**json.loads((to / "summary.json").read_text()), **summary}))
    return to


@pytest.fixture
def holder(tmp_path, script):
    """A live process writing ``tmp_path / "held"`` (its Popen, and the folder)."""
    run_dir = tmp_path / "held"
    process = subprocess.Popen([sys.executable, script(HOLDER), str(run_dir)], stdout=subprocess.PIPE, text=True,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout.readline().strip() == "ready"
        yield process, run_dir
    finally:
        process.kill()
        process.wait()


# ---- an earlier run is never overwritten by accident -------------------------------------------------------

def test_finetune_refuses_a_folder_that_holds_a_run_and_leaves_it_as_it_was(tiny_run, tmp_path, capsys):
    run_dir = copy_run(tiny_run, tmp_path / "earlier")
    before = files_of(run_dir)
    assert main(["finetune", "--out", str(run_dir), *TINY_ARGS, "--steps", "2"]) == 2
    error = capsys.readouterr().err
    assert "is not empty: it holds a naive run (status: completed, 4 steps)" in error and "--overwrite" in error
    # an option rejected with --overwrite: checked before the folder is touched
    assert main(["finetune", "--out", str(run_dir), "--overwrite", "--method", "fda",
                 "--reg-options", '{"no_such_option": 1}']) == 2
    assert "no_such_option" in capsys.readouterr().err
    assert files_of(run_dir) == before


def test_overwrite_replaces_runs_only_and_the_output_folder_must_be_writable(tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"not ours")
    for flags in ([], ["--overwrite"]):
        assert main(["finetune", "--out", str(other), *flags]) == 2
        assert "1 file(s) that are not a run (cat.jpg)" in capsys.readouterr().err
    assert files_of(other) == {"cat.jpg": b"not ours"}
    (tmp_path / "a-file").write_text("x")
    assert main(["finetune", "--out", str(tmp_path / "a-file" / "run")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err


def test_overwrite_builds_beside_the_old_run_and_swaps_it_in_once_finished(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    old_config = (run_dir / "config.json").read_bytes()
    seen = []

    def watch(record: dict) -> None:  # while the new run trains, the old one is whole and the new one hidden
        seen.append((Run.open(run_dir).status, (run_dir / "config.json").read_bytes() == old_config,
                     [p.name.startswith(".run.new-") for p in tmp_path.iterdir() if p.name != "run"]))

    result = finetune(TINY_FINETUNE.replace(steps=2, seed=1), run_dir, callback=watch, overwrite=True)
    assert result.status == "completed" and result.run_dir == run_dir
    assert seen and all(s == ("completed", True, [True]) for s in seen)
    run = Run.open(run_dir)
    assert run.config.seed == 1 and run.summary()["steps_done"] == 2 and run.checkpoint_state()["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and not (run_dir / LOCK).exists()
    assert [r.name for r in list_runs(tmp_path)] == ["run"]


def test_a_replacement_that_fails_leaves_the_old_run_and_no_trace(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = files_of(run_dir)

    def fail(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(TINY_FINETUNE.replace(steps=2), run_dir, callback=fail, overwrite=True)
    assert files_of(run_dir) == before and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_an_abandoned_replacement_that_cannot_be_removed_does_not_hide_why_it_was_abandoned(tiny_run, tmp_path,
                                                                                           monkeypatch):
    """Leaving a replacement unfinished removes its hidden folder; a removal that fails (a file held open on another
    system, a disk gone read-only) must not replace the error that stopped the run with its own."""
    import shutil

    from proxyfda import runs

    run_dir = copy_run(tiny_run, tmp_path / "run")

    def rmtree(path, ignore_errors=False):  # shutil.rmtree's contract, on a folder that cannot be removed
        if not ignore_errors:
            raise PermissionError(f"cannot remove {path}")

    monkeypatch.setattr(runs.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        with RunWriter(run_dir, TINY_FINETUNE, overwrite=True):
            raise KeyboardInterrupt
    monkeypatch.setattr(runs.shutil, "rmtree", shutil.rmtree)
    assert Run.open(run_dir).status == "completed"  # the old run, untouched


#: a process that replaces the run at argv[1] and is killed (SIGKILL, no clean-up at all) at the start of the
#: argv[2]-th ``os.rename`` of the swap: 1 before anything moved, 2 with the old run moved aside
KILLED_MID_SWAP = """
import os, signal, sys
from proxyfda.config import FinetuneConfig
from proxyfda.runs import RunWriter
writer = RunWriter(sys.argv[1], FinetuneConfig(seed=7), overwrite=True)
writer.log({"kind": "train", "step": 1, "loss": 2.0})
rename, calls = os.rename, []
def dying_rename(source, target):
    calls.append(source)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    rename(source, target)
os.rename = dying_rename
writer.finish("completed", 1, None)
"""


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_swap_that_fails_at_either_rename_leaves_the_old_run_whole_at_its_name(tiny_run, tmp_path, monkeypatch,
                                                                                  fail_at):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = files_of(run_dir)
    writer = RunWriter(run_dir, TINY_FINETUNE.replace(seed=7), overwrite=True)
    writer.log({"kind": "train", "step": 1, "loss": 2.0})
    rename, calls = os.rename, []

    def failing_rename(source, target):
        calls.append(source)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device")
        rename(source, target)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        with writer:
            writer.finish("completed", 1, None)
    monkeypatch.undo()
    assert files_of(run_dir) == before and [p.name for p in tmp_path.iterdir()] == ["run"]
    assert Run.open(run_dir).config.seed == TINY_FINETUNE.seed and not (run_dir / LOCK).exists()


@pytest.mark.parametrize("killed_at", [1, 2])
def test_a_writer_killed_inside_its_swap_loses_no_run(tiny_run, tmp_path, script, killed_at):
    """Killed before the first rename, the old run never moved; killed between the two, it sits aside as
    ``.run.old-…`` with nothing at its name, and the next reader (listing, opening or a new writer) puts it
    back whole. Either way a later overwrite clears what the dead writer left."""
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = files_of(run_dir)
    done = subprocess.run([sys.executable, script(KILLED_MID_SWAP), str(run_dir), str(killed_at)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert run_dir.exists() == (killed_at == 1)
    assert [r.name for r in list_runs(tmp_path)] == ["run"]
    assert files_of(run_dir) == {**before, **{name: data for name, data in files_of(run_dir).items()
                                              if name == LOCK}}  # its lock file stays behind, unheld
    assert Run.open(run_dir).status == "completed" and Run.open(run_dir).config.seed == TINY_FINETUNE.seed
    finetune(TINY_FINETUNE.replace(steps=2, seed=1), run_dir, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and Run.open(run_dir).config.seed == 1


def test_each_reader_puts_back_a_run_left_aside_by_a_dead_swap(tiny_run, tmp_path):
    for reader in (lambda path: Run.open(path), lambda path: check_run_dir(path, overwrite=True)):
        aside = copy_run(tiny_run, tmp_path / ".run.old-0a1b2c3d")
        before = files_of(aside)
        reader(tmp_path / "run")
        assert not aside.exists() and files_of(tmp_path / "run") == before
        shutil.rmtree(tmp_path / "run")


def test_a_run_whose_name_holds_old_is_put_back_under_its_own_name(tiny_run, tmp_path):
    """The name is what comes before the last ``.old-`` (the random suffix), not the first."""
    aside = copy_run(tiny_run, tmp_path / ".a.old-b.old-0a1b2c3d")
    before = files_of(aside)
    assert [run.name for run in list_runs(tmp_path)] == ["a.old-b"]
    assert files_of(tmp_path / "a.old-b") == before


def _stubborn_rmtree(monkeypatch) -> None:
    """``shutil.rmtree`` that cannot delete a replaced run's old copy (a file held open on a network disk, say):
    an error, or nothing when told to ignore errors, as rmtree does."""
    real = shutil.rmtree

    def rmtree(path, ignore_errors=False, **options):
        if ".old-" not in str(path):
            return real(path, ignore_errors=ignore_errors, **options)
        if not ignore_errors:
            raise PermissionError(f"cannot remove {path}")

    monkeypatch.setattr(shutil, "rmtree", rmtree)


def test_an_old_copy_that_cannot_be_deleted_costs_no_run(tiny_run, tmp_path, monkeypatch):
    """A replacement has finished once the new run has the name: an old copy left undeletable beside it does
    not fail the run (nor discard it); the next overwrite clears what is left, or goes on without it."""
    run_dir = copy_run(tiny_run, tmp_path / "run")
    _stubborn_rmtree(monkeypatch)
    assert finetune(TINY_FINETUNE.replace(steps=2, seed=1), run_dir, overwrite=True).status == "completed"
    assert Run.open(run_dir).config.seed == 1 and Run.open(run_dir).status == "completed"
    assert len(list(tmp_path.glob(".run.old-*"))) == 1
    assert finetune(TINY_FINETUNE.replace(steps=2, seed=2), run_dir, overwrite=True).status == "completed"
    monkeypatch.undo()
    finetune(TINY_FINETUNE.replace(steps=2, seed=3), run_dir, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and Run.open(run_dir).config.seed == 3


def test_the_forgetting_measurement_waits_for_no_one(holder):
    """Keeping a measurement writes into the run directory, so it takes the run's lock: with the run held by
    another process it fails at once, and nothing is written."""
    process, run_dir = holder
    with pytest.raises(ProxyFDAError, match=f"pid {process.pid}"):
        Run.open(run_dir).save_forgetting({"A_LP": 0.5})
    assert not (run_dir / "forgetting.json").exists()


# ---- one writer at a time; a killed writer leaves a run that says so --------------------------------------

def test_a_second_writer_fails_at_once_naming_the_first(holder, capsys):
    process, run_dir = holder
    assert Run.open(run_dir).status == "running"
    started = time.perf_counter()
    with pytest.raises(ProxyFDAError, match=rf"{run_dir} is being written by another process \(pid {process.pid}\)"):
        finetune(TINY_FINETUNE, run_dir, overwrite=True)
    assert main(["finetune", "--out", str(run_dir), "--overwrite", *TINY_ARGS]) == 2
    assert f"being written by another process (pid {process.pid})" in capsys.readouterr().err
    assert time.perf_counter() - started < 5
    assert (run_dir / ".checkpoint.pt.x1y2.tmp").exists()  # its writer is alive: not stale


def test_a_writer_that_has_not_yet_written_its_pid_is_still_named_as_busy(tmp_path):
    from proxyfda.runs import _busy_message

    assert _busy_message(tmp_path, 0).startswith(f"run directory {tmp_path} is being written by another process "
                                                 "(pid not yet recorded)")
    assert "(pid 4242)" in _busy_message(tmp_path, 4242)


@pytest.mark.parametrize("content, pid", [(b"4242\n", 4242), (b"", 0), (b"\xff\xfe\n", 0), (b"12ab\n", 0)])
def test_a_lock_file_names_its_holder_only_when_it_holds_a_whole_pid(tmp_path, content, pid):
    """A lock file a writer has created but not yet written, or one holding anything else, names no process
    (pid 0: not pid 1, which is always alive)."""
    from proxyfda.runs import _read_pid

    (tmp_path / LOCK).write_bytes(content)
    fd = os.open(tmp_path / LOCK, os.O_RDONLY)
    try:
        assert _read_pid(fd) == pid
    finally:
        os.close(fd)


def test_two_writers_in_one_process_exclude_each_other_and_the_live_page_says_why(tmp_path):
    """Two app sessions share a process: the lock holds between them too, and a Live job that meets a held
    folder fails with the sentence (shown by the page), not a traceback."""
    from proxyfda.live import LiveJob, LiveTrainer

    with RunWriter(tmp_path / "r", TINY_FINETUNE):
        with pytest.raises(ProxyFDAError, match=f"pid {os.getpid()}"):
            RunWriter(tmp_path / "r", TINY_FINETUNE, overwrite=True)
        job = LiveJob("j", TINY_FINETUNE, tmp_path / "r", "someone")
        LiveTrainer._train(job)
        assert job.state == "failed" and "is being written by another process" in job.error
    assert not (tmp_path / "r" / LOCK).exists()


def test_a_killed_writer_leaves_an_interrupted_run_and_its_temporaries_are_cleaned(holder):
    process, run_dir = holder
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # as the writer left it
    run = Run.open(run_dir)
    assert run.status == "interrupted" and not list(run_dir.glob(".*.tmp"))
    assert run.records() == [{"kind": "train", "step": 1, "loss": 2.0}]
    assert "did not complete (status: interrupted)" in run.incomplete_note()


def test_an_error_inside_the_writer_records_interrupted(tmp_path):
    with pytest.raises(RuntimeError):
        with RunWriter(tmp_path / "r", TINY_FINETUNE):
            raise RuntimeError("disk full")
    run = Run.open(tmp_path / "r")
    assert run.status == "interrupted" and run.summary()["error"] == "RuntimeError: disk full"


def test_a_run_that_did_not_complete_is_never_used_silently(tiny_run, tmp_path, capsys):
    stopped = copy_run(tiny_run, tmp_path / "stopped", status="stopped", steps_done=2)
    with pytest.warns(IncompleteRunWarning, match=rf"run '{stopped}' did not complete \(status: stopped\): it was "
                                                  r"stopped after 2 of 4 steps"):
        create_encoder(f"run:{stopped}")
    out = tmp_path / "feats.npy"
    args = ["embed", "--encoder", f"run:{stopped}", "--data", "digits:test", "--n", "20", "--image-size", "32"]
    for _ in range(2):  # the second time from the feature cache, without building the encoder
        assert main([*args, "--out", str(out)]) == 0
        assert f"proxyfda: warning: run '{stopped}' did not complete (status: stopped)" in capsys.readouterr().err
    assert Run.open(tiny_run).incomplete_note() is None


def test_forgetting_names_a_run_that_did_not_complete_and_refuses_one_still_training(stub_world, tmp_path, capsys):
    from proxyfda.runs import RunLock

    dirs, _ = stub_world
    (dirs[0] / "summary.json").write_text(json.dumps({"status": "stopped", "steps_done": 1}))
    assert main(["forgetting", "--runs", *map(str, dirs), "--out", str(tmp_path / "out")]) == 0
    error = capsys.readouterr().err
    assert error.count("proxyfda: warning:") == 1 and f"run '{dirs[0]}' did not complete (status: stopped)" in error
    (dirs[1] / "summary.json").write_text(json.dumps({"status": "running"}))
    lock = RunLock(dirs[1]).acquire()
    try:
        assert main(["forgetting", "--runs", *map(str, dirs), "--out", str(tmp_path / "out")]) == 2
        assert f"run {dirs[1]} is still being trained" in capsys.readouterr().err
    finally:
        lock.release()


# ---- divergence and non-finite numbers ---------------------------------------------------------------------

def test_non_finite_hyper_parameters_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--out", str(out), "--lr", "inf"]) == 2
    assert "lr must be a finite number, not inf" in capsys.readouterr().err
    assert main(["finetune", "--out", str(out), "--method", "fda", "--reg-options", '{"weight": NaN}']) == 2
    assert "reg_options['weight'] must be a finite number, not nan" in capsys.readouterr().err
    with pytest.raises(ProxyFDAError, match="weight_decay must be a finite number"):
        FinetuneConfig(weight_decay=float("nan"))
    assert not out.exists()


def test_a_diverging_run_stops_at_its_first_non_finite_loss_and_keeps_its_last_finite_checkpoint(
        tmp_path, monkeypatch, capsys):
    real = torch.nn.functional.cross_entropy
    calls = []

    def goes_wrong_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", goes_wrong_at_step_3)
    out = tmp_path / "run"
    assert main(["finetune", "--out", str(out), *TINY_ARGS, "--steps", "6", "--eval-every", "2"]) == 1
    error = capsys.readouterr().err
    assert "the run diverged at step 3" in error and "try a lower --lr" in error
    run = Run.open(out)
    assert run.status == "diverged" and run.summary()["steps_done"] == 2
    last = run.records()[-1]
    assert (last["kind"], last["step"], last["diverged"]) == ("train", 3, True) and math.isnan(last["loss"])
    state = run.checkpoint_state()
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["encoder"].values() if t.is_floating_point())
    assert "diverged at step 3" in run.incomplete_note()


def test_weights_are_checked_before_a_checkpoint_is_written():
    layer = torch.nn.Linear(2, 2)
    assert finite_weights(layer)
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")
    assert not finite_weights(torch.nn.Linear(2, 2), layer)


def test_non_finite_features_are_never_written(tiny_run, tmp_path, capsys):
    broken = copy_run(tiny_run, tmp_path / "broken")
    state = torch.load(broken / "checkpoint.pt", weights_only=True)
    first = next(k for k, v in state["encoder"].items() if v.is_floating_point() and v.ndim == 4)
    state["encoder"][first].fill_(float("nan"))
    torch.save(state, broken / "checkpoint.pt")
    out = tmp_path / "feats.npy"
    assert main(["embed", "--encoder", f"run:{broken}", "--data", "digits:test", "--n", "20", "--image-size", "32",
                 "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"the encoder 'run:{broken}' gave non-finite features (NaN or infinity) for 20 of 20 images" in error
    assert not out.exists()


# ---- damaged runs ------------------------------------------------------------------------------------------

def test_a_run_that_is_its_own_base_encoder_is_a_clear_error(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, base in ((a, b), (b, a)):
        folder.mkdir()
        TINY_FINETUNE.replace(base_encoder=f"run:{base}").save(folder / "config.json")
    (tmp_path / "self").mkdir()
    TINY_FINETUNE.replace(base_encoder=f"run:{tmp_path / 'self'}").save(tmp_path / "self" / "config.json")
    with pytest.raises(ProxyFDAError, match=rf"run '{tmp_path / 'self'}' is its own base encoder"):
        create_encoder(f"run:{tmp_path / 'self'}")
    with pytest.raises(ProxyFDAError, match=rf"is its own base encoder \({a} → {b} → {a}\)"):
        create_encoder(f"run:{a}")


@pytest.mark.parametrize("config, says", [("[1, 2]", "does not hold a run config (a JSON object), but list"),
                                          ('{"steps": "many"}', "does not hold a valid run config"),
                                          ('{"colour": 1}', "unknown FinetuneConfig option")])
def test_a_broken_config_is_a_clear_error(tmp_path, capsys, config, says):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(config)
    assert main(["embed", "--encoder", f"run:{tmp_path / 'r'}", "--data", "digits:test", "--out",
                 str(tmp_path / "f.npy")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'r' / 'config.json'}" in error and says in error


def test_the_drift_explorer_warns_when_it_shows_a_run_that_did_not_complete(tiny_run, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PROXYFDA_ALLOW", str(tmp_path))  # the app reads runs under its allowed folders only
    stopped = copy_run(tiny_run, tmp_path / "stopped", status="stopped", steps_done=2)
    at = AppTest.from_file(str(ROOT / "pages" / "drift_explorer.py"), default_timeout=120)
    # an unknown pre-trained spec ends the page right after the warnings, before any embedding
    for key, value in {"drift.cfg.data": "digits:test", "drift.cfg.n": 120, "drift.cfg.image_size": 32,
                       "drift.cfg.pretrained": "no-such-encoder", "drift.cfg.finetuned": f"run:{stopped}"}.items():
        at.session_state[key] = value
    at.run()
    assert [w.value for w in at.warning if "did not complete" in w.value] == [Run.open(stopped).incomplete_note()]
    assert not at.exception
