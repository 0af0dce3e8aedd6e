"""WiSE-FT: interpolate the weights of a pre-trained and a fine-tuned copy of the same model, and
write the result as a run of its own (`wise_run`)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from .errors import ProxyFDAError
from .runs import WISE, Run, RunWriter

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


def wise_run(run_dir: str | Path, alpha: float, out_dir: str | Path) -> Path:
    """WiSE-FT of a finished run: a new run directory whose encoder is (1−α)·θ0 + α·θ_ft.

    The head is the fine-tuned run's; ``wise.json`` records the source run and α.
    """
    from .encoders import create_encoder

    source = Run.open(run_dir)
    if source.method == "safe":
        raise ProxyFDAError("SAFE runs blend their pooling already (β); WiSE-FT applies to full fine-tunes")
    finetuned = create_encoder(source.spec)
    pretrained = create_encoder(source.config.base_encoder, image_size=finetuned.image_size)
    mixed = wise_ft(pretrained, finetuned, alpha)
    state = source.checkpoint_state()
    with RunWriter(out_dir, source.config) as run:
        run.save_checkpoint({"encoder": mixed.state_dict(), "head": state["head"], "step": state["step"]})
        run.save_json(WISE, {"source": str(source.path), "alpha": alpha})
        return run.finish("completed", state["step"], None).run_dir
