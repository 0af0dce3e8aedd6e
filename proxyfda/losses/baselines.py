"""Point-wise baselines: L2-SP (distance in weights) and LDIFS (distance in features)."""

from __future__ import annotations

from typing import Any, Mapping

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
    """α · mean over the batch of ‖x − x̂‖², x and x̂ the L2-normalised fine-tuned and pre-trained
    features (= 2 − 2 cos). Ours taps one layer (the features passed in), the original several."""

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = check_number(alpha, "alpha", low=0.0)

    def compute(self, feats: torch.Tensor, feats_pre: torch.Tensor) -> dict[str, Any]:
        x, x_pre = check_feature_pair(feats, feats_pre, min_batch=1)
        distance_sq = (x - x_pre).square().sum(1).mean()
        self.record("cos_mean", (x * x_pre).sum(1).mean())
        return {"loss": self.alpha * distance_sq, "distance_sq": distance_sq}
