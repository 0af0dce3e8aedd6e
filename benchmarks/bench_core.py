"""The core's performance figures, measured side by side in one run.

1. kNN graph: every backend as a ratio to one plain BLAS product of the same shape
   (target: auto ≤ 1.2× at N=50k, d=512, k=10) — see bench_knn.py.
2. Feature extraction throughput as a ratio to the encoder's bare forward pass over the same
   images, already in memory as one tensor (target ≥ 0.9).
3. The app's time to the first drift map in a real browser: with warm caches (a fresh server
   process whose disk caches are filled; target ≤ 5 s) and, with --cold, from an empty cache
   (the default fine-tune, embeddings and the UMAP compile included).

    python benchmarks/bench_core.py [--cold] [--sections knn,features,app]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the browser helper lives with the tests

import bench_knn  # noqa: E402
from bench_knn import median_seconds  # noqa: E402


def bench_features(n: int, batch_size: int, repeats: int) -> None:
    from proxyfda.data import load_images
    from proxyfda.encoders import create_encoder
    from proxyfda.features import embed

    images = load_images("fashion-mnist:test", n=n)
    encoder = create_encoder("efficientnet-lite0", image_size=64)
    pixels = images.batch(np.arange(len(images)), encoder.image_size)

    @torch.inference_mode()
    def bare_forward() -> None:
        for start in range(0, len(pixels), batch_size):
            encoder(pixels[start:start + batch_size])

    bare_forward()  # warm-up: first calls pay allocator and kernel selection costs
    bare, _ = median_seconds(bare_forward, repeats)
    full, _ = median_seconds(lambda: embed(encoder, images, batch_size=batch_size), repeats)
    print(f"\nfeature extraction, EfficientNet-Lite0 @64 px, N={len(images)}, batch {batch_size}, "
          f"{repeats} repeats (median)")
    print(f"{'path':<34}{'median s':>10}{'img/s':>10}")
    print(f"{'bare forward (tensor in memory)':<34}{bare:>10.2f}{len(images) / bare:>10.0f}")
    print(f"{'extract (load+resize+forward)':<34}{full:>10.2f}{len(images) / full:>10.0f}")
    print(f"throughput ratio extract / bare = {bare / full:.3f}  (target ≥ 0.9)")


def bench_app(cold: bool, repeats: int) -> None:
    from browser import app_server, chromium_page, seconds_to_maps
    from proxyfda.cli import main as cli

    print("\napp: time from opening the page to both drift maps drawn (Chromium, Playwright)")
    cli(["prepare"])  # fill the disk caches the warm measurements rely on
    fresh_server, same_server = [], []
    for _ in range(repeats):
        with app_server() as url, chromium_page() as page:
            fresh_server.append(seconds_to_maps(page, url))
            same_server.append(seconds_to_maps(page, url))
    print(f"{'warm disk cache, new server process':<44}{statistics.median(fresh_server):>8.2f} s  "
          f"(runs: {', '.join(f'{s:.2f}' for s in fresh_server)})  target ≤ 5 s")
    print(f"{'warm disk cache, page reloaded':<44}{statistics.median(same_server):>8.2f} s  "
          f"(runs: {', '.join(f'{s:.2f}' for s in same_server)})")
    if cold:
        with tempfile.TemporaryDirectory() as empty:
            with app_server(env={"PROXYFDA_CACHE": empty}) as url, chromium_page() as page:
                seconds = seconds_to_maps(page, url, timeout_ms=1_200_000)
        print(f"{'cold: empty cache (fine-tune+embed+UMAP)':<44}{seconds:>8.2f} s  (one run)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="knn,features,app")
    parser.add_argument("--cold", action="store_true", help="also time a first launch on an empty cache")
    parser.add_argument("--knn-n", type=int, default=50_000)
    parser.add_argument("--features-n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}, "
          f"cpu count {os.cpu_count()}; {time.strftime('%Y-%m-%d %H:%M')}")
    status = 0
    if "knn" in sections:
        status |= bench_knn.main(["--n", str(args.knn_n), "--repeats", str(args.repeats)])
    if "features" in sections:
        bench_features(args.features_n, 128, args.repeats)
    if "app" in sections:
        bench_app(args.cold, args.repeats)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
