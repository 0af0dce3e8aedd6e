"""The typed configs shared by the UI, the CLI and saved runs.

One dataclass per job; each reads and writes itself as JSON so a run directory records exactly
what produced it, and each field's default is the embedded offline default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ProxyFDAError

T = TypeVar("T", bound="JsonConfig")

#: the spec of the default fine-tuned encoder, built once on first use (see proxyfda.default)
DEFAULT_FINETUNED = "default-finetuned"
DEFAULT_PRETRAINED = "efficientnet-lite0"


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
    knn_backend: str = "auto"
    projection: str = "init"  # see proxyfda.projection.PROJECTION_METHODS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ProxyFDAError(f"k must be at least 1, got {self.k}")
        if self.n < 0:
            raise ProxyFDAError(f"n must be 0 (all images) or positive, got {self.n}")


@dataclass(frozen=True)
class FinetuneConfig(JsonConfig):
    """One fine-tuning run. Saved as ``config.json`` in the run directory.

    ``method`` is one of proxyfda.training.METHODS; ``reg_options`` are keyword options of its
    regulariser (see proxyfda.losses, e.g. {"k": 8, "weight": 1.0} for fda), over the method's
    defaults in proxyfda.training.METHOD_DEFAULTS.
    """

    method: str = "naive"
    reg_options: dict = field(default_factory=dict)
    base_encoder: str = DEFAULT_PRETRAINED
    data: str = "mnist:train"
    eval_data: str = "mnist:test"
    image_size: int = 64
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    # "frozen" keeps BatchNorm in eval mode (running statistics fixed, affine weights trained);
    # "train" lets the statistics drift toward the fine-tuning data, a forgetting channel of its own.
    bn_mode: str = "frozen"
    eval_every: int = 50
    eval_size: int = 500
    # "balanced": m classes × n images with hard class mining (FDA's batches); "epoch": shuffled
    # epochs; "auto": balanced for the methods that build a kNN graph inside the batch.
    sampler: str = "auto"
    classes_per_batch: int = 16
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.bn_mode not in ("frozen", "train"):
            raise ProxyFDAError(f"bn_mode must be 'frozen' or 'train', got '{self.bn_mode}'")
        for name in ("steps", "batch_size", "eval_every", "eval_size", "image_size"):
            if getattr(self, name) < 1:
                raise ProxyFDAError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sampler not in ("auto", "balanced", "epoch"):
            raise ProxyFDAError(f"sampler must be 'auto', 'balanced' or 'epoch', got '{self.sampler}'")
        if not isinstance(self.reg_options, dict):
            raise ProxyFDAError(f"reg_options must be a dict of regulariser options, got {self.reg_options!r}")
        if self.lr <= 0:
            raise ProxyFDAError(f"lr must be positive, got {self.lr}")
