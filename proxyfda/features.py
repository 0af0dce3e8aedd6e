"""Batched feature extraction with a disk cache that can never return stale features.

The cache key is built from the encoder's weight hash, its preprocessing and the images'
content fingerprint, so a changed checkpoint, resolution or image set misses the cache.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .data import ImageSet
from .errors import ProxyFDAError
from .paths import atomic_write_bytes, cache_dir

if TYPE_CHECKING:
    from .backbones import Encoder

#: progress(done, total) — called after every batch
Progress = Callable[[int, int], None]

FEATURE_VERSION = "pooled-v1"  # bump when what `extract_features` computes changes


def feature_cache_key(encoder: Encoder, images: ImageSet) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (FEATURE_VERSION, encoder.weights_hash(), encoder.preprocessing_key(), images.fingerprint):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def feature_cache_path(encoder: Encoder, images: ImageSet, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "features" / f"{feature_cache_key(encoder, images)}.npy"


# Features found from an encoder's *source* (a content key of its spec and weight files, see
# proxyfda.encoders.spec_fingerprint) without building it: an index from that key to the
# weights-keyed cache file above, written whenever an encoder built from the source is embedded.


def _source_index(source: str, images: ImageSet, root: Path | None) -> Path:
    digest = hashlib.blake2b(digest_size=16)
    for part in (FEATURE_VERSION, source, images.fingerprint):
        digest.update(part.encode() + b"\0")
    return (root or cache_dir()) / "features" / "sources" / f"{digest.hexdigest()}.txt"


def features_from_source(source: str | None, images: ImageSet, root: Path | None = None) -> np.ndarray | None:
    """The cached features of ``images`` under the encoder with content key ``source``, or None."""
    if source is None:
        return None
    index = _source_index(source, images, root)
    if not index.exists():
        return None
    path = (root or cache_dir()) / "features" / f"{index.read_text().strip()}.npy"
    return np.load(path) if path.exists() else None


def remember_source(source: str | None, encoder: Encoder, images: ImageSet, root: Path | None = None) -> None:
    """Record that ``encoder`` was built from ``source``, so `features_from_source` finds its features
    (on rank 0 alone under ``torchrun``, like the features themselves)."""
    from . import distributed as dist

    if source is not None and dist.is_main():
        key = feature_cache_key(encoder, images)
        atomic_write_bytes(_source_index(source, images, root), lambda handle: handle.write(key.encode()))


def embed(encoder: Encoder, images: ImageSet, batch_size: int = 128, progress: Progress | None = None) -> np.ndarray:
    """Pooled features [N, D] float32 of every image, computed in batches on the encoder's device.

    The next batch is decoded and resized on a worker thread while the current one runs
    through the encoder, so the loader does not stall the forward pass. Non-finite features are an
    error naming the encoder, never a result (nor a cache entry). Under ``torchrun`` each process embeds
    its contiguous shard of the images and every process gets all the features, in order
    (`proxyfda.distributed`); ``progress`` is then called on rank 0 only.
    """
    import torch

    from . import distributed as dist

    dist.init_from_env()
    encoder.eval()
    device = encoder.device
    n = len(images)
    mine = range(n)[dist.shard(n)]
    out = np.empty((len(mine), encoder.feature_dim), dtype=np.float32)
    starts = list(range(mine.start, mine.stop, batch_size))

    def load(start: int) -> torch.Tensor:
        return images.batch(np.arange(start, min(start + batch_size, mine.stop)), encoder.image_size)

    with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        pending = pool.submit(load, starts[0]) if starts else None
        for i, start in enumerate(starts):
            pixels = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(load, starts[i + 1])
            feats = encoder(pixels.to(device, non_blocking=True))
            out[start - mine.start:start - mine.start + len(pixels)] = feats.float().cpu().numpy()
            if progress and dist.is_main():  # rank 0's share, scaled to the whole set
                progress((start - mine.start + len(pixels)) * n // len(mine), n)
    out = dist.gather_shards(out, n)
    _check_finite_rows(out, encoder)
    return out


def _check_finite_rows(features: np.ndarray, encoder: Encoder) -> None:
    bad = int((~np.isfinite(features)).any(axis=1).sum())
    if bad:
        name = getattr(encoder, "spec", None) or encoder.name
        raise ProxyFDAError(f"the encoder '{name}' gave non-finite features (NaN or infinity) for {bad} of "
                            f"{len(features)} images, so they are not written; its weights are broken (a run "
                            "that diverged?): use another encoder, or train the run again with a lower --lr")


def extract_features(encoder: Encoder, images: ImageSet, batch_size: int = 128, progress: Progress | None = None,
                     use_cache: bool = True, root: Path | None = None) -> np.ndarray:
    """`embed`, served from the disk cache when the same encoder weights saw the same images.

    Under ``torchrun`` rank 0 alone reads and writes the cache (its answer reaches every rank), so the
    ranks never disagree about a hit and the file is written once.
    """
    from . import distributed as dist

    dist.init_from_env()
    path = feature_cache_path(encoder, images, root)
    features = dist.on_main(lambda: np.load(path) if use_cache and path.exists() else None)
    if features is not None:
        if progress:
            progress(len(images), len(images))
        return features
    features = embed(encoder, images, batch_size=batch_size, progress=progress)
    if use_cache:
        dist.on_main(atomic_write_bytes, path, lambda handle: np.save(handle, features))
    return features
