"""WiSE-FT: interpolate the weights of a pre-trained and a fine-tuned copy of the same model."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .errors import ProxyFDAError

#: how many differing keys an error message names
_SHOW_KEYS = 5


def wise_ft(pretrained: nn.Module, finetuned: nn.Module, alpha: float) -> nn.Module:
    """A new module with θ = (1−α)·θ0 + α·θ_ft for every floating-point parameter and buffer.

    Integer buffers (e.g. BatchNorm's num_batches_tracked) are taken from the fine-tuned model. The
    weights go in through ``load_state_dict`` and are read back to check they are what was asked.
    α = 0 gives θ0 and α = 1 gives θ_ft exactly (``torch.lerp`` is exact at both ends).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0.0 <= alpha <= 1.0:
        raise ProxyFDAError(f"alpha must be a number in [0, 1] (0: pre-trained, 1: fine-tuned), got {alpha!r}")
    state0, state1 = pretrained.state_dict(), finetuned.state_dict()
    _check_same_architecture(state0, state1)
    mixed = {}
    for name, ft in state1.items():
        start = state0[name].to(device=ft.device, dtype=ft.dtype)
        mixed[name] = torch.lerp(start, ft, float(alpha)) if ft.is_floating_point() else ft.clone()
    model = copy.deepcopy(finetuned)
    model.load_state_dict(mixed, strict=True)
    if hasattr(model, "invalidate_hash"):  # a proxyfda Encoder caches the hash of its weights
        model.invalidate_hash()
    wrong = [name for name, value in model.state_dict().items() if not torch.equal(value, mixed[name])]
    if wrong:
        raise ProxyFDAError(f"after load_state_dict, {len(wrong)} tensor(s) do not hold the interpolated weights "
                            f"({', '.join(wrong[:_SHOW_KEYS])}); the model may override load_state_dict or share "
                            "storage between entries")
    return model


def _check_same_architecture(state0: dict, state1: dict) -> None:
    only0 = [k for k in state0 if k not in state1]
    only1 = [k for k in state1 if k not in state0]
    if only0 or only1:
        raise ProxyFDAError("the models have different architectures: keys only in the pre-trained one: "
                            f"{', '.join(only0[:_SHOW_KEYS]) or 'none'}; only in the fine-tuned one: "
                            f"{', '.join(only1[:_SHOW_KEYS]) or 'none'}. Interpolate two copies of the same model")
    shapes = [f"{k} {tuple(state0[k].shape)} vs {tuple(state1[k].shape)}" for k in state0
              if state0[k].shape != state1[k].shape]
    if shapes:
        raise ProxyFDAError(f"the models have different layer shapes: {'; '.join(shapes[:_SHOW_KEYS])}. "
                            "Interpolate two copies of the same architecture")
