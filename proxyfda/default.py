"""The embedded default fine-tuned encoder: a short naive fine-tune of EfficientNet-Lite0 on MNIST.

It is built once per machine (about two minutes on two CPU cores) into the cache and reused; the
run directory's name carries a hash of its recipe (`proxyfda.runs.default_run_dir`), so changing the
recipe rebuilds it. The spec ``default-finetuned`` names it everywhere; the entry points (the CLI,
the app) build it first where it is needed, with `ensure_default_for`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from . import runs
from .encoders import names_default
from .runs import Callback, default_run_dir, default_run_ready
from .training import finetune


def ensure_default_finetuned(callback: Callback | None = None) -> Path:
    """The default fine-tuned run directory, fine-tuning it first if this machine has none.

    An interrupted build is replaced by a new one rather than used half-trained (`proxyfda.runs.RunWriter`
    builds it beside the old one and swaps it in); a build in progress in another process is a clear error.
    """
    run_dir = default_run_dir()
    if default_run_ready():
        return run_dir
    finetune(runs.DEFAULT_FINETUNE, run_dir, callback=callback, overwrite=True)
    return run_dir


def ensure_default_for(specs: Iterable[str], callback: Callback | None = None) -> None:
    """Build the default fine-tuned encoder first if any of ``specs`` names it."""
    if names_default(specs):
        ensure_default_finetuned(callback)
