"""Fine-tuning and extraction under torchrun: two Gloo processes on the CPU give what one process gives.

One ``torchrun --nproc_per_node 2`` launch (tests/distributed_worker.py) runs everything distributed;
the tests here compare it with the same work done in this process: the losses of short naive, FDA and
Proxy-FDA runs over the same global batches, the gradient of the gathered kNN losses, the run
directories (written by rank 0 alone, loadable, recording world_size 2) and sharded extraction.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from proxyfda.config import FinetuneConfig

ROOT = Path(__file__).resolve().parent.parent

#: short runs over class-balanced global batches of 16 (4 classes × 4 images: 8 per process), 32 px
CONFIGS = {method: FinetuneConfig(method=method, data="digits:train", eval_data="digits:test", image_size=32,
                                  steps=3, batch_size=16, classes_per_batch=4, sampler="balanced", eval_every=3,
                                  eval_size=40, warmup_steps=1, lr=1e-3)
           for method in ("naive", "fda", "proxy-fda")}
#: step 1 runs the same weights on the same global batch: the figures differ only by the order of float32
#: sums (8-image shards and a mean of two means against one 16-image batch), about 1e-6 relative here
FIRST_STEP_REL = 1e-5
#: later steps compare two trajectories: AdamW's first update is ±lr per weight whatever |g|, so a gradient
#: entry within rounding of zero moves one way in one process and the other way in the other, and the
#: figures drift apart (1e-5 at step 3 on one machine, 1.6e-4 on another). Exact averaging of the gradients
#: is checked on its own, to 1e-6 (`test_gathered_losses_give_the_single_process_gradient`)
LATER_STEP_REL = 2e-3
#: images embedded by both processes: an odd count, so the shards differ in size
EXTRACT_SPEC, EXTRACT_N = "digits:test", 45


def cli_args(config: FinetuneConfig) -> list[str]:
    """``proxyfda finetune`` options giving ``config``."""
    values = {name: value for name, value in config.to_dict().items() if value is not None}
    values["reg_options"] = json.dumps(values["reg_options"])
    return [part for name, value in values.items() for part in (f"--{name.replace('_', '-')}", str(value))
            if not isinstance(value, bool)] + [f"--{'' if values['stochastic_layers'] else 'no-'}stochastic-layers"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, str]:
    """OUT of one two-process torchrun launch of the worker, and what it printed."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(ROOT / "tests" / "distributed_worker.py"), str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out, done.stdout


def train_records(run_dir: Path) -> list[dict]:
    from proxyfda.runs import Run

    return [r for r in Run.open(run_dir).records() if r["kind"] == "train"]


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_two_processes_train_as_one_on_the_same_global_batch(launched, tmp_path, method):
    from proxyfda.training import finetune

    out, _ = launched
    finetune(CONFIGS[method], tmp_path / method)
    one, two = train_records(tmp_path / method), train_records(out / method)
    assert [r["step"] for r in two] == [1, 2, 3]
    figures = [name for name in one[0] if name in ("loss", "task") or name.startswith("reg_")]
    assert set(figures) <= set(two[0]) and ("reg_fda" in figures) == (method != "naive")
    for single, distributed in zip(one, two):
        for name in figures:
            rel = FIRST_STEP_REL if single["step"] == 1 else LATER_STEP_REL
            assert distributed[name] == pytest.approx(single[name], rel=rel, abs=rel), (method, single["step"], name)


def test_gathered_losses_give_the_single_process_gradient(launched):
    out, _ = launched
    for rank in (0, 1):
        for name, check in json.loads((out / f"grad-{rank}.json").read_text()).items():
            assert check["scale"] > 1e-3, name  # a gradient that is there
            assert check["max_diff"] <= 1e-6 * max(1.0, check["scale"]), (rank, name, check)


def test_rank_zero_alone_writes_a_run_that_loads_and_records_its_world_size(launched):
    from proxyfda.encoders import create_encoder
    from proxyfda.runs import Run

    out, printed = launched
    assert printed.count("completed after 3 steps") == 1  # the CLIs' last lines, from rank 0 only
    assert printed.count("wrote ") == 1
    for method in CONFIGS:
        run = Run.open(out / method)
        assert run.status == "completed" and run.summary()["world_size"] == 2
        assert [r["step"] for r in run.records() if r["kind"] == "eval"] == [0, 3]
        assert run.probe_steps() == [0, 3]
    encoder = create_encoder(Run.open(out / "fda").spec)
    assert encoder.image_size == 32


def test_sharded_extraction_gives_one_process_features_in_order(launched):
    from proxyfda.data import load_images
    from proxyfda.encoders import create_encoder
    from proxyfda.features import embed

    out, _ = launched
    images = load_images(EXTRACT_SPEC, n=EXTRACT_N, seed=0)
    single = embed(create_encoder("efficientnet-lite0", image_size=32), images, batch_size=8)
    for name in ("embed-0", "embed-1", "cached", "served", "cli-embed"):
        features = np.load(out / f"{name}.npy")
        assert features.shape == single.shape
        np.testing.assert_allclose(features, single, rtol=1e-4, atol=1e-5, err_msg=name)
    assert len(list((out / "cache" / "features").glob("*.npy"))) == 1  # written once, by rank 0


# ---- without processes: the helpers' arithmetic and the errors a launch can meet ------------------

def test_shards_cover_the_rows_in_order(monkeypatch):
    from proxyfda import distributed as dist

    monkeypatch.setattr(dist, "world_size", lambda: 3)
    shards = [range(10)[dist.shard(10, r)] for r in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(range(2)[dist.shard(2, r)]) for r in range(3)] == [1, 1, 0]  # fewer rows than ranks


def test_one_process_gets_the_identity():
    import torch

    from proxyfda import distributed as dist

    x = torch.randn(4, 3)
    assert dist.gather_rows(x) is x and dist.world_size() == 1 and dist.is_main() and dist.shard(5) == slice(0, 5)
    assert dist.mean_over_ranks({"loss": 2.5}) == {"loss": 2.5} and dist.on_main(lambda a: a + 1, 1) == 2


def test_launch_errors_say_what_to_do(monkeypatch, tmp_path):
    from proxyfda import distributed as dist
    from proxyfda.errors import ProxyFDAError
    from proxyfda.training import check_batch_splits, finetune

    monkeypatch.setattr(dist, "world_size", lambda: 3)
    with pytest.raises(ProxyFDAError, match="batch of 16 images does not split evenly over 3 processes"):
        check_batch_splits(16)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ProxyFDAError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set; launch with"):
        dist.init_from_env()
    with pytest.raises(ProxyFDAError, match="SAFE trains in one process"):
        finetune(FinetuneConfig(method="safe", base_encoder="open_clip:RN50:none"), tmp_path / "safe")
