"""Is training from the Live fine-tune page as fast as from the CLI? Measured side by side in one run.

1. The same run (the default recipe, shortened) trained by ``proxyfda finetune`` in its own process, and by
   the page's machinery: `proxyfda.live.LiveTrainer`'s worker thread inside a process whose main thread
   redraws the live curves every second, as the page's fragment does. Median seconds per step of each
   (from the runs' own histories), alternating the two, and their ratio (target: within 5 %).
2. OpenMP's wait policy (proxyfda sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose one): the CLI
   run alone under PASSIVE and ACTIVE, and both again while a second process trains beside it (as when
   the app's server and a CLI run share two cores).

    python benchmarks/bench_live.py [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: a process that trains through the page's machinery while its main thread polls like the page
PAGE_LIKE = """
import sys, time
from proxyfda.config import FinetuneConfig
from proxyfda.live import LiveTrainer
sys.path.insert(0, {root!r})
from app.live_views import training_curves
config = FinetuneConfig.from_dict({config!r})
trainer = LiveTrainer({out!r})
job = trainer.submit(config, owner="bench")
while not trainer.wait(job, timeout=1.0):
    train, evals = job.history()
    training_curves(train, evals).to_json()
print(job.run_dir)
"""


def cli_args(steps: int, out: str) -> list[str]:
    return [sys.executable, "-m", "proxyfda", "finetune", "--steps", str(steps), "--eval-every", str(max(1, steps // 4)),
            "--out", out]


def step_seconds(run_dir: str | Path) -> float:
    """Median seconds per training step, from the run's own history (evaluations excluded)."""
    records = [json.loads(line) for line in (Path(run_dir) / "history.jsonl").read_text().splitlines()]
    return statistics.median(r["seconds"] for r in records if r["kind"] == "train")


def run(command: list[str], env: dict | None = None) -> str:
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def page_vs_cli(steps: int, repeats: int, scratch: Path) -> None:
    from proxyfda.config import FinetuneConfig
    from proxyfda.methods import resolve_config

    config = resolve_config(FinetuneConfig(steps=steps, eval_every=max(1, steps // 4))).to_dict()
    cli, page = [], []
    for r in range(repeats):
        cli_dir = scratch / f"cli-{r}"
        run(cli_args(steps, str(cli_dir)))
        cli.append(step_seconds(cli_dir))
        script = PAGE_LIKE.format(root=str(ROOT), config=config, out=str(scratch / f"page-{r}"))
        page.append(step_seconds(run([sys.executable, "-c", script])))
        print(f"  repeat {r + 1}/{repeats}: CLI {cli[-1]:.3f} s/step, page {page[-1]:.3f} s/step", flush=True)
    ratio = statistics.median(page) / statistics.median(cli)
    print(f"page vs CLI, {steps} steps × {repeats}: median {statistics.median(page):.3f} vs "
          f"{statistics.median(cli):.3f} s/step; ratio {ratio:.3f} (target ≤ 1.05)")


def wait_policies(steps: int, scratch: Path) -> None:
    for policy in ("PASSIVE", "ACTIVE"):
        env = {"OMP_WAIT_POLICY": policy}
        alone = scratch / f"alone-{policy}"
        run(cli_args(steps, str(alone)), env)
        beside = subprocess.Popen(cli_args(steps * 3, str(scratch / f"neighbour-{policy}")), cwd=ROOT,
                                  env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shared = scratch / f"shared-{policy}"
        try:
            run(cli_args(steps, str(shared)), env)
        finally:
            beside.kill()
            beside.wait()
        print(f"OMP_WAIT_POLICY={policy}: alone {step_seconds(alone):.3f} s/step; beside a second training "
              f"process {step_seconds(shared):.3f} s/step", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        page_vs_cli(args.steps, args.repeats, Path(scratch))
        wait_policies(args.steps, Path(scratch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
