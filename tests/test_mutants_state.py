"""The mutation results saved in the repository come back as the results files mutmut reads."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import mutants_state  # noqa: E402

mutmut_data = pytest.importorskip("mutmut.mutation.data")

META = {"exit_code_by_key": {"proxyfda.m.x_f__mutmut_1": 1, "proxyfda.m.x_f__mutmut_2": 0,
                             "proxyfda.m.x_g__mutmut_1": None},
        "hash_by_function_name": {"x_f": "aaa", "x_g": "bbb"}, "type_check_error_by_key": {},
        "durations_by_key": {"proxyfda.m.x_f__mutmut_1": 0.5}, "estimated_durations_by_key": {}}


def test_saved_results_restore_as_files_mutmut_loads(tmp_path, monkeypatch):
    first = tmp_path / "first" / "mutants"
    (first / "proxyfda").mkdir(parents=True)
    (first / "proxyfda" / "m.py.meta").write_text(json.dumps(META))
    saved = tmp_path / "results.json"
    assert mutants_state.save(first, saved) == 2

    fresh = tmp_path / "fresh"
    assert mutants_state.restore(fresh / "mutants", saved) == 2
    monkeypatch.chdir(fresh)
    data = mutmut_data.SourceFileMutationData(path="proxyfda/m.py")
    data.load()
    assert data.exit_code_by_key == {"proxyfda.m.x_f__mutmut_1": 1, "proxyfda.m.x_f__mutmut_2": 0}
    assert data.hash_by_function_name == {"x_f": "aaa", "x_g": "bbb"}


def test_restore_leaves_newer_results_alone(tmp_path):
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"proxyfda/m.py": {"exit_code_by_key": {"k": 0}, "hash_by_function_name": {}}}))
    meta = tmp_path / "mutants" / "proxyfda" / "m.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text("newer")
    assert mutants_state.restore(tmp_path / "mutants", saved) == 0
    assert meta.read_text() == "newer"
    assert mutants_state.restore(tmp_path / "mutants", tmp_path / "absent.json") == 0
