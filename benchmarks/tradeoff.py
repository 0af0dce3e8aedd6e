"""The fair comparison: every method swept over its strength, task accuracy against forgetting.

Each method's regularisation strength moves it along a trade-off between task accuracy (A_LP) and
forgetting (mean ΔLP over the held-out sets), so one run per method at its usual strength ranks
nothing. This sweeps λ for FDA and Proxy-FDA (both presets), α for L2-SP and both LDIFS forms,
WiSE-FT's α over the naive runs, and LP-FT, over several seeds on the embedded default; then

* ``tradeoff.json``: every run (method, preset, strength, seed, A_LP, ΔLP per held-out set and mean,
  OT and L2 distance, overlap@10 to the pre-trained space on the first held-out set, wall time),
  the table at matched task accuracy, and the distance/forgetting correlations with bootstrap
  intervals (the paper's second claim);
* ``tradeoff.png``: A_LP against mean ΔLP, each method's frontier through its strengths (means over
  seeds) with the seeds' spread.

The matched table interpolates each method's mean ΔLP along its frontier at A_LP = naive − 0.5, − 1
and − 2 points (per seed, then mean ± sd over seeds); a target outside a method's range is left out.

    python benchmarks/tradeoff.py --out docs/results/tradeoff      # the full sweep (hours on a CPU)
    python benchmarks/tradeoff.py --quick --out /tmp/tradeoff        # one seed, two strengths (minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from forgetting import QUICK_HELD_OUT, ensure_run  # noqa: E402
from proxyfda.config import FinetuneConfig  # noqa: E402
from proxyfda.forgetting import forgetting_report, frontier, held_out_sets  # noqa: E402
from proxyfda.interpolation import wise_run  # noqa: E402
from proxyfda.runs import Run  # noqa: E402


@dataclass(frozen=True)
class Sweep:
    """One method (and preset) swept over one option's values."""

    method: str
    option: str | None = None  # the strength option in reg_options; None: a method without one
    strengths: tuple[float, ...] = ()
    preset: str | None = None

    @property
    def label(self) -> str:
        return f"{self.method} ({self.preset})" if self.preset else self.method


FULL = (
    Sweep("naive"),
    Sweep("lp-ft"),
    Sweep("wise-ft", "alpha", (0.25, 0.5, 0.75, 1.0)),  # over each seed's naive run (α = 1 is that run)
    Sweep("l2sp", "alpha", (0.05, 0.5, 5.0)),
    Sweep("ldifs", "alpha", (1.0, 10.0, 100.0)),
    Sweep("ldifs-final", "alpha", (1.0, 10.0, 100.0)),
    Sweep("fda", "weight", (0.3, 1.0, 3.0), "ours"),
    Sweep("fda", "weight", (0.3, 1.0, 3.0), "paper"),
    Sweep("proxy-fda", "weight", (0.3, 1.0, 3.0), "ours"),
    Sweep("proxy-fda", "weight", (0.3, 1.0, 3.0), "paper"),
)
QUICK = (Sweep("naive"), Sweep("wise-ft", "alpha", (0.5, 1.0)), Sweep("fda", "weight", (0.3, 3.0), "ours"))
MATCHED_DROPS = (0.5, 1.0, 2.0)  # points of A_LP below naive
DOMINANCE_OF = ("proxy-fda (ours)", "proxy-fda (paper)")  # whose frontier is compared with every other's


def run_sweeps(sweeps, seeds, base: FinetuneConfig, runs_dir: Path) -> list[dict]:
    """Fine-tune (or reuse) every run; returns one row per run with what identifies it."""
    rows = []
    for seed in seeds:
        naive = ensure_run(base.replace(seed=seed), runs_dir / f"naive-s{seed}")
        for sweep in sweeps:
            for strength in sweep.strengths or (None,):
                name = f"{sweep.label}-{strength}-s{seed}".replace(" ", "").replace("(", "-").replace(")", "")
                if sweep.method == "naive" or (sweep.method == "wise-ft" and strength == 1.0):
                    run_dir = naive
                elif sweep.method == "wise-ft":
                    run_dir = runs_dir / name
                    if not (run_dir / "wise.json").exists():
                        wise_run(naive, strength, run_dir)
                else:
                    options = {sweep.option: strength} if sweep.option else {}
                    if sweep.preset:
                        options["preset"] = sweep.preset
                    run_dir = ensure_run(base.replace(method=sweep.method, seed=seed, reg_options=options),
                                         runs_dir / name)
                rows.append({"run": str(run_dir), "method": sweep.method, "preset": sweep.preset,
                             "label": sweep.label, "strength": strength, "seed": seed})
    return rows


def measured(run: Run, held_out: dict[str, int] | None, seed: int = 0) -> bool:
    """Whether ``run`` already keeps a forgetting measurement on these held-out sets and seed."""
    kept = run.forgetting()
    return bool(kept) and kept.get("held_out_sizes") == (held_out or held_out_sets(run.config.data)) \
        and kept.get("seed") == seed


def measure(rows: list[dict], held_out: dict[str, int] | None, k: int = 10) -> list[dict]:
    """A_LP, ΔLP, OT and L2 distances (forgetting report), overlap@k to the pre-trained space on the first
    held-out set, and wall time, added to every row."""
    from proxyfda.data import load_images
    from proxyfda.drift import compute_drift, encoder_features

    unique = list(dict.fromkeys(row["run"] for row in rows))
    # each run keeps its measurement (Run.save_forgetting): an interrupted sweep measures only the rest
    todo = [path for path in unique if not measured(Run.open(path), held_out)]
    if todo:
        print(f"measuring forgetting of {len(todo)} of {len(unique)} runs", flush=True)
        forgetting_report(todo, held_out=held_out, progress=lambda message: print(message, flush=True))
    by_path = {path: Run.open(path).forgetting() for path in unique}
    first = (held_out and next(iter(held_out))) or \
        sorted({name for entry in by_path.values() for name in entry["delta_LP"] if name != "mean"})[0]
    images = load_images(first, n=(held_out or {}).get(first))
    for row in rows:
        entry, run = by_path[row["run"]], Run.open(row["run"])
        size = run.config.image_size
        pre = encoder_features(run.config.base_encoder, images, size)
        drift = compute_drift(pre, encoder_features(run.spec, images, size), images.labels, images.class_names, k)
        source = Run.open(run.wise()["source"]) if run.wise() else run
        row.update(A_LP=entry["A_LP"], delta_LP=entry["delta_LP"], otdd=entry["otdd"]["mean"],
                   l2=entry["l2"]["mean"], overlap_at_k=drift.metrics["overlap_at_k_mean"],
                   seconds=source.summary().get("seconds"))
    return rows


def at_matched_accuracy(rows: list[dict], label: str, seed: int, drop: float) -> float | None:
    """One seed's mean ΔLP of ``label``, interpolated along its frontier at A_LP = that seed's naive − ``drop``
    points; None where the target lies outside the method's range of accuracies."""
    naive_acc = frontier(rows, "naive", seed)[0][0]
    acc, delta = frontier(rows, label, seed)
    target = naive_acc - drop
    if len(acc) and acc.min() <= target <= acc.max():
        return float(np.interp(target, acc, delta))
    return None


def matched_table(rows: list[dict]) -> dict[str, dict[str, list[float] | None]]:
    """Per method: mean ΔLP interpolated at A_LP = naive − d (per seed), as [mean, sd, seeds], or None
    where the target lies outside the method's frontier."""
    seeds = sorted({r["seed"] for r in rows})
    table: dict[str, dict] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        table[label] = {}
        for drop in MATCHED_DROPS:
            values = [v for seed in seeds if (v := at_matched_accuracy(rows, label, seed, drop)) is not None]
            table[label][f"naive-{drop:g}"] = [float(np.mean(values)), float(np.std(values)), len(values)] if values else None
    return table


def dominance(rows: list[dict], method: str) -> dict[str, dict[str, dict | None]]:
    """Does ``method``'s frontier lie above each other method's? At each matched accuracy (naive − d), the
    per-seed difference ΔLP(method) − ΔLP(other) (positive: ``method`` forgets less at the same task
    accuracy), paired by seed: its mean and a 95 % t-interval over the seeds where both reach the target."""
    from scipy import stats

    seeds = sorted({r["seed"] for r in rows})
    result: dict[str, dict] = {}
    for other in dict.fromkeys(r["label"] for r in rows):
        if other in (method, "naive"):
            continue
        result[other] = {}
        for drop in MATCHED_DROPS:
            gaps = []
            for seed in seeds:
                mine, theirs = (at_matched_accuracy(rows, label, seed, drop) for label in (method, other))
                if mine is not None and theirs is not None:
                    gaps.append(mine - theirs)
            cell = None
            if gaps:
                mean = float(np.mean(gaps))
                half = float(stats.t.ppf(0.975, len(gaps) - 1) * stats.sem(gaps)) if len(gaps) > 1 else float("nan")
                cell = {"mean": mean, "ci": [mean - half, mean + half], "seeds": len(gaps)}
            result[other][f"naive-{drop:g}"] = cell
    return result


def correlations(rows: list[dict], resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Pearson correlation of mean ΔLP with the OT and with the L2 distance across runs, each with a
    95 % bootstrap interval over runs, and the interval of their difference (|r_OT| − |r_L2|)."""
    delta = np.array([r["delta_LP"]["mean"] for r in rows])
    distances = {name: np.array([r[name] for r in rows]) for name in ("otdd", "l2")}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(rows), size=(resamples, len(rows)))

    def pearson(x, y):
        return float(np.corrcoef(x, y)[0, 1]) if np.ptp(x) > 0 and np.ptp(y) > 0 else np.nan

    result = {}
    boot = {}
    for name, x in distances.items():
        boot[name] = np.array([pearson(x[i], delta[i]) for i in draws])
        result[name] = {"pearson": pearson(x, delta), "ci": np.nanpercentile(boot[name], [2.5, 97.5]).tolist()}
    gap = np.abs(boot["otdd"]) - np.abs(boot["l2"])
    result["abs_otdd_minus_abs_l2"] = {"mean": float(np.nanmean(gap)), "ci": np.nanpercentile(gap, [2.5, 97.5]).tolist()}
    result["n_runs"] = len(rows)
    return result


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        if label == "naive":  # one point per seed, drawn last, on top
            continue
        points = ax.scatter([100 * r["A_LP"] for r in mine], [100 * r["delta_LP"]["mean"] for r in mine], s=14,
                            alpha=0.35)
        acc, delta = frontier(rows, label)
        ax.plot(acc, delta, "-o", color=points.get_facecolor()[0][:3], label=label, markersize=5)
    acc, delta = frontier(rows, "naive")
    ax.plot(acc, delta, "*", color="black", markersize=14, label="naive", zorder=5)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("task accuracy A_LP (%)")
    ax.set_ylabel("mean ΔLP over held-out sets (points; < 0 is forgetting)")
    ax.set_title("Trade-off on the embedded default (lines: means over seeds; dots: single runs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _interval(cell: dict | None) -> str:
    return "out of range" if cell is None else f"{cell['mean']:+.2f} [{cell['ci'][0]:+.2f}, {cell['ci'][1]:+.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, two strengths, three methods, 40 steps")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: 0,1,2; quick: 0)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: 300; quick: 40)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "tradeoff"))
    parser.add_argument("--out", required=True, help="folder for tradeoff.json and tradeoff.png")
    args = parser.parse_args(argv)
    sweeps = QUICK if args.quick else FULL
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    steps = args.steps or (40 if args.quick else 300)
    base = FinetuneConfig(steps=steps, eval_every=max(1, steps // 3))
    runs_dir = Path(args.runs_dir) / ("quick" if args.quick else "full")
    print(f"sweeping {', '.join(s.label for s in sweeps)} × seeds {seeds}, {steps} steps", flush=True)
    rows = measure(run_sweeps(sweeps, seeds, base, runs_dir), QUICK_HELD_OUT if args.quick else None)
    result = {"command": "python benchmarks/tradeoff.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "steps": steps, "seeds": seeds, "runs": rows, "matched": matched_table(rows),
              "correlation_with_delta_LP": correlations(rows),
              "dominance": {label: dominance(rows, label) for label in DOMINANCE_OF if any(r["label"] == label for r in rows)}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tradeoff.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out / "tradeoff.png")
    print(f"\n{'method (preset)':<20}" + "".join(f"{'ΔLP @ naive−' + format(d, 'g'):>18}" for d in MATCHED_DROPS))
    for label, cells in result["matched"].items():
        print(f"{label:<20}" + "".join(f"{'out of range' if c is None else f'{c[0]:+.2f} ± {c[1]:.2f}':>18}"
                                       for c in cells.values()))
    for label, against in result["dominance"].items():
        print(f"\n{label} minus each method at matched accuracy (points of ΔLP; > 0: {label} forgets less)")
        for other, cells in against.items():
            print(f"  {other:<18}" + "".join(f"{_interval(c):>26}" for c in cells.values()))
    corr = result["correlation_with_delta_LP"]
    print(f"ΔLP vs OT: r = {corr['otdd']['pearson']:+.2f} {corr['otdd']['ci']}; vs L2: r = {corr['l2']['pearson']:+.2f} "
          f"{corr['l2']['ci']} over {corr['n_runs']} runs")
    print(f"wrote {out / 'tradeoff.json'} and {out / 'tradeoff.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
