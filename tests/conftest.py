"""Shared fixtures: a tiny real fine-tuning run, and caches isolated per test session.

The session's cache lives in a temporary folder unless PROXYFDA_CACHE is set, so a test run never
mixes with a user's cache; the browser test builds the real default there once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxyfda.config import FinetuneConfig  # noqa: E402

#: a real fine-tune, small enough for a test: sklearn digits at 32 px, a few steps
TINY_FINETUNE = FinetuneConfig(data="digits:train", eval_data="digits:test", image_size=32, steps=4,
                               batch_size=16, eval_every=2, eval_size=60, warmup_steps=1, lr=3e-3)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    root = Path(os.environ.get("PROXYFDA_CACHE") or tmp_path_factory.mktemp("proxyfda-cache"))
    os.environ["PROXYFDA_CACHE"] = str(root)
    # the app reads only its allowed folders (app.guard): tests keep their runs and image folders in tmp_path
    os.environ["PROXYFDA_ALLOW"] = str(tmp_path_factory.getbasetemp())
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A completed run directory written by proxyfda's own fine-tuning loop."""
    from proxyfda.training import finetune

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = finetune(TINY_FINETUNE, run_dir)
    assert result.status == "completed"
    return run_dir
