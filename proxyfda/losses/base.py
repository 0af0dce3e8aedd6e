"""What every regulariser shares: recorded statistics, named loss terms, and a registry by name.

A regulariser is a `RecordingLoss`: its forward validates the inputs, computes named terms and keeps
small detached copies of what it saw in ``self.records`` (reset every call) for a debugger to plot.
`proxyfda.losses.build_regularizer(name, **options)` is how the training loop and the UI create one.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ProxyFDAError
from ..registry import Registry

#: name -> factory(**options) returning a RecordingLoss
REGULARIZERS = Registry()


class RecordingLoss(nn.Module):
    """Base class: ``forward(...)`` returns the scalar ``"loss"``, or all named terms with
    ``return_terms=True`` (``{"loss": total, "<term>": ...}``), and fills ``self.records``.

    Subclasses implement ``compute(...) -> dict[str, Tensor]`` (with a scalar ``"loss"`` entry; other
    terms are scalars too, or per-sample vectors such as FDA's ``"anchor_loss"``) and may call
    ``self.record(name, value)`` for extra statistics. ``input_kind`` tells a training loop what to
    pass: ``"features"`` -> ``forward(feats, feats_pre)``, ``"model"`` -> ``forward(encoder)``,
    ``"taps"`` -> ``forward(taps, taps_pre)`` (internal activations, `Encoder.capture_taps`).
    Set ``record_stats = False`` to skip recording (no device-to-host copies); set
    ``record_detail = True`` to also keep per-anchor and per-pair tensors where a loss has them
    ([B, B]-sized and larger: for a debugger looking at one batch, not for training).

    ``global_batch`` marks a loss that relates the images of a batch to each other (FDA's kNN graph):
    a distributed training run gives it every rank's features (`proxyfda.distributed.gather_rows`),
    whereas per-image losses take each rank's own share and DDP's averaging makes their mean global.
    """

    input_kind: ClassVar[str] = "features"
    global_batch: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, Any] = {}
        self.record_stats = True
        self.record_detail = False

    def forward(self, *args: Any, return_terms: bool = False, **kwargs: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        self.records = {}
        terms = self.compute(*args, **kwargs)
        for name, value in terms.items():
            self.record(name, value)
        return terms if return_terms else terms["loss"]

    def compute(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def record_details(self, **values: Any) -> None:
        """`record` each value, only when ``record_detail`` is on (and recording at all)."""
        if self.record_detail:
            for name, value in values.items():
                self.record(name, value)

    def diagnostics(self) -> dict[str, float]:
        """Scalars summarising the last call's records that a training run logs at its evaluations
        (none by default); needs ``record_stats``."""
        return {}

    def record(self, name: str, value: Any) -> None:
        """Keep ``value`` for inspection: 0-d tensors become floats, other tensors detached CPU copies."""
        if not self.record_stats:
            return
        if isinstance(value, torch.Tensor):
            value = value.detach()
            value = value.item() if value.ndim == 0 else value.to("cpu", copy=True)
        self.records[name] = value

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options the constructor accepts (what `build_regularizer` may pass)."""
        return keyword_names(cls.__init__)


register_regularizer = REGULARIZERS.register


def keyword_names(function: Callable) -> list[str]:
    params = inspect.signature(function).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# ---- shared input checks -------------------------------------------------------------------------

def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, in float32 or wider (features may arrive in half precision)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return F.normalize(x, dim=-1, eps=1e-8)


def check_feature_pair(feats: Any, feats_pre: Any, min_batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated, L2-normalised (fine-tuned, pre-trained) features; the pre-trained ones detached."""
    for name, value in (("feats", feats), ("feats_pre", feats_pre)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim != 2:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ProxyFDAError(f"{name} must be a float tensor [batch, dim], got {shape}; pass the pooled "
                                "features of the batch, one row per image")
        if not bool(torch.isfinite(value.detach().sum())):  # NaN/inf anywhere propagates: one cheap reduction
            raise ProxyFDAError(f"{name} contains NaN or inf; the encoder diverged or the inputs are broken "
                                "(lower the learning rate, check the images)")
    if feats.shape != feats_pre.shape:
        raise ProxyFDAError(f"feats {tuple(feats.shape)} and feats_pre {tuple(feats_pre.shape)} must have the same "
                            "shape: the same images, in the same order, through both encoders")
    if feats.shape[0] < min_batch:
        raise ProxyFDAError(f"the batch has {feats.shape[0]} image(s); this loss needs at least {min_batch}")
    return unit_rows(feats), unit_rows(feats_pre.detach())


def check_number(value: Any, name: str, *, low: float | None = None, low_open: bool = False,
                 high: float | None = None) -> float:
    """``value`` as a finite float in the given range, or a ProxyFDAError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProxyFDAError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ProxyFDAError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ProxyFDAError(f"{name} must be <= {high}, got {value}")
    return float(value)


def check_int(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ProxyFDAError(f"{name} must be an integer >= {low}, got {value!r}")
    return value

