"""Training-step time of each method as a ratio to naive fine-tuning, measured side by side.

Every method runs the real training loop (`proxyfda.training.finetune`) at the default batch on
the default data; methods take turns in rounds so that machine noise hits them all alike. The
figure is the median step time over all rounds (the first steps of each run are dropped as
warm-up). Pre-trained features are cached before timing: they are computed once per data set,
not per step. The paper reports +7–9 % for FDA and +17–21 % for Proxy-FDA; our target is ≤ 5 %
for Proxy-FDA.

    python benchmarks/overhead.py [--rounds 3] [--steps 12] [--methods naive,l2sp,ldifs,fda,proxy-fda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxyfda.config import FinetuneConfig  # noqa: E402
from proxyfda.methods import resolve_config  # noqa: E402
from proxyfda.runs import Run  # noqa: E402
from proxyfda.training import finetune  # noqa: E402

WARMUP_STEPS = 2


def step_times(config: FinetuneConfig, run_dir: Path) -> list[float]:
    finetune(config, run_dir)
    records = Run.open(run_dir).records()
    return [r["seconds"] for r in records if r["kind"] == "train"][WARMUP_STEPS:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="naive,l2sp,ldifs,ldifs-final,lp-ft,fda,proxy-fda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    methods = args.methods.split(",")
    base = FinetuneConfig(steps=args.steps, eval_every=10_000, eval_size=10)
    times: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for method in methods:
                times[method] += step_times(base.replace(method=method), Path(tmp) / f"{method}-{round_index}")
            print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
                f"{m} {statistics.median(times[m]):.3f}s" for m in methods), flush=True)
    naive = statistics.median(times["naive"]) if "naive" in times else None
    resolved = resolve_config(base)
    print(f"\nbatch {resolved.batch_size}, {resolved.image_size} px, {args.rounds} rounds × {args.steps - WARMUP_STEPS} "
          "timed steps per method")
    print(f"{'method':<12}{'median s/step':>15}{'vs naive':>10}")
    for method in methods:
        median = statistics.median(times[method])
        ratio = f"{median / naive:>9.3f}x" if naive else ""
        print(f"{method:<12}{median:>15.3f}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
