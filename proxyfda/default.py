"""The embedded default fine-tuned encoder: a short naive fine-tune of EfficientNet-Lite0 on MNIST.

It is built once per machine (about two minutes on two CPU cores) into the cache and reused;
the run directory's name carries a hash of its config, so changing the recipe rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .config import DEFAULT_FINETUNED, FinetuneConfig
from .paths import cache_dir
from .training import Callback, finetune

DEFAULT_FINETUNE = FinetuneConfig()


def default_run_dir(config: FinetuneConfig | None = None) -> Path:
    config = config or DEFAULT_FINETUNE
    digest = hashlib.blake2b(json.dumps(config.to_dict(), sort_keys=True).encode(), digest_size=6).hexdigest()
    return cache_dir() / "runs" / f"default-finetuned-{digest}"


def default_finetuned_ready(config: FinetuneConfig | None = None) -> bool:
    summary = default_run_dir(config) / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") == "completed"


def ensure_default_finetuned(callback: Callback | None = None, config: FinetuneConfig | None = None) -> Path:
    """The default fine-tuned run directory, fine-tuning it first if this machine has none.

    An interrupted build is discarded and started again rather than used half-trained.
    """
    config = config or DEFAULT_FINETUNE
    run_dir = default_run_dir(config)
    if default_finetuned_ready(config):
        return run_dir
    partial = run_dir.with_name(run_dir.name + ".building")
    shutil.rmtree(partial, ignore_errors=True)
    finetune(config, partial, callback=callback)
    shutil.rmtree(run_dir, ignore_errors=True)
    partial.rename(run_dir)
    return run_dir


def resolve_finetuned_spec(spec: str) -> str:
    """Map the ``default-finetuned`` alias to its run directory spec; other specs pass through."""
    return f"run:{default_run_dir()}" if spec.strip() == DEFAULT_FINETUNED else spec
