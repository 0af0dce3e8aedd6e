"""Per module, the mutants mutmut generated and what became of them, from its results under ``mutants/``.

    python scripts/mutants_report.py             # the table docs/TESTING.md quotes
    python scripts/mutants_report.py --survivors  # and every mutant left, with its diff (``mutmut show``)

Run after ``mutmut run`` (``make mutants`` runs both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: mutmut's exit codes, as its results read them
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "type check", None: "not checked"}
COLUMNS = ("killed", "timeout", "survived", "no tests", "not checked")


def results(root: Path = ROOT / "mutants") -> dict[str, Counter]:
    """Module path -> how many of its mutants ended in each status."""
    table: dict[str, Counter] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root)).removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            table[module] = Counter(STATUS.get(code, "suspicious") for code in codes.values())
    return table


def survivors(root: Path = ROOT / "mutants") -> list[str]:
    """The names of the mutants that no test killed."""
    names = []
    for meta in sorted(root.rglob("*.py.meta")):
        names += [name for name, code in json.loads(meta.read_text())["exit_code_by_key"].items() if code == 0]
    return names


def markdown(table: dict[str, Counter]) -> str:
    lines = ["| module | generated | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) + 1)]
    total: Counter = Counter()
    for module, counts in table.items():
        total.update(counts)
        lines.append(f"| `{module}` | {sum(counts.values())} | " + " | ".join(str(counts[c]) for c in COLUMNS) + " |")
    lines.append(f"| all | {sum(total.values())} | " + " | ".join(str(total[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="also print every surviving mutant's diff")
    args = parser.parse_args(argv)
    table = results()
    if not table:
        print("no mutmut results under mutants/: run `mutmut run` (or `make mutants`) first", file=sys.stderr)
        return 2
    print(markdown(table))
    if args.survivors:
        for name in survivors():
            print(f"\n## {name}")
            shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True,
                                   text=True)
            print(shown.stdout.strip() or shown.stderr.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
