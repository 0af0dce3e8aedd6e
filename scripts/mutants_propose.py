"""Propose docs/mutants-left.toml entries for the survivors not yet read, where a survivor is of a kind already
read (a device argument, a library's spelling, a memory-only flag…): prints TOML to review and append.

    python scripts/mutants_propose.py >> docs/mutants-left.toml   # after reading what it proposes

A proposal is a guess from the changed line's shape; it is only a reason once someone has read the mutant.
Survivors it cannot place are listed on stderr: read them, then kill them with a test or add their entry.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib

from mutants_report import REASONS, _function, changed_lines, exit_codes


def norm(line: str) -> str:
    """A line without its device arguments (and the comma a removed last argument leaves)."""
    return re.sub(r",?\s*device=[\w.]+(\([\w.]*\))?", "", line).replace(" ", "").replace(",)", ")")


#: the reason for a device argument dropped or None
DEVICE = ("Device placement: the same tensor on a machine without a GPU (a meta-device stand-in cannot run this "
          "function: it reads a value back).")


def widget_words(before: str, after: str) -> bool:
    """Whether the change is to a widget's label (a call's first argument), its help text or its placeholder:
    that text in other letters, wrapped in XX, emptied to None, or the help or placeholder dropped."""
    for match in re.finditer(r'(\w+\(|help=|placeholder=|^)(f?"[^"]*")', before):
        head, text = match.group(1), match.group(2)
        if head not in ("help=", "placeholder=", "") and not head.startswith(("text_input(", "selectbox(", "radio(", "number_input(",
                                                       "slider(", "checkbox(", "button(", "expander(")):
            continue
        start, end = match.span(2)
        tail = len(before) - end
        if after[:start] == before[:start] and after[len(after) - tail:] == before[end:] and len(after) > start + tail:
            return True  # the change lies inside the text (or replaces it with None)
        if head in ("help=", "placeholder=") and after in (before[:match.start(1)].rstrip(", ") + before[end:],
                                         before[:match.start(1)] + before[end:].lstrip(", ")):
            return True
    return False


#: (module or None, function or None, test on (before, after), reason): the kinds read so far
RULES = [
    (None, None, lambda b, a: any(flag in b and flag not in a for flag in ("horizontal=True", "expanded=False")),
     "Layout: a radio drawn down rather than across, or a section shown open rather than folded."),
    ("app/live_controls.py", "live_controls", lambda b, a: "min_value=0.0" in b and "min_value=0.0" not in a,
     "The strength field's lower bound: a negative strength is refused by the regulariser's own check, with a "
     "sentence (`check_number(..., low=0.0)`, word for word in test_loss_base.py)."),
    (None, None, lambda b, a: 'format="%g"' in b and 'format="%g"' not in a,
     "Presentation: a number's display format, not the value the field holds."),
    (None, None, lambda b, a: "step=" in b and re.sub(r",?\s*step=[^,)]+", "", b).replace(" / ", " ") == re.sub(
        r",?\s*step=[^,)]+", "", a).replace(", )", ")"),
     "Presentation: the +/− buttons' step, not the value a field holds."),
    (None, None, lambda b, a: "button(" in a and any(flag in b and flag not in a for flag in ('type="primary"',
                                                                                          'width="stretch"')),
     "Presentation: a button's emphasis and width."),
    (None, None, widget_words, "Wording: a widget's label, help text or placeholder (tests find widgets by key; what a "
                               "field holds is checked, not what it is called)."),
    (None, None, lambda b, a: norm(b) == norm(a), DEVICE),
    (None, None, lambda b, a: "resolve_device(config.device)" in b and a == b.replace("resolve_device(config.device)",
                                                                                     "resolve_device(None)"),
     "Device placement: `resolve_device(None)` is the run's default \"auto\", the CPU on a machine without a GPU."),
    (None, None, lambda b, a: 'kind="STABLE"' in a, "numpy reads a sort kind in any case (`STABLE` is `stable`)."),
    ("app/linked_maps.py", "selection_ids", lambda b, a: 'getattr(event, "selection", None)' in a,
     "An event object without a selection reads as no points either way: `getattr(None, \"points\", [])` is `[]`."),
    ("app/linked_maps.py", "map_sample", lambda b, a: a == "if n < budget:",
     "At exactly its budget, sampling every point returns them all."),
    ("app/linked_maps.py", "map_sample", lambda b, a: "replace=None" in a,
     "`replace=None` is falsy like `False`: sampling without replacement either way."),
    (None, None, lambda b, a: "to_parquet(" in a and "index=False" in b,
     "parquet's `index` flag: the same table is read back (the default RangeIndex is stored as metadata or not "
     "at all)."),
    (None, None, lambda b, a: "to_csv(" in a and a == b.replace("index=False", "index=None"),
     "`index=None` is falsy like `False`: no index column is written."),
    (None, None, lambda b, a: "indent=2" in b and re.sub(r",?\s*indent=\w+", "", b) == re.sub(r",?\s*indent=\w+", "", a)
     .replace(", )", ")"), "JSON indentation: the same values are read back."),
    ("proxyfda/drift.py", "run_three_way", lambda b, a: "fraction: 0)" in a,
     "The no-op progress callback's return value is ignored by every caller."),
    ("proxyfda/drift.py", "run_timeline", lambda b, a: "images.labels, None, k" in a,
     "A timeline reads no per-class figure, the only use of class names in `compute_drift`."),
    ("proxyfda/losses/fda.py", "pretrained_neighbours", lambda b, a: "shape[1]" in a,
     "`sims_pre` is square ([B, B]): both dimensions are B."),
    ("proxyfda/losses/fda.py", "pretrained_neighbours", lambda b, a: ".sort(descending=True)" in a,
     "`sort`'s default axis is the last, which is `dim=1` for the [B, B] similarities."),
    ("proxyfda/losses/fda.py", "FDALoss.anchor_bias", lambda b, a: "expand(1)" in a,
     "A fixed bias broadcasts the same as [1] or expanded to [B, 1]."),
    ("proxyfda/losses/proxy_fda.py", "ProxyFDALoss._record_proxies", lambda b, a: "max(p * (p - 1), 2)" in a,
     "p·(p−1) is 0 (one proxy a side: a sum over no pair, 0 either way) or at least 2."),
    ("proxyfda/metrics.py", None, lambda b, a: "block_size, None" not in a and (
        "block_size, _rank" in b and "check_block_size(None" in a or ", None, neighbours" in a),
     "Memory, not values: `block_size=None` is the default block size (block sizes giving one value: "
     "`test_block_size_does_not_change_the_result`)."),
    ("proxyfda/metrics.py", "_trustworthiness", lambda b, a: "or True" in a,
     "On unit rows (the cosine metric) euclidean and inner-product neighbours are the same."),
    ("proxyfda/metrics.py", "_trustworthiness", lambda b, a: "dtype = None" == a or "_rank_block_size(n, None)" in a
     or "astype(None" in a or "copy=" in a and "copy=False" not in a,
     "Memory, not values: ranks held as float64 (numpy's default) or copied; the same integers below 2^53."),
    ("proxyfda/metrics.py", "_trustworthiness", lambda b, a: "astype(dtype, )" in a,
     "Memory, not values: a copy of the ranks, the same integers."),
    ("proxyfda/metrics.py", "_count_closer", lambda b, a: "thresholds.max(" in a,
     "A pre-filter that only saves work: it decides which entries are compared k times, not what is counted (each "
     "pass checked on exact ties in `test_closer_counts_are_strict_and_cover_every_row`)."),
    ("proxyfda/metrics.py", "_count_closer", lambda b, a: "count_nonzero(below)" in b and "if " in a,
     "Chooses between two passes that count the same (each checked on exact ties in "
     "`test_closer_counts_are_strict_and_cover_every_row`)."),
    ("proxyfda/metrics.py", "Geometry.cross_gram", lambda b, a: "out -=" in a,
     "Its sign cancels in the squared Frobenius norm that CKA takes and in the singular values Procrustes takes."),
    ("proxyfda/metrics.py", "mean_l2_drift", lambda b, a: "astype(None)" in a, "`astype(None)` is `astype(float64)`."),
    ("proxyfda/metrics.py", "_trustworthiness", lambda b, a: "k), None, block_size)" in a,
     "On unit rows (the cosine metric) squared euclidean distance, 2 − 2·cos, ranks as cosine distance does; for the"
     " euclidean metric None takes the same branch."),
    ("proxyfda/metrics.py", "_max_label", lambda b, a: "else 1" in a,
     "The fallback is used only for labels that are then refused (not integers) or absent (no points)."),
    ("proxyfda/report_html.py", "thumbnail_uri", lambda b, a: "format=\"png\"" in a,
     "PIL reads a format name in any case."),
    ("proxyfda/report_html.py", "thumbnail_uri", lambda b, a: "optimize" in b and "optimize=True" not in a,
     "PNG `optimize` changes the file's size, not its pixels."),
    ("proxyfda/report_html.py", "thumbnail_uri", lambda b, a: 'decode("ASCII")' in a,
     "Python reads a codec name in any case."),
    ("proxyfda/report_html.py", "thumbnail_uri", lambda b, a: "dtype=None" in a or "size=size), ))" in a,
     "Thumbnails are uint8 already: `asarray` without a dtype keeps it."),
    ("proxyfda/runs.py", "_read_pid", lambda b, a: "33" in a,
     "Reading 33 bytes of a lock file instead of 32: a pid has at most 7 digits."),
    ("proxyfda/losses/base.py", "RecordingLoss.__init__", lambda b, a: a == "self.record_detail = None",
     "`None` is falsy like `False`: details stay off."),
    ("proxyfda/losses/base.py", "RecordingLoss.record",
     lambda b, a: "value.to(None, copy=True)" in a or "value.to(copy=True)" in a, DEVICE),
    ("proxyfda/vectors.py", "load_vectors", lambda b, a: "popitem" in a,
     "Memory, not values: the embedding-file cache evicting its newest entry instead of its oldest."),
    ("proxyfda/vectors.py", "load_vectors", lambda b, a: "XXan [N, d]" in a,
     "Wording: the hint in the refusal of a file that is not an embedding file (what it names, the file and its "
     "suffix, is checked by the bad-input tests)."),
    ("proxyfda/vectors.py", "_load_npy", lambda b, a: "np.load(path, )" in a,
     "`allow_pickle=False` is numpy's default."),
    ("proxyfda/vectors.py", "_parquet_vectors", lambda b, a: "read_table" in a,
     "Reading every column, then taking the one chosen, gives that column."),
    ("proxyfda/vectors.py", "_parquet_vectors", lambda b, a: "zero_copy_only" in a,
     "Copy flags: a copy or a view of the same values (arrow refuses a zero copy only where it must copy, and these "
     "columns are read whole)."),
    ("proxyfda/vectors.py", "_checked", lambda b, a: "ndim <" in a or "ndim <=" in a,
     "A hint inside a branch that `ndim == 2` never reaches: the hint for 1-D arrays is the same for ndim < 2 and < "
     "3 there."),
    ("proxyfda/vectors.py", "load_labels", lambda b, a: '"XXiuXX"' in a,
     "A dtype kind letter is one character: `in \"XXiuXX\"` holds for the same kinds as `in \"iu\"`."),
    ("proxyfda/vectors.py", "_read_labels", lambda b, a: "where(series.notna(), )" in a,
     "pandas' `where` default is NaN, which a labels file reads as missing exactly like `None`."),
]



def propose(module: str, function: str, before: str, after: str) -> str | None:
    for rule_module, rule_function, applies, reason in RULES:
        if rule_module in (None, module) and rule_function in (None, function):
            try:
                if applies(before, after):
                    return reason
            except (TypeError, ValueError):
                continue
    return None


def main() -> int:
    read = {(e["module"], e["function"], e["before"], e["after"])
            for e in tomllib.loads(REASONS.read_text()).get("left", [])} if REASONS.exists() else set()
    quoted = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731 (a TOML basic string)
    for module, by_name in exit_codes().items():
        for name in (name for name, code in by_name.items() if code == 0):
            function = _function(name)
            before, after = changed_lines(module, name)
            if (module, function, before, after) in read:
                continue
            reason = propose(module, function, before, after)
            if reason is None:
                print(f"not placed: {module} {function}: {before}  →  {after}", file=sys.stderr)
                continue
            print(f"\n[[left]]\nmodule = {quoted(module)}\nfunction = {quoted(function)}\nbefore = {quoted(before)}\n"
                  f"after = {quoted(after)}\nreason = {quoted(reason)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
