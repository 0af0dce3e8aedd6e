"""Shared fixtures: a tiny real fine-tuning run, and every folder the library reads isolated per session.

The session's cache, runs and data folders are new temporary folders, whatever the environment says, so
no test sees what an earlier test session, a user or a mutation-testing worker left behind; the browser
test builds the real default there once. Torch uses a fixed number of threads, so float reductions run
in the same order on every machine with at least that many cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

#: the library's own folders and limits, read from the environment: a test session starts from none of them
for name in ("PROXYFDA_CACHE", "PROXYFDA_RUNS", "PROXYFDA_DATA", "PROXYFDA_ALLOW", "PROXYFDA_MAX_IMAGES"):
    os.environ.pop(name, None)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxyfda.config import FinetuneConfig  # noqa: E402

#: a real fine-tune, small enough for a test: sklearn digits at 32 px, a few steps
TINY_FINETUNE = FinetuneConfig(data="digits:train", eval_data="digits:test", image_size=32, steps=4,
                               batch_size=16, eval_every=2, eval_size=60, warmup_steps=1, lr=3e-3)

#: the held-out probe set of the quick benchmarks' tests: they check the report's plumbing and arithmetic, not a
#: finding, so 600 images (200 probe test images) do, at half the probe time of the benchmarks' own 1,500
QUICK_PROBE = {"fashion-mnist:test": 600}

# hypothesis draws the same examples on every run and keeps none between runs (so no test depends on an earlier
# one); `pytest --hypothesis-profile=explore` searches afresh, with more examples
settings.register_profile("default", max_examples=25, derandomize=True, database=None, deadline=None)
settings.register_profile("explore", max_examples=500, deadline=None)
# a mutation-testing run (mutmut sets MUTANT_UNDER_TEST) reruns these tests for thousands of mutants
settings.register_profile("mutants", max_examples=8, derandomize=True, database=None, deadline=None)
MUTATION_RUN = "MUTANT_UNDER_TEST" in os.environ
settings.load_profile("mutants" if MUTATION_RUN else "default")
if MUTATION_RUN:  # imported by the first optimiser step (5 s): once in mutmut's fork server, not once per mutant
    import torch._dynamo  # noqa: F401

#: torch's intra-op threads in tests (the machines that run the suite have two cores; a mutation run keeps both
#: busy with one test process each)
TORCH_THREADS = 1 if MUTATION_RUN else 2


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(TORCH_THREADS)
    root = tmp_path_factory.mktemp("proxyfda-cache")
    os.environ["PROXYFDA_CACHE"] = str(root)
    os.environ["PROXYFDA_DATA"] = str(tmp_path_factory.mktemp("proxyfda-data"))
    # the app reads only its allowed folders (app.guard): tests keep their runs and image folders in tmp_path
    os.environ["PROXYFDA_ALLOW"] = str(tmp_path_factory.getbasetemp())
    return root


@pytest.fixture
def runs_dir(monkeypatch, tmp_path) -> Path:
    """A test's own runs folder (PROXYFDA_RUNS), for pages that list or start runs."""
    monkeypatch.setenv("PROXYFDA_RUNS", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A completed run directory written by proxyfda's own fine-tuning loop."""
    from proxyfda.training import finetune

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = finetune(TINY_FINETUNE, run_dir)
    assert result.status == "completed"
    return run_dir
