"""The app's cached steps from a DriftConfig to images, features, report and maps.

Models and image sets are shared resources (read-only here: a model being fine-tuned is never
one of these); features and maps are also cached on disk by the library, keyed by content, so a
restart of the app finds them again. Long steps report into Streamlit progress elements.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import streamlit as st

from proxyfda import projection
from proxyfda.config import DriftConfig
from proxyfda.data import ImageSet, load_images
from proxyfda.drift import DriftReport, cached_drift, compare_features, drift_features
from proxyfda.encoders import names_default, vectors_source
from proxyfda.runs import default_run_ready
from proxyfda.vectors import file_stamp

from app import guard


@st.cache_resource(show_spinner=False, max_entries=6)
def get_encoder(spec: str, image_size: int | None):
    """A shared, read-only encoder (never one being fine-tuned) on the fastest device."""
    from proxyfda.device import default_device
    from proxyfda.encoders import create_encoder

    return create_encoder(spec, image_size=image_size, device=default_device())


@st.cache_resource(show_spinner=False, max_entries=6)
def get_images(data: str, n: int, seed: int, labels: str = "", labels_stamp: str = "") -> ImageSet:
    """The images of a request, once per (data, n, seed, labels file and its `file_stamp`): a folder's files
    are checked to lie inside the app's folders here, not on every rerun."""
    images = load_images(data, n=n or None, seed=seed, labels=labels)
    guard.check_images(images)
    return images


def features_key(config: DriftConfig, images: ImageSet, second: str) -> tuple:
    """What names the feature arrays of ``config.pretrained`` and ``second`` over ``images`` in the page's
    in-memory caches: the specs, images and resolution, and each embedding file's size and modification
    time (a file rewritten under the same name is read again)."""
    specs = (config.pretrained, second)
    stamps = tuple(file_stamp(source) for source in map(vectors_source, specs) if source)
    return (*specs, images.fingerprint, config.image_size, *stamps)


#: drift reports kept in memory (each holds two [N, k] graphs and per-point scores: 20 MB at N=100k)
REPORTS_IN_MEMORY = 8
_reports_lock = threading.Lock()


@st.cache_resource(show_spinner=False)
def _reports() -> "OrderedDict[tuple, DriftReport]":
    """The process's recent drift reports, newest last (shared by every session, like `get_encoder`)."""
    return OrderedDict()


def get_report(x_a: np.ndarray, x_b: np.ndarray, key: tuple, labels: np.ndarray, class_names: list[str],
               k: int, backend: str) -> DriftReport:
    """Drift report (also cached on disk by content); in memory, the feature arrays are identified by
    ``key`` (their specs and data) instead of hashed on every rerun. When it has to be computed, a progress
    bar follows `compute_drift`'s stages: at 100k points its rank passes take minutes."""
    memo = _reports()
    wanted = (key, hashlib.blake2b(np.ascontiguousarray(labels).tobytes(), digest_size=16).hexdigest(),
              tuple(class_names), k, backend)
    with _reports_lock:  # sessions run on their own threads
        if wanted in memo:
            memo.move_to_end(wanted)
            return memo[wanted]
    placeholder = st.empty()
    report = cached_drift(x_a, x_b, labels, class_names, k, backend=backend,
                          progress=lambda message, fraction: placeholder.progress(min(fraction, 1.0), text=message))
    placeholder.empty()
    with _reports_lock:
        memo[wanted] = report
        while len(memo) > REPORTS_IN_MEMORY:
            memo.popitem(last=False)
    return report


def ensure_default_encoder() -> None:
    """Build the default fine-tuned encoder on first launch, showing its progress (never an empty page)."""
    if default_run_ready():
        return
    from proxyfda.default import ensure_default_finetuned
    from proxyfda.methods import resolve_config
    from proxyfda.runs import DEFAULT_FINETUNE

    total = resolve_config(DEFAULT_FINETUNE).steps
    with st.status("First launch: fine-tuning the default encoder (EfficientNet-Lite0 on MNIST digits, "
                   f"{total} steps, about two minutes on a CPU). It is cached for every later start.",
                   expanded=True) as status:
        bar = st.progress(0.0, text="starting")

        def callback(record: dict) -> None:
            if record["kind"] == "train":
                bar.progress(record["step"] / total, text=f"step {record['step']}/{total} · loss {record['loss']:.3f}")
            elif record["step"] > 0:  # step 0 scores the untrained head
                st.write(f"step {record['step']}: digit accuracy {record['accuracy']:.1%}")

        ensure_default_finetuned(callback=callback)
        status.update(label="Default fine-tuned encoder ready", state="complete", expanded=False)


def load_features(config: DriftConfig, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """Both encoders' features through the library's drift route, with a progress bar while embedding."""
    return _with_progress(config, [config.pretrained, config.finetuned], drift_features, images)


def load_compare_features(config: DriftConfig, images: ImageSet) -> np.ndarray:
    """The second fine-tuned encoder's features (``config.compare``), with a progress bar while embedding."""
    return _with_progress(config, [config.compare], compare_features, images)


def _with_progress(config: DriftConfig, specs: list[str], route, images: ImageSet):
    if names_default(specs):
        ensure_default_encoder()
    placeholder = st.empty()

    def progress(message: str, fraction: float) -> None:
        placeholder.progress(min(fraction, 1.0), text=message)

    features = route(config, images, progress=progress, make_encoder=get_encoder)
    placeholder.empty()
    return features


# ---------------------------------------------------------------------------------------------
# maps: computed on a worker thread so the rest of the page shows while UMAP compiles and fits


class ProjectionJobs:
    """Background UMAP jobs keyed by their inputs; the worker never calls Streamlit."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="umap")
        self.jobs: dict[tuple, Future] = {}
        self.messages: dict[tuple, str] = {}
        self.lock = threading.Lock()

    def warm_up(self) -> None:
        """Start compiling UMAP's numba kernels now, while the user looks at other things."""
        with self.lock:
            if "warm-up" not in self.jobs:
                self.jobs["warm-up"] = self.pool.submit(projection.warm_up)

    def submit(self, key: tuple, x_a: np.ndarray, x_b: np.ndarray, method: str, seed: int) -> Future:
        """The two maps of a drift report (`projection.project_pair`)."""
        return self.submit_call(key, projection.project_pair, x_a, x_b, method=method, seed=seed)

    def submit_call(self, key: tuple, fit, *args, **kwargs) -> Future:
        """``fit(*args, progress=..., **kwargs)`` as the job ``key``, unless that job exists (a failed one
        is tried again); its progress messages land in ``messages[key]``."""
        with self.lock:
            job = self.jobs.get(key)
            if job is None or (job.done() and job.exception() is not None):
                self.messages[key] = "queued"

                def say(message: str) -> None:
                    self.messages[key] = message

                job = self.pool.submit(fit, *args, progress=say, **kwargs)
                self.jobs[key] = job
            return job


@st.cache_resource(show_spinner=False)
def projection_jobs() -> ProjectionJobs:
    return ProjectionJobs()
