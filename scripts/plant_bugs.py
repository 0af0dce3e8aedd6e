"""Plant each of the one-line bugs a reviewer planted (issue 17) in a copy of the project, one at a time, and
check that the test named for it fails.

    python scripts/plant_bugs.py            # every bug: "caught" or "MISSED" per line; exit 1 if one is missed
    python scripts/plant_bugs.py --list     # the bugs and their tests, without running anything

mutmut plants generic changes; these are the plausible, result-changing ones a careful reviewer chose, kept
so that a refactor which loses the test that guards one of them shows up here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    what: str
    path: str  # the file, relative to the project root
    old: str  # exactly once in the file
    new: str
    test: str  # the pytest node (or file) that must fail


BUGS = (
    Bug("the permutation null draws the same permutation every time", "proxyfda/drift.py",
        "rng.permutation(report.n), geometry) for _ in range(permutations)",
        "np.random.default_rng(0).permutation(report.n), geometry) for _ in range(permutations)",
        "tests/test_drift.py::test_the_permutation_null_is_many_random_pairings_at_the_analytic_baseline"),
    Bug("a summary score filled from the wrong per-point column", "proxyfda/drift.py",
        '"jaccard_mean": float(jaccard.mean()),', '"jaccard_mean": float(overlap.mean()),',
        "tests/test_properties.py::test_summaries_are_the_means_of_their_own_columns"),
    Bug("an option set to zero replaced by the preset's value", "proxyfda/losses/fda.py",
        "for name, value in chosen.items() if value is not None}", "for name, value in chosen.items() if value}",
        "tests/test_method_table.py::test_a_zero_option_overrides_its_preset"),
    Bug("the generator fed the fine-tuned similarities where the pre-trained ones belong",
        "proxyfda/losses/proxy_fda.py", "gen.pool(gram.gather(1, order), sims_pre.gather(1, order),",
        "gen.pool(sims_pre.gather(1, order), gram.gather(1, order),",
        "tests/test_proxies.py::test_an_untrained_generator_estimates_the_pooled_pretrained_similarity"),
    Bug("proxies laid out in the wrong order in the loss's pair tensor", "proxyfda/losses/proxy_fda.py",
        "slot_pos = (torch.arange(q, device=x.device) < gen.n_proxies)",
        "slot_pos = (torch.arange(q, device=x.device) >= gen.n_proxies)",
        "tests/test_proxies.py::test_each_proxy_sits_in_its_own_column_of_the_pair_table"),
    Bug("a method table entry with the wrong sampler", "proxyfda/methods.py",
        'strength="weight", sampler="balanced", needs_pretrained_features=True),',
        'strength="weight", sampler="epoch", needs_pretrained_features=True),',
        "tests/test_method_table.py::test_each_method_row_is_its_published_definition"),
    Bug("weight decay applied where the optimiser must not decay", "proxyfda/training.py",
        'if id(p) not in ids], "weight_decay": 0.0})', 'if id(p) not in ids]})',
        "tests/test_method_table.py::test_weight_decay_reaches_the_encoder_and_head_only"),
    Bug("a replacement that deletes the old run before the new one is in place", "proxyfda/runs.py",
        "        os.rename(self.target, old)\n", "        shutil.rmtree(self.target)\n",
        "tests/test_run_safety.py::test_a_swap_that_fails_at_either_rename_leaves_the_old_run_whole_at_its_name"),
    Bug("a lock that is created but never taken", "proxyfda/runs.py",
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass",
        "tests/test_run_safety.py::test_a_second_writer_fails_at_once_naming_the_first"),
    Bug("an app field that shows one input where another belongs", "app/drift_controls.py",
        'st.text_input("Pre-trained encoder", key=_key("pretrained"),',
        'st.text_input("Pre-trained encoder", key=_key("finetuned"),',
        "tests/test_app_controls.py::test_every_field_of_a_drift_link_lands_in_its_own_widget"),
    Bug("an HTML report that prints a user-supplied string unescaped", "proxyfda/report_html.py",
        "return html.escape(str(value), quote=True)", "return str(value)",
        "tests/test_report_html.py::test_every_place_a_user_string_reaches_is_escaped"),
    # a second round, planted before the reviewer's next one: these five passed every test until tests were added
    Bug("an explicit hard_fraction=0 replaced by the default when class means are given", "proxyfda/sampling.py",
        "if hard_fraction is None:", "if not hard_fraction:",
        "tests/test_sampling.py::test_hard_mining_puts_similar_classes_together"),
    Bug("a drifted point's card shows its overlap as its Jaccard", "proxyfda/report_html.py",
        "Jaccard {report.jaccard[i]:.2f}", "Jaccard {report.overlap[i]:.2f}",
        "tests/test_report_html.py::test_the_most_drifted_points_come_with_their_neighbours_as_embedded_pngs"),
    Bug("a score of exactly 0 reported as not computed", "proxyfda/report_html.py",
        "cell = _number(value) if value is not None", "cell = _number(value) if value",
        "tests/test_report_html.py::test_a_score_of_exactly_zero_is_shown_as_zero"),
    Bug("point 0 focused but drawn without its neighbour rings", "app/linked_maps.py",
        "ring = panel.neighbours[focus] if focus is not None else ()", "ring = panel.neighbours[focus] if focus else ()",
        "tests/test_app_views.py::test_focus_rings_each_maps_own_neighbours"),
    Bug("the report cache serves a report computed for other labels", "proxyfda/drift.py",
        "for array in (x_a, x_b, labels):", "for array in (x_a, x_b):",
        "tests/test_runs.py::test_cached_drift_is_compute_drift_read_back"),
    # a third round, in the modules mutmut does not mutate: these eight passed every test until tests were added
    Bug("the over-time chart's share broken averaged over steps instead of points", "app/timeline_view.py",
        "broken = (timeline.overlap < BROKEN).mean(1)", "broken = (timeline.overlap < BROKEN).mean(0)",
        "tests/test_app_views.py::test_the_over_time_chart_plots_each_score_and_the_share_broken_per_step"),
    Bug("the linear probe refitted on the fit split only", "proxyfda/forgetting.py",
        "model = fitted(best, np.arange(len(y_train)))", "model = fitted(best, fit_idx)",
        "tests/test_forgetting.py::test_the_probe_picks_c_on_the_split_then_refits_on_every_training_row"),
    Bug("the probe's ties going to the weaker regularisation", "proxyfda/forgetting.py",
        "key=lambda C: (val_accuracy[C], -C))", "key=lambda C: (val_accuracy[C], C))",
        "tests/test_forgetting.py::test_the_probe_picks_c_on_the_split_then_refits_on_every_training_row"),
    Bug("an embedding file rewritten in place served from memory", "proxyfda/vectors.py",
        "key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, column)",
        "key = (str(path.resolve()), stat.st_size, column)",
        "tests/test_vectors.py::test_a_file_rewritten_in_place_is_read_again"),
    Bug("a run's JSON written in place, so a crash leaves half a file", "proxyfda/runs.py",
        '        atomic_write_text(self.path / name, json.dumps(value, indent=2) + "\\n")',
        '        (self.path / name).write_text(json.dumps(value, indent=2) + "\\n")',
        "tests/test_run_reading.py::test_every_json_a_run_keeps_is_written_whole_or_not_at_all"),
    Bug("the runs table's CKNNA column showing the probe's CKA", "proxyfda/live.py",
        '"CKNNA": last.get("probe_cknna")', '"CKNNA": last.get("probe_cka")',
        "tests/test_run_reading.py::test_the_runs_table_shows_each_runs_last_evaluation_and_none_before_its_first"),
    Bug("a run stopped before its first evaluation shown with step 0's perfect scores", "proxyfda/live.py",
        'evals[-1]["step"] > 0 else {}', 'evals[-1]["step"] >= 0 else {}',
        "tests/test_run_reading.py::test_the_runs_table_shows_each_runs_last_evaluation_and_none_before_its_first"),
    Bug("the proxy debugger's pairs listed farthest first", "proxyfda/proxy_debug.py",
        'sort_values("pre_cos", ascending=False, ignore_index=True)',
        'sort_values("pre_cos", ascending=True, ignore_index=True)',
        "tests/test_proxy_debug.py::test_the_inspection_reads_the_loss_records_and_they_agree_with_brute_force"),
    # a fourth round, in the data, features, zero-shot, projection and app-helper modules
    Bug("a sample of a sample naming its parent's positions instead of the whole set's rows", "proxyfda/data.py",
        "rows=None if self.rows is None else self.rows[indices],", "rows=None if self.rows is None else indices,",
        "tests/test_data.py::test_a_sample_of_a_sample_keeps_each_images_row_in_the_whole_set"),
    Bug("a stratified split rounding each class's share down", "proxyfda/data.py",
        "cut = max(1, int(round(len(members) * fraction))) if", "cut = max(1, int(len(members) * fraction)) if",
        "tests/test_forgetting.py::test_stratified_split_keeps_class_shares"),
    Bug("an encoder source answering for images it never embedded", "proxyfda/features.py",
        "for part in (FEATURE_VERSION, source, images.fingerprint):", "for part in (FEATURE_VERSION, source):",
        "tests/test_features.py::test_an_encoder_source_finds_only_the_features_of_the_images_it_embedded"),
    Bug("zero-shot prompts grouped by template where the rows are read by class", "proxyfda/zeroshot.py",
        "prompts = [template.format(name) for name in class_names for template in templates]",
        "prompts = [template.format(name) for template in templates for name in class_names]",
        "tests/test_zeroshot.py::test_each_class_row_is_the_mean_of_its_unit_prompt_embeddings"),
    Bug("prompt embeddings averaged before they are scaled to unit length", "proxyfda/zeroshot.py",
        "text = F.normalize(model.encode_text(tokens).float(), dim=-1)", "text = model.encode_text(tokens).float()",
        "tests/test_zeroshot.py::test_each_class_row_is_the_mean_of_its_unit_prompt_embeddings"),
    Bug("a linear map centring other rows on their own mean", "proxyfda/projection.py",
        "    mean = basis.mean(0)", "    mean = x.mean(0)",
        "tests/test_projection.py::test_a_linear_map_projects_other_rows_on_the_basis_principal_axes"),
    Bug("gained neighbours captioned from the pre-trained graph", "app/neighbours.py",
        '_captions(images, split["gained"], sims_b)', '_captions(images, split["gained"], sims_a)',
        "tests/test_app_views.py::test_neighbour_panel_lists_the_reports_kept_lost_gained"),
    Bug("a large selection showing its least drifted points", "app/neighbours.py",
        'order = ids[np.argsort(report.overlap[ids], kind="stable")]',
        'order = ids[np.argsort(-report.overlap[ids], kind="stable")]',
        "tests/test_app_views.py::test_a_large_selection_shows_its_most_drifted_points_first"),
    Bug("the live ETA dividing by the steps done rather than the steps since the first", "proxyfda/live.py",
        "/ (done - 1) * (self.total_steps - done)", "/ done * (self.total_steps - done)",
        "tests/test_live.py::test_the_eta_is_the_pace_since_the_first_step_times_the_steps_left"),
)


def plant(bug: Bug, tree: Path) -> None:
    source = (ROOT / bug.path).read_text()
    if source.count(bug.old) != 1:
        raise SystemExit(f"{bug.path}: the line to change ({bug.old!r}) is not there exactly once; update BUGS")
    (tree / bug.path).write_text(source.replace(bug.old, bug.new))


def caught(bug: Bug, tree: Path) -> bool:
    """Whether the bug's test fails (and fails as a test, not because it could not be collected)."""
    plant(bug, tree)
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", bug.test],
                              cwd=tree, capture_output=True, text=True)
    finally:
        shutil.copy2(ROOT / bug.path, tree / bug.path)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{bug.test} did not run (pytest exit {done.returncode}):\n{done.stdout[-2000:]}")
    return done.returncode == 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the bugs and their tests, run nothing")
    args = parser.parse_args(argv)
    if args.list:
        for bug in BUGS:
            print(f"{bug.what}\n    {bug.path}: {bug.old!r} -> {bug.new!r}\n    caught by {bug.test}")
        return 0
    missed = 0
    with tempfile.TemporaryDirectory(prefix="proxyfda-planted-") as scratch:
        tree = Path(scratch) / "project"
        shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", "mutants", ".hypothesis", "__pycache__",
                                                                  "screenshots", "*.egg-info"))
        for bug in BUGS:
            ok = caught(bug, tree)
            missed += not ok
            print(f"{'caught' if ok else 'MISSED'}  {bug.what}  ({bug.test})", flush=True)
    print(f"{len(BUGS) - missed} of {len(BUGS)} planted bugs caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
