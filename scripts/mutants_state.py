"""Keep mutmut's results in the repository, so a fresh checkout goes on where the last run stopped.

    python scripts/mutants_state.py save     # mutants/**/*.meta -> docs/mutants-results.json
    python scripts/mutants_state.py restore  # docs/mutants-results.json -> mutants/**/*.meta (before `mutmut run`)

mutmut keeps its results in ``mutants/`` (git-ignored, hours of work on two cores) with a hash of each mutated
function's source. ``restore`` writes those results files back before mutmut generates its mutants; mutmut then
keeps the result of every mutant whose function is unchanged and tries again those of functions that changed.
A result outlives a change of the tests: ``mutants_report.py --pending`` names survivors to try again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mutants_report import ROOT

SAVED = ROOT / "docs" / "mutants-results.json"


def save(root: Path = ROOT / "mutants", saved: Path = SAVED) -> int:
    """Write each module's function hashes and the mutants that have a result; returns how many have one."""
    state = {}
    for meta in sorted(root.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = {name: code for name, code in data["exit_code_by_key"].items() if code is not None}
        state[str(meta.relative_to(root)).removesuffix(".meta")] = {
            "hash_by_function_name": data["hash_by_function_name"], "exit_code_by_key": codes}
    saved.write_text(json.dumps(state, indent=0, sort_keys=True) + "\n")
    return sum(len(module["exit_code_by_key"]) for module in state.values())


def restore(root: Path = ROOT / "mutants", saved: Path = SAVED) -> int:
    """Write mutmut's results files from the saved state where ``root`` has none; returns how many mutants'
    results were restored. Existing results files are left as they are: they are newer than any saved state."""
    if not saved.exists():
        return 0
    restored = 0
    for module, state in json.loads(saved.read_text()).items():
        meta = root / f"{module}.meta"
        if meta.exists():
            continue
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({**state, "durations_by_key": {}, "estimated_durations_by_key": {}}))
        restored += len(state["exit_code_by_key"])
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "restore"))
    args = parser.parse_args(argv)
    if args.action == "save":
        print(f"saved the results of {save()} mutants to {SAVED.relative_to(ROOT)}")
    else:
        print(f"restored the results of {restore()} mutants from {SAVED.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
