"""Point-wise baselines: L2-SP (distance in weights) and LDIFS (distance in features)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ProxyFDAError
from .base import RecordingLoss, check_feature_pair, check_number, register_regularizer


@register_regularizer("l2sp")
class L2SPLoss(RecordingLoss):
    """α‖θ − θ0‖² over the encoder's parameters that have a pre-trained value.

    reference_state: θ0, e.g. ``encoder.state_dict()`` before fine-tuning (copied here). forward(encoder)
    sums over the encoder's parameters whose names are in it; buffers are not parameters and are
    skipped, and so are new parameters without a pre-trained value (recorded as ``unregularized``).
    """

    input_kind = "model"

    def __init__(self, reference_state: Mapping[str, torch.Tensor] | nn.Module, alpha: float = 0.5) -> None:
        super().__init__()
        if isinstance(reference_state, nn.Module):
            reference_state = reference_state.state_dict()
        if not isinstance(reference_state, Mapping) or not reference_state:
            raise ProxyFDAError("reference_state must be a non-empty state dict of the pre-trained encoder "
                                "(encoder.state_dict() taken before fine-tuning)")
        self.alpha = check_number(alpha, "alpha", low=0.0)
        self.reference = {name: value.detach().clone() for name, value in reference_state.items()
                          if isinstance(value, torch.Tensor) and value.is_floating_point()}

    def compute(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not isinstance(model, nn.Module):
            raise ProxyFDAError(f"L2-SP takes the encoder being fine-tuned (an nn.Module), got {type(model).__name__}")
        pairs, unregularized = [], 0
        for name, param in model.named_parameters():
            reference = self.reference.get(name)
            if reference is None:
                unregularized += 1
                continue
            if reference.shape != param.shape:
                raise ProxyFDAError(f"parameter {name!r} has shape {tuple(param.shape)} but its pre-trained value has "
                                    f"{tuple(reference.shape)}: the reference belongs to another architecture")
            if reference.device != param.device or reference.dtype != param.dtype:
                reference = self.reference[name] = reference.to(device=param.device, dtype=param.dtype)
            pairs.append((param, reference))
        if not pairs:
            raise ProxyFDAError("none of the model's parameter names appear in reference_state: pass the state dict "
                                "of this same encoder (not of a wrapper with prefixed names, e.g. 'encoder.')")
        distance_sq = torch.stack([(param - reference).square().sum() for param, reference in pairs]).sum()
        self.record("regularized", len(pairs))
        self.record("unregularized", unregularized)
        return {"loss": self.alpha * distance_sq, "distance_sq": distance_sq}


@register_regularizer("ldifs")
class LDIFSLoss(RecordingLoss):
    """LDIFS as its authors define it: α · Σ over tapped layers of the per-element mean of
    (fine-tuned activation − pre-trained activation)², α = 10.

    forward(taps, taps_pre): two equal-length lists of activations from the same internal layers
    (`Encoder.capture_taps`), the fine-tuned ones with gradient, the pre-trained ones from a frozen
    copy of the starting encoder. Records each tap's distance (``tap_distances``).
    """

    input_kind = "taps"

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = check_number(alpha, "alpha", low=0.0)

    def compute(self, taps: Sequence[torch.Tensor], taps_pre: Sequence[torch.Tensor]) -> dict[str, Any]:
        if not isinstance(taps, (list, tuple)) or not isinstance(taps_pre, (list, tuple)):
            raise ProxyFDAError("LDIFS takes two lists of activations of the same tapped layers "
                                "(Encoder.capture_taps), not feature tensors; for final features use 'ldifs-final'")
        if not taps or len(taps) != len(taps_pre):
            raise ProxyFDAError(f"LDIFS compares the same tapped layers of both encoders; got {len(taps)} fine-tuned "
                                f"and {len(taps_pre)} pre-trained activations (the encoder may declare no taps: "
                                "use the one-layer variant, method 'ldifs-final')")
        per_tap = []
        for i, (tap, tap_pre) in enumerate(zip(taps, taps_pre)):
            if tap.shape != tap_pre.shape:
                raise ProxyFDAError(f"tap {i}: fine-tuned activation {tuple(tap.shape)} vs pre-trained "
                                    f"{tuple(tap_pre.shape)}; both must come from the same layer and batch")
            per_tap.append((tap.float() - tap_pre.detach().float()).square().mean())
        distances = torch.stack(per_tap)
        self.record("tap_distances", distances)
        distance = distances.sum()
        return {"loss": self.alpha * distance, "distance": distance}


@register_regularizer("ldifs-final")
class LDIFSFinalLoss(RecordingLoss):
    """This project's one-layer variant of LDIFS: α · mean over the batch of ‖x − x̂‖², x and x̂ the
    L2-normalised final fine-tuned and pre-trained features (= 2 − 2 cos). Cheaper (the pre-trained
    features are cached) and scale-free, but a different strength and shape of constraint than LDIFS."""

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = check_number(alpha, "alpha", low=0.0)

    def compute(self, feats: torch.Tensor, feats_pre: torch.Tensor) -> dict[str, Any]:
        x, x_pre = check_feature_pair(feats, feats_pre, min_batch=1)
        distance_sq = (x - x_pre).square().sum(1).mean()
        self.record("cos_mean", (x * x_pre).sum(1).mean())
        return {"loss": self.alpha * distance_sq, "distance_sq": distance_sq}
