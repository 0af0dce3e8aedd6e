"""A run directory read back (`proxyfda.runs.Run`), from folders written by hand: each status's sentence word for
word, the history with a line cut short, the probe snapshots' steps, and what a run without a file says."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from proxyfda.errors import ProxyFDAError
from proxyfda.runs import Run, RunLock, RunWriter, default_run_dir, list_runs

from conftest import TINY_FINETUNE


def _run_folder(path, summary: dict | None = None, history: str | None = None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(TINY_FINETUNE.replace(steps=5).to_dict()))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    if history is not None:
        (path / "history.jsonl").write_text(history)
    return path


@pytest.mark.parametrize("summary, status, says", [
    ({"status": "stopped", "steps_done": 2}, "stopped",
     "it was stopped after 2 of 5 steps, so it is used as it stood then"),
    ({"status": "diverged", "steps_done": 3}, "diverged",
     "its training diverged at step 4 (a non-finite loss or weights), so it is used at its last finite checkpoint"),
    ({"status": "diverged"}, "diverged",
     "its training diverged at step 1 (a non-finite loss or weights), so it is used at its last finite checkpoint"),
    ({"status": "interrupted", "error": "KeyboardInterrupt: "}, "interrupted",
     "its process ended before it finished (killed, or an error: KeyboardInterrupt: ), so it is used at its last "
     "checkpoint; train it again with --overwrite to complete it"),
    ({"status": "running"}, "interrupted",  # said running, but nobody holds its lock
     "its process ended before it finished (killed, or an error), so it is used at its last checkpoint; train it "
     "again with --overwrite to complete it"),
    ({"status": "paused"}, "paused", "its status is unknown"),
])
def test_each_status_that_did_not_complete_is_a_sentence(tmp_path, summary, status, says):
    run = Run.open(_run_folder(tmp_path / "r", summary))
    assert run.status == status
    assert run.incomplete_note() == f"run '{tmp_path / 'r'}' did not complete (status: {status}): {says}"


@pytest.mark.parametrize("summary", [{"status": "completed", "steps_done": 5}, None])
def test_a_completed_run_and_one_from_before_statuses_need_no_note(tmp_path, summary):
    run = Run.open(_run_folder(tmp_path / "r", summary))
    assert run.status == ("completed" if summary else "unknown")
    assert run.incomplete_note() is None and run.summary() == (summary or {})


def test_a_run_being_written_names_its_writer(tmp_path):
    path = _run_folder(tmp_path / "r", {"status": "running"})
    lock = RunLock(path).acquire()
    try:
        run = Run.open(path)
        assert run.status == "running"
        assert run.incomplete_note() == (
            f"run '{path}' did not complete (status: running): it is still being trained (pid {os.getpid()}), so "
            "what is used is its latest checkpoint, which will change")
    finally:
        lock.release()
    assert Run.open(path).status == "interrupted"


def test_the_history_skips_blank_lines_and_a_last_line_cut_short(tmp_path):
    history = '{"kind": "train", "step": 1}\n\n{"kind": "eval", "step": 1, "accuracy": 0.5}\n{"kind": "tr'
    run = Run.open(_run_folder(tmp_path / "r", history=history))
    assert run.records() == [{"kind": "train", "step": 1}, {"kind": "eval", "step": 1, "accuracy": 0.5}]
    table = run.history()
    assert list(table["kind"]) == ["train", "eval"] and table["accuracy"].isna().tolist() == [True, False]
    assert Run.open(_run_folder(tmp_path / "t")).records() == []


def test_probe_steps_are_read_from_their_file_names_in_numeric_order(tmp_path):
    path = _run_folder(tmp_path / "r")
    (path / "probe").mkdir()
    for step in (10, 2, 0):
        np.save(path / "probe" / f"step-{step:06d}.npy", np.full((3, 2), step, dtype=np.float16))
    for other in ("rows.json", "step-7.npy.tmp", "step-000003.npz", "notes.txt"):
        (path / "probe" / other).write_text("[]")
    run = Run.open(path)
    assert run.probe_steps() == [0, 2, 10]
    features = run.probe_features(10)
    assert features.dtype == np.float32 and features.tolist() == [[10.0, 10.0]] * 3
    with pytest.raises(ProxyFDAError) as error:
        run.probe_features(3)
    assert str(error.value) == f"run '{path}' has no probe snapshot at step 3; it has [0, 2, 10]"
    assert run.probe_rows() == []


def test_a_run_without_its_optional_files_says_what_is_missing(tmp_path):
    path = _run_folder(tmp_path / "r", {"status": "completed"})
    run = Run.open(path)
    assert run.probe_steps() == [] and run.checkpoints() == [] and run.wise() is None and run.forgetting() is None
    with pytest.raises(ProxyFDAError) as error:
        run.probe_features(0)
    assert str(error.value) == f"run '{path}' has no probe snapshot at step 0; it has none"
    with pytest.raises(ProxyFDAError) as error:
        run.probe_rows()
    assert str(error.value) == f"run '{path}' kept no probe set (no probe/rows.json)"
    with pytest.raises(ProxyFDAError) as error:
        run.safe_result
    assert str(error.value) == f"SAFE run '{path}' has no safe.pt: it did not finish"
    with pytest.raises(ProxyFDAError, match=rf"^run '{path}' has no checkpoint.pt yet \(status: completed\)"):
        run.checkpoint_state()
    (path / "safe.pt").write_bytes(b"")
    (path / "checkpoint.pt").write_bytes(b"")
    assert run.checkpoints() == [path / "checkpoint.pt", path / "safe.pt"] and run.safe_result == path / "safe.pt"


def test_a_runs_names_and_its_kept_measurements(tmp_path):
    path = _run_folder(tmp_path / "some-run")
    run = Run.open(path)
    assert (run.name, run.spec, run.method) == ("some-run", f"run:{path}", "naive")
    run.save_forgetting({"a_lp": 0.9})
    assert run.forgetting() == {"a_lp": 0.9} and not (path / ".lock").exists()
    (path / "wise.json").write_text(json.dumps({"source": "/x", "alpha": 0.5}))
    assert run.wise() == {"source": "/x", "alpha": 0.5}


def test_runs_are_listed_by_name_without_hidden_folders_or_other_files(tmp_path):
    for name in ("b-run", "a-run", ".hidden-run"):
        _run_folder(tmp_path / name)
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "c-file").mkdir()
    (tmp_path / "c-file" / "config.json").mkdir()  # a folder named config.json is not a run's config
    assert [run.name for run in list_runs(tmp_path)] == ["a-run", "b-run"]


def test_the_default_run_lives_under_a_name_that_hashes_its_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))
    here = default_run_dir(TINY_FINETUNE)
    assert here.parent == tmp_path / "runs" and here.name.startswith("default-finetuned-")
    assert len(here.name.removeprefix("default-finetuned-")) == 12  # 6 bytes of blake2b, in hex
    assert default_run_dir(TINY_FINETUNE.replace(seed=1)) != here
    assert default_run_dir(TINY_FINETUNE) == here


def test_a_writer_saves_the_probe_as_float16_and_its_rows_as_plain_integers(tmp_path):
    with RunWriter(tmp_path / "r", TINY_FINETUNE) as writer:
        writer.save_probe_rows(np.array([4, 1, 7], dtype=np.int64))
        writer.save_probe(12, np.array([[0.1, 2.5]], dtype=np.float64))
        writer.save_json("extra.json", {"a": [1, 2]})
        writer.finish("completed", 12, 0.5, world_size=2)
    run = Run.open(tmp_path / "r")
    assert run.probe_rows() == [4, 1, 7] and (tmp_path / "r" / "probe" / "rows.json").read_text() == "[4, 1, 7]\n"
    stored = np.load(tmp_path / "r" / "probe" / "step-000012.npy")
    assert stored.dtype == np.float16 and stored.tolist() == [[np.float16(0.1), 2.5]]
    assert json.loads((tmp_path / "r" / "extra.json").read_text()) == {"a": [1, 2]}
    summary = run.summary()
    assert {k: summary[k] for k in ("status", "steps_done", "final_eval_accuracy", "world_size")} == {
        "status": "completed", "steps_done": 12, "final_eval_accuracy": 0.5, "world_size": 2}
    assert isinstance(summary["seconds"], float) and summary["seconds"] >= 0


def test_a_default_run_is_ready_once_its_own_recipe_has_completed(monkeypatch, tmp_path):
    from proxyfda.runs import default_run_ready

    monkeypatch.setenv("PROXYFDA_CACHE", str(tmp_path))
    assert not default_run_ready(TINY_FINETUNE)
    here = _run_folder(default_run_dir(TINY_FINETUNE), {"status": "stopped"})
    assert not default_run_ready(TINY_FINETUNE)
    (here / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert default_run_ready(TINY_FINETUNE) and not default_run_ready()  # the embedded recipe's own run is elsewhere


def test_an_interrupted_run_records_how_long_it_ran_and_why(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with RunWriter(tmp_path / "r", TINY_FINETUNE):
            raise KeyboardInterrupt("asked to stop")
    summary = Run.open(tmp_path / "r").summary()
    assert summary["status"] == "interrupted" and summary["error"] == "KeyboardInterrupt: asked to stop"
    assert 0 <= summary["seconds"] < 1  # the moment between opening and leaving the writer


def test_the_runs_table_shows_each_runs_last_evaluation_and_none_before_its_first(tmp_path):
    """overlap@10 and CKNNA come from the last evaluation's probe_overlap and probe_cknna (not its CKA); a run
    stopped before any evaluation after step 0 has none to show (step 0 compares the encoder with itself)."""
    from proxyfda.live import runs_table

    evals = [{"kind": "eval", "step": 0, "probe_overlap": 1.0, "probe_cknna": 1.0, "probe_cka": 1.0},
             {"kind": "train", "step": 3, "loss": 0.5},
             {"kind": "eval", "step": 5, "probe_overlap": 0.6, "probe_cknna": 0.3, "probe_cka": 0.9}]
    lines = "".join(json.dumps(record) + "\n" for record in evals)
    _run_folder(tmp_path / "a", {"status": "completed", "steps_done": 5}, lines)
    _run_folder(tmp_path / "b", {"status": "stopped", "steps_done": 2}, lines.splitlines(keepends=True)[0])
    table = runs_table(list_runs(tmp_path)).set_index("run")
    assert (table.loc["a", "overlap@10"], table.loc["a", "CKNNA"], table.loc["a", "steps"]) == (0.6, 0.3, 5)
    assert table.loc["b", ["overlap@10", "CKNNA"]].isna().all()


def test_every_json_a_run_keeps_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """Summaries and measurements go through the atomic writer (a temporary file renamed into place), so a
    crash mid-write leaves the previous file, never half of one."""
    from proxyfda import runs

    written = []
    real = runs.atomic_write_text
    monkeypatch.setattr(runs, "atomic_write_text", lambda path, text: written.append(path.name) or real(path, text))
    with RunWriter(tmp_path / "r", TINY_FINETUNE) as writer:
        writer.save_json("wise.json", {"alpha": 0.5})
        writer.finish("completed", 1, 0.5)
    assert {"config.json", "summary.json", "wise.json"} <= set(written)
    assert json.loads((tmp_path / "r" / "wise.json").read_text()) == {"alpha": 0.5}
