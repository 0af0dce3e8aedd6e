"""WiSE-FT: interpolate the weights of a pre-trained and a fine-tuned copy of the same model, and
write the result as a run of its own (`wise_run`)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from .data import load_images
from .errors import ProxyFDAError
from .runs import WISE, Run, RunWriter, check_run_dir

if TYPE_CHECKING:
    import pandas as pd

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


def wise_run(run_dir: str | Path, alpha: float, out_dir: str | Path, overwrite: bool = False) -> Path:
    """WiSE-FT of a finished run: a new run directory whose encoder is (1−α)·θ0 + α·θ_ft.

    The head is the fine-tuned run's; ``wise.json`` records the source run and α. ``out_dir`` must be new
    or empty, or hold a run to replace with ``overwrite`` (checked before anything is loaded).
    """
    from .encoders import create_encoder

    check_run_dir(out_dir, overwrite)
    source = Run.open(run_dir)
    if source.method == "safe":
        raise ProxyFDAError("SAFE runs blend their pooling already (β); WiSE-FT applies to full fine-tunes")
    finetuned = create_encoder(source.spec)
    pretrained = create_encoder(source.config.base_encoder, image_size=finetuned.image_size)
    mixed = wise_ft(pretrained, finetuned, alpha)
    state = source.checkpoint_state()
    with RunWriter(out_dir, source.config, overwrite=overwrite) as run:
        run.save_checkpoint({"encoder": mixed.state_dict(), "head": state["head"], "step": state["step"]})
        run.save_json(WISE, {"source": str(source.path), "alpha": alpha})
        return run.finish("completed", state["step"], None).run_dir


def wise_curve(run_dir: str | Path, alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
               progress: Callable[[str, float], None] | None = None) -> "pd.DataFrame":
    """How a run's task accuracy and drift move along WiSE-FT's line from θ0 (α = 0) to the run (α = 1).

    For each α: the accuracy of the interpolated encoder with the run's head on the run's eval set, and
    the probe set's overlap@10, CKNNA and CKA with the pre-trained features (`training.probe_scores`,
    what the run logged at its evaluations). Nothing is written.
    """
    import pandas as pd

    from .encoders import create_encoder
    from .training import choose_probe, eval_pass, probe_scores

    source = Run.open(run_dir)
    if source.method == "safe":
        raise ProxyFDAError("SAFE runs blend their pooling already (β); WiSE-FT applies to full fine-tunes")
    say = progress or (lambda message, fraction: None)
    finetuned = create_encoder(source.spec)
    pretrained = create_encoder(source.config.base_encoder, image_size=finetuned.image_size)
    head_state = source.checkpoint_state()["head"]
    head = nn.Linear(*reversed(head_state["weight"].shape))
    head.load_state_dict(head_state)
    eval_set = load_images(source.config.eval_data, n=source.config.eval_size, seed=source.config.seed)
    if source.probe_steps():
        rows, pre = source.probe_rows(), source.probe_features(0)  # what the run's own curves used
    else:  # a run from before probe snapshots: the probe its training would have drawn
        rows = choose_probe(eval_set, source.config.seed)
        pre = eval_pass(pretrained, head, eval_set).features[rows]
    result = []
    for i, alpha in enumerate(sorted(alphas)):
        say(f"α = {alpha:g}", i / len(alphas))
        found = eval_pass(wise_ft(pretrained, finetuned, float(alpha)), head, eval_set)
        scores = probe_scores(pre, found.features[rows], eval_set.subset(rows))
        result.append({"alpha": float(alpha), "accuracy": found.accuracy, **scores})
    say("done", 1.0)
    return pd.DataFrame(result)
