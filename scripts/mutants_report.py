"""Per module, the mutants mutmut generated and what became of them, from its results under ``mutants/``.

    python scripts/mutants_report.py             # the table docs/TESTING.md quotes
    python scripts/mutants_report.py --survivors  # and every mutant left, with its diff (``mutmut show``)
    python -m mutmut run $(python scripts/mutants_report.py --pending proxyfda/losses/fda.py)

Run after ``mutmut run`` (``make mutants`` runs both). ``--pending`` names a module's mutants that have no
result, survived or were reached by no test: mutmut reruns a mutant named on its command line even when it has
a result, so after new tests this tries again only what they may kill, module by module.
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
#: the results a new test may change: rerun by ``--pending``
PENDING = tuple(code for code, status in STATUS.items() if status in ("survived", "no tests", "not checked"))


def results(root: Path = ROOT / "mutants") -> dict[str, Counter]:
    """Module path -> how many of its mutants ended in each status."""
    table: dict[str, Counter] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        module = _module(meta, root)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            table[module] = Counter(STATUS.get(code, "suspicious") for code in codes.values())
    return table


def survivors(root: Path = ROOT / "mutants", modules: list[str] | None = None,
              codes: tuple[int | None, ...] = (0,)) -> list[str]:
    """The names of the mutants (of ``modules``, default all) whose result is one of ``codes``: by default
    those no test killed."""
    names = []
    for meta in sorted(root.rglob("*.py.meta")):
        if modules is None or _module(meta, root) in modules:
            names += [name for name, code in json.loads(meta.read_text())["exit_code_by_key"].items() if code in codes]
    return names


def _module(meta: Path, root: Path) -> str:
    """The source path a results file under ``root`` describes (``proxyfda/drift.py``)."""
    return str(meta.relative_to(root)).removesuffix(".meta")


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
    parser.add_argument("--pending", nargs="+", metavar="MODULE",
                        help="print only the names of these modules' mutants not yet killed")
    args = parser.parse_args(argv)
    table = results()
    if not table:
        print("no mutmut results under mutants/: run `mutmut run` (or `make mutants`) first", file=sys.stderr)
        return 2
    if args.pending:
        unknown = sorted(set(args.pending) - set(table))
        if unknown:
            print(f"no mutants of {', '.join(unknown)}: name modules as the table lists them", file=sys.stderr)
            return 2
        print(" ".join(survivors(modules=args.pending, codes=PENDING)))
        return 0
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
