"""Per module, the mutants mutmut generated and what became of them, from its results under ``mutants/``.

    python scripts/mutants_report.py             # the table docs/TESTING.md quotes
    python scripts/mutants_report.py --survivors  # and every mutant left, with its diff (``mutmut show``)
    python scripts/mutants_report.py --left > docs/MUTANTS.md  # each mutant left, with its reason
    python -m mutmut run $(python scripts/mutants_report.py --pending proxyfda/losses/fda.py)

Run after ``mutmut run`` (``make mutants`` runs both). ``--pending`` names a module's mutants that have no
result, survived or were reached by no test: mutmut reruns a mutant named on its command line even when it has
a result, so after new tests this tries again only what they may kill, module by module.

``--left`` lists every surviving mutant as the line it changes (before → after) with the reason it is left,
read from ``docs/mutants-left.toml`` (one entry per mutant: module, function, the line before and after, the
reason); a survivor without an entry is listed as not yet read. Entries name lines, not mutmut's numbers, so
they stay attached when mutmut renumbers a changed function's mutants.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import json
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REASONS = ROOT / "docs" / "mutants-left.toml"
#: mutmut's exit codes, as its results read them
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "type check", None: "not checked"}
COLUMNS = ("killed", "timeout", "survived", "no tests", "not checked")
#: the results a new test may change: rerun by ``--pending``
PENDING = tuple(code for code, status in STATUS.items() if status in ("survived", "no tests", "not checked"))


def exit_codes(root: Path = ROOT / "mutants") -> dict[str, dict[str, int | None]]:
    """Module path (``proxyfda/drift.py``) -> each of its mutants' result, as mutmut's results files hold them."""
    return {str(meta.relative_to(root)).removesuffix(".meta"): json.loads(meta.read_text())["exit_code_by_key"]
            for meta in sorted(root.rglob("*.py.meta"))}


def results(root: Path = ROOT / "mutants") -> dict[str, Counter]:
    """Module path -> how many of its mutants ended in each status."""
    return {module: Counter(STATUS.get(code, "suspicious") for code in codes.values())
            for module, codes in exit_codes(root).items() if codes}


def survivors(root: Path = ROOT / "mutants", modules: list[str] | None = None,
              codes: tuple[int | None, ...] = (0,)) -> list[str]:
    """The names of the mutants (of ``modules``, default all) whose result is one of ``codes``: by default
    those no test killed."""
    return [name for module, by_name in exit_codes(root).items() if modules is None or module in modules
            for name, code in by_name.items() if code in codes]


def changed_lines(module: str, name: str, root: Path = ROOT / "mutants") -> tuple[str, str]:
    """(before, after): the source lines mutant ``name`` of ``module`` changes, each stripped and joined by " / "
    when it spans several, read from mutmut's copy of the module (original and mutant side by side)."""
    functions = _mutated_functions(root / module)
    mutant = name.rsplit(".", 1)[1]
    original = mutant.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    before = functions[original].replace(original, "f").splitlines()
    after = functions[mutant].replace(mutant, "f").splitlines()
    diff = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    return (" / ".join(line[1:].strip() for line in diff if line[0] == "-"),
            " / ".join(line[1:].strip() for line in diff if line[0] == "+"))


@functools.lru_cache(maxsize=None)
def _mutated_functions(path: Path) -> dict[str, str]:
    """The source of each original and mutant function in mutmut's copy of a module, by name (read once)."""
    text = path.read_text()
    lines = text.splitlines()
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno]) for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name}


def _function(name: str) -> str:
    """The source function a mutant belongs to (``FDALoss.compute``, ``calibrate``)."""
    mangled = name.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0].removeprefix("x").removeprefix("_")
    return mangled.replace("ǁ", ".").strip(".")


def left(table: dict[str, Counter], reasons_path: Path = REASONS) -> str:
    """Markdown: per module, each surviving mutant (its function and the line it changes) with its reason."""
    entries = tomllib.loads(reasons_path.read_text()).get("left", []) if reasons_path.exists() else []
    reasons = {(e["module"], e["function"], e["before"], e["after"]): e["reason"] for e in entries}
    out, unread = [], 0
    for module, by_name in exit_codes().items():
        rows = []
        for name in (name for name, code in by_name.items() if code == 0):
            function = _function(name)
            before, after = changed_lines(module, name)
            reason = reasons.get((module, function, before, after))
            unread += reason is None
            shown = " → ".join(f"`{_cell(part)}`" for part in _trimmed(before, after))
            rows.append(f"| `{function}` | {shown} | {reason or '**not yet read**'} |")
        if rows:
            out += [f"\n### `{module}`\n", "| function | change | why it is left |", "|---|---|---|", *rows]
    total = sum(counts["survived"] for counts in table.values())
    return f"{unread} of the {total} mutants left are not yet read.\n" + "\n".join(out)


def _trimmed(before: str, after: str, context: int = 24) -> tuple[str, str]:
    """The two lines without the start and end they share, but for ``context`` characters around the change."""
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    end = 0
    while end < min(len(before), len(after)) - start and before[-1 - end] == after[-1 - end]:
        end += 1
    start, end = max(0, start - context), max(0, end - context)
    cut = lambda text: ("…" if start else "") + text[start:len(text) - end] + ("…" if end else "")  # noqa: E731
    return cut(before), cut(after)


def _cell(code: str) -> str:
    return code.replace("|", "\\|").replace("`", "'")


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
    parser.add_argument("--left", action="store_true",
                        help="print each surviving mutant with its reason from docs/mutants-left.toml")
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
    if args.left:
        print("# Mutants left\n\nWritten by `python scripts/mutants_report.py --left > docs/MUTANTS.md` from mutmut's "
              "results and the reasons in docs/mutants-left.toml (docs/TESTING.md says how). Per module, what mutmut "
              "generated and what became of each mutant:\n")
    print(markdown(table))
    if args.left:
        print("\nEach mutant no test kills, the line it changes (before → after) and why it is left. " + left(table))
    if args.survivors:
        for name in survivors():
            print(f"\n## {name}")
            shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True,
                                   text=True)
            print(shown.stdout.strip() or shown.stderr.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
