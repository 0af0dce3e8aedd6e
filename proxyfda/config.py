"""The typed configs shared by the UI, the CLI and saved runs.

One dataclass per job; each reads and writes itself as JSON so a run directory records exactly
what produced it, and each field's default is the embedded offline default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ProxyFDAError

T = TypeVar("T", bound="JsonConfig")

#: kNN backends (proxyfda.knn); "auto" picks FAISS on a GPU when there is one, else exact torch blocks up
#: to knn.EXACT_MAX_N points and approximate FAISS HNSW above (announced, with its measured recall)
KNN_BACKENDS = ("auto", "torch", "faiss", "faiss-gpu", "faiss-hnsw")
#: how the two maps are placed (proxyfda.projection)
PROJECTION_METHODS = ("init", "independent", "aligned")

#: the spec of the default fine-tuned encoder, built once on first use (see proxyfda.default)
DEFAULT_FINETUNED = "default-finetuned"
DEFAULT_PRETRAINED = "efficientnet-lite0"

BN_MODES = ("frozen", "train")
SAMPLERS = ("auto", "balanced", "epoch")

#: the input resolutions (px) an encoder may be asked for. EfficientNet-Lite0 downsamples by 32; on 600
#: Fashion-MNIST images it gave all-zero features for 86 % of them at 8 px and 3 % at 16 px, and a 1-NN
#: accuracy of 0.11 / 0.23 / 0.54 / 0.67 / 0.76 at 8 / 16 / 20 / 32 / 64 px. open_clip towers take only
#: their own size (224 px and up). Above 1024 px one batch of 128 images alone needs 1.6 GB.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


def check_image_size(size: int, zero_means: str | None = "each encoder's own") -> None:
    """Refuse an input resolution outside [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE]; ``zero_means`` says what 0
    stands for where 0 is allowed (None: it is not)."""
    if size == 0 and zero_means:
        return
    whole = isinstance(size, numbers.Integral) and not isinstance(size, bool)
    if not whole or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        zero = f", or 0 for {zero_means}" if zero_means else ""
        why = (f" (the encoders downsample by {MIN_IMAGE_SIZE}: a smaller input is less than one cell of their "
               "last feature map, and many images then give all-zero features)" if whole and 0 < size < MIN_IMAGE_SIZE
               else "")
        raise ProxyFDAError(f"image size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} px{zero}, "
                            f"got {size!r}{why}")


#: generic photo prompts for CLIP zero-shot rows; ``{}`` is replaced by the class name
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
)
#: CLIP's learned temperature saturates at 100 in the released checkpoints
CLIP_LOGIT_SCALE = 100.0
#: SAFE's blend weights searched on validation data (0: original CLIP pooling, 1: the tuned one)
DEFAULT_BETA_GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))


def check_finite(values: dict[str, Any], label: str = "{}") -> None:
    """Refuse NaN and infinite numbers among ``values`` (and inside their lists): a non-finite learning
    rate or strength would train a run into NaN weights instead of failing with a sentence. ``label``
    formats a key into the name the message gives it."""
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, float) and not math.isfinite(item) for item in items):
            raise ProxyFDAError(f"{label.format(name)} must be a finite number, not {value!r} (NaN or infinity "
                                "would only train the weights into NaN); give a real value")


class JsonConfig:
    """Mixin: ``to_dict`` / ``from_dict`` / ``save`` / ``load`` for a config dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ProxyFDAError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls: type[T], path: Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DriftConfig(JsonConfig):
    """What the Drift Explorer and ``proxyfda drift`` compare, and how."""

    pretrained: str = DEFAULT_PRETRAINED
    finetuned: str = DEFAULT_FINETUNED
    data: str = "fashion-mnist:test"
    n: int = 2000  # images, class-balanced; 0 means all
    k: int = 10
    image_size: int = 64  # input resolution for both encoders; 0 means each encoder's own
    knn_backend: str = "auto"  # one of KNN_BACKENDS
    projection: str = "init"  # one of PROJECTION_METHODS
    seed: int = 0
    # a second fine-tuned encoder of the same base ("" for none): the three-way view compares what
    # each of the two fine-tunes kept of the pre-trained neighbourhoods
    compare: str = ""
    # a labels file ("" for the data's own classes): one class name or id per image of the whole set, in
    # its order (proxyfda.vectors.load_labels); with rows:N data (embedding files without images) the
    # only way to have classes
    labels: str = ""

    def __post_init__(self) -> None:
        # What can be checked without the images is checked here, once; k < N once the images are
        # loaded (proxyfda.drift.compute_drift).
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ProxyFDAError(f"k must be an integer of at least 1, got {self.k!r}")
        if self.n < 0:
            raise ProxyFDAError(f"n must be 0 (all images) or positive, got {self.n}")
        check_image_size(self.image_size)
        for name, options in (("knn_backend", KNN_BACKENDS), ("projection", PROJECTION_METHODS)):
            if getattr(self, name) not in options:
                raise ProxyFDAError(f"{name} must be one of {', '.join(map(repr, options))}, "
                                    f"got {getattr(self, name)!r}")


@dataclass(frozen=True)
class FinetuneConfig(JsonConfig):
    """One fine-tuning run. Saved as ``config.json`` in the run directory, with every default filled in.

    ``method`` names a row of the method table (proxyfda.methods). ``reg_options`` are keyword
    options of the method's regulariser (see proxyfda.losses, e.g. {"k": 8, "weight": 1.0} for fda),
    or of SAFE's fitting (the `SafeConfig` fields beyond steps/lr/batch size/seed), over the method's
    defaults. Fields left ``None`` take the method's own default (SAFE trains 200 steps at lr 1e-4 in
    batches of 32 without weight decay; the others 300 steps at lr 1e-3, batch 64, decay 0.01):
    ``proxyfda.methods.resolve_config`` fills them in.
    """

    method: str = "naive"
    reg_options: dict = field(default_factory=dict)
    base_encoder: str = DEFAULT_PRETRAINED
    data: str = "mnist:train"
    eval_data: str = "mnist:test"
    image_size: int = 64
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int = 10
    # "frozen" keeps BatchNorm in eval mode (running statistics fixed, affine weights trained);
    # "train" lets the statistics drift toward the fine-tuning data, a forgetting channel of its own.
    bn_mode: str = "frozen"
    # dropout, drop-path and drop-connect while fine-tuning. Off by default: the regularisers' cached
    # pre-trained targets come from eval mode, and with them on an unchanged encoder is already far
    # from its targets (EfficientNet-Lite0's drop-connect: cosine 0.92 on average, 0.75 at worst).
    stochastic_layers: bool = False
    eval_every: int = 50
    eval_size: int = 500
    # "balanced": m classes × n images with hard class mining (FDA's batches); "epoch": shuffled
    # epochs; "auto": the method's own choice (balanced for the methods that build a kNN graph
    # inside the batch).
    sampler: str = "auto"
    classes_per_batch: int = 16
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_finite(self.to_dict())
        if isinstance(self.reg_options, dict):
            check_finite(self.reg_options, "reg_options['{}']")
        if self.bn_mode not in BN_MODES:
            raise ProxyFDAError(f"bn_mode must be one of {', '.join(map(repr, BN_MODES))}, got '{self.bn_mode}'")
        check_image_size(self.image_size, zero_means=None)
        for name in ("steps", "batch_size", "eval_every", "eval_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ProxyFDAError(f"{name} must be at least 1, got {value}")
        if self.sampler not in SAMPLERS:
            raise ProxyFDAError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}, got '{self.sampler}'")
        if not isinstance(self.reg_options, dict):
            raise ProxyFDAError(f"reg_options must be a dict of regulariser options, got {self.reg_options!r}")
        if self.lr is not None and self.lr <= 0:
            raise ProxyFDAError(f"lr must be positive, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ProxyFDAError(f"weight_decay must be at least 0, got {self.weight_decay}")


#: the recipe of the embedded default fine-tuned encoder (proxyfda.default builds it once per machine)
DEFAULT_FINETUNE = FinetuneConfig()


@dataclass(frozen=True)
class SafeConfig(JsonConfig):
    """How SAFE (proxyfda.safe) trains the attention pooling and picks β."""

    steps: int = 200
    lr: float = 1e-4  # AdamW on pre-trained weights, cosine-decayed to 0
    weight_decay: float = 0.0  # decoupled decay would pull pre-trained weights to 0, not to CLIP's
    batch_size: int = 32
    beta_grid: tuple[float, ...] = DEFAULT_BETA_GRID
    label_smoothing: float = 0.1  # a few shots per class overfit fast
    seed: int = 0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    logit_scale: float = CLIP_LOGIT_SCALE
    cache_dense: bool = False  # also keep the dense maps on disk (keyed by weights and images)
    # share of the training images held out to choose β (a fine-tuning run reports accuracy on its
    # eval data, which β never saw)
    val_fraction: float = 0.2

    def __post_init__(self):
        # JSON gives lists back; the config stays hashable and comparable with tuples.
        object.__setattr__(self, "beta_grid", tuple(float(b) for b in self.beta_grid))
        object.__setattr__(self, "templates", tuple(self.templates))
        check_finite(self.to_dict())
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ProxyFDAError(f"SAFE needs steps >= 0, batch_size >= 1 and lr > 0; got steps={self.steps}, "
                                f"batch_size={self.batch_size}, lr={self.lr}")
        if not self.beta_grid or any(not 0.0 <= b <= 1.0 for b in self.beta_grid):
            raise ProxyFDAError(f"beta_grid must be a non-empty list of values in [0, 1], got {list(self.beta_grid)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ProxyFDAError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ProxyFDAError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
