"""One process of the distributed test (tests/test_distributed.py), started by ``torchrun``: a test
helper, not a test. Every rank runs all of it; what the test compares is written under OUT.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT

* ``grad-<rank>.json``: for FDA, Proxy-FDA and the one-layer LDIFS, the largest difference between the
  gradients a DDP step over this rank's share gives (the graph losses over the gathered batch) and the
  single-process gradient over the whole batch, with the gradients' own scale.
* ``naive/`` (through the CLI, ``proxyfda finetune``), ``fda/``, ``proxy-fda/``: short runs whose
  losses the test compares with one process's (`CONFIGS` in the test module).
* ``embed-<rank>.npy``, ``cached.npy``, ``served.npy``: features of ``EXTRACT_SPEC`` by sharded `embed`
  (on each rank), and by `extract_features` missing, then hitting, a cache in ``OUT/cache``;
  ``cli-embed.npy`` by ``proxyfda embed``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from proxyfda import distributed as dist  # noqa: E402
from proxyfda.cli import main as cli_main  # noqa: E402
from proxyfda.data import load_images  # noqa: E402
from proxyfda.encoders import create_encoder  # noqa: E402
from proxyfda.features import embed, extract_features  # noqa: E402
from proxyfda.losses import build_regularizer  # noqa: E402
from proxyfda.training import EncoderWithHead, finetune  # noqa: E402

from test_distributed import CONFIGS, EXTRACT_N, EXTRACT_SPEC, cli_args  # noqa: E402

GRADIENT_LOSSES = {"fda": {"k": 5}, "proxy-fda": {"k": 5}, "ldifs-final": {}}


def gradient_check(name: str, options: dict) -> dict:
    """One step of a tiny encoder + head, CE plus the loss ``name``: DDP over this rank's share against one
    process over the whole batch (both on every rank, from the same seed)."""
    generator = torch.Generator().manual_seed(0)
    pixels, pre = torch.randn(16, 12, generator=generator), torch.randn(16, 8, generator=generator)
    labels = torch.arange(16) % 4
    torch.manual_seed(1)
    net = EncoderWithHead(nn.Sequential(nn.Linear(12, 8), nn.Tanh()), nn.Linear(8, 4))
    reference, loss_ref, loss = copy.deepcopy(net), build_regularizer(name, **options), build_regularizer(name, **options)

    feats, logits = reference(pixels)  # one process, the whole batch
    terms = loss_ref(feats, pre, return_terms=True)
    (F.cross_entropy(logits, labels) + terms["loss"] + terms.get("generator", 0.0)).backward()

    model, mine = dist.wrap(net), dist.shard(16)  # this rank's share; DDP averages over the ranks
    feats, logits = model(pixels[mine])
    inputs = (dist.gather_rows(feats), pre) if loss.global_batch else (feats, pre[mine])
    terms = loss(*inputs, return_terms=True)
    (F.cross_entropy(logits, labels[mine]) + terms["loss"] + terms.get("generator", 0.0)).backward()
    dist.average_gradients(loss.parameters())

    pairs = list(zip(reference.parameters(), net.parameters())) + list(zip(loss_ref.parameters(), loss.parameters()))
    return {"max_diff": max(float((a.grad - b.grad).abs().max()) for a, b in pairs),
            "scale": max(float(a.grad.abs().max()) for a, _ in pairs), "parameters": len(pairs)}


def main(out: Path) -> None:
    dist.init_from_env()
    grads = {name: gradient_check(name, options) for name, options in GRADIENT_LOSSES.items()}
    (out / f"grad-{dist.rank()}.json").write_text(json.dumps(grads))

    for method, config in CONFIGS.items():
        if method == "naive":  # the command line, as a user launches it
            code = cli_main(["finetune", *cli_args(config), "--out", str(out / method)])
            assert code == 0, f"proxyfda finetune exited with {code}"
        else:
            finetune(config, out / method)

    images = load_images(EXTRACT_SPEC, n=EXTRACT_N, seed=0)
    encoder = create_encoder("efficientnet-lite0", image_size=32)
    np.save(out / f"embed-{dist.rank()}.npy", embed(encoder, images, batch_size=8))  # every rank gets them all
    cached = extract_features(encoder, images, batch_size=8, root=out / "cache")
    served = extract_features(encoder, images, batch_size=8, root=out / "cache")
    if dist.is_main():
        np.save(out / "cached.npy", cached)
        np.save(out / "served.npy", served)
    code = cli_main(["embed", "--encoder", "efficientnet-lite0", "--data", EXTRACT_SPEC, "--n", str(EXTRACT_N),
                     "--image-size", "32", "--out", str(out / "cli-embed.npy")])
    assert code == 0, f"proxyfda embed exited with {code}"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
