"""What checking and fingerprinting an image folder costs: the bundled textile photos (2,000 JPEGs of
250 × 250 px) and a generated folder of 2,000 PNGs of 64 × 64 px.

Listing (`proxyfda.data.load_folder`) with three checks of each file, side by side: PIL's ``verify()``
only (what let cut and corrupt files through), a full decode, and what proxyfda does (a decode at
1/8 scale for JPEGs, a full one otherwise). Then the content fingerprint the feature cache is keyed
on: first in the process (every file read and hashed) and again (digests remembered).

    python benchmarks/bench_listing.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxyfda import data, paths  # noqa: E402


def _opened(path: Path, action: Callable) -> str | None:
    """None when ``action`` on the opened image succeeds, else the name of what it raised."""
    try:
        with Image.open(path) as image:
            action(image)
    except Exception as exc:
        return type(exc).__name__
    return None


def verify_only(path: Path) -> str | None:
    """The check before: the suffix and PIL's ``verify()``."""
    if path.suffix.lower() not in data.IMAGE_SUFFIXES:
        return "not an image"
    return _opened(path, lambda image: image.verify())


def full_decode(path: Path) -> str | None:
    """Every pixel at full scale."""
    return _opened(path, lambda image: image.load())


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def png_folder(root: Path, count: int = 2000, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def measure(name: str, root: Path, repeats: int) -> None:
    checks = {"verify() only": verify_only, "full decode": full_decode, "proxyfda's check": data._image_problem}
    own = data._image_problem
    try:
        for label, check in checks.items():
            data._image_problem = check
            seconds = median_seconds(lambda: data.load_folder(root), repeats)
            print(f"{name:<10} listing, {label:<17} {seconds:6.2f} s")
    finally:
        data._image_problem = own
    images = data.load_folder(root)
    paths._digests.clear()
    start = time.perf_counter()
    _ = images.fingerprint
    first = time.perf_counter() - start
    images._fingerprint = None
    again = median_seconds(lambda: (images.__setattr__("_fingerprint", None), images.fingerprint), repeats)
    print(f"{name:<10} fingerprint of {len(images)} files: first in the process {first:.2f} s, again {again:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import conformal_clip_data

    measure("textiles", Path(conformal_clip_data.textile_simulated_root()), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        measure("png 64 px", png_folder(Path(tmp)), args.repeats)


if __name__ == "__main__":
    main()
