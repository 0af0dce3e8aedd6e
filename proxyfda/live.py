"""Fine-tunes started from the app: a queue served by one background worker, one run directory per job.

The app's Live fine-tune page submits a `FinetuneConfig`; a worker thread runs `proxyfda.training.finetune`
on it (the same function as the CLI, so the same speed) and never touches Streamlit. The page polls the
job: its state, its records so far, its place in the queue, an ETA. Each job writes a fresh run
directory of its own, named by time, method and a random suffix, so two browser tabs never share
state or files. One run trains at a time (two would only share the same cores); more wait in order,
up to ``max_waiting``, and beyond that a submission is refused with a message saying why.

States: ``queued`` → ``running`` → ``completed`` | ``stopped`` (Stop pressed: the run keeps a loadable
checkpoint) | ``diverged`` (a non-finite loss: it keeps its last finite checkpoint) | ``failed`` (the
error is kept as a sentence, e.g. another process writing the same run directory); a queued job that
is stopped becomes ``cancelled`` and never writes anything.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import FinetuneConfig
from .errors import ProxyFDAError
from .runs import Run, runs_root
from .training import check_config, finetune

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FINISHED = ("completed", "stopped", "diverged", "failed", "cancelled")


@dataclass
class LiveJob:
    """One submitted fine-tune. Its worker appends to ``records``; the page only reads."""

    id: str
    config: FinetuneConfig  # resolved: every method default filled in
    run_dir: Path
    owner: str  # who started it (the app: a browser session); jobs are listed per owner
    state: str = "queued"
    error: str | None = None
    records: list[dict] = field(default_factory=list)
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _first_step_at: float | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.state in FINISHED

    @property
    def total_steps(self) -> int:
        return int(self.config.steps)

    @property
    def steps_done(self) -> int:
        """The last step the worker has logged a training record for."""
        train = [r["step"] for r in list(self.records) if r.get("kind") == "train"]
        return train[-1] if train else 0

    def stop(self) -> None:
        """End the run at its next step (it keeps a checkpoint), or cancel it while it waits."""
        self._stop.set()

    def eta_seconds(self) -> float | None:
        """Seconds left at the pace since the first step (evaluations included; loading the model and data
        before it is not a pace), or None until two steps are done."""
        done = self.steps_done
        if self.state != "running" or done < 2 or self._first_step_at is None:
            return None
        return (time.time() - self._first_step_at) / (done - 1) * (self.total_steps - done)

    def record(self, record: dict) -> None:
        """The worker's callback: keep the record (and when the first step ended, for the ETA)."""
        if self._first_step_at is None and record.get("kind") == "train":
            self._first_step_at = time.time()
        self.records.append(record)

    def history(self) -> tuple[list[dict], list[dict]]:
        """(train records, eval records) so far; copies, safe to read while the worker appends."""
        records = list(self.records)
        return [r for r in records if r.get("kind") == "train"], [r for r in records if r.get("kind") == "eval"]

    def run(self) -> Run:
        """The run directory read back (a clear error before the worker has written it)."""
        return Run.open(self.run_dir)


class LiveTrainer:
    """The queue and its worker. One per process (the app keeps it with ``st.cache_resource``)."""

    def __init__(self, root: str | Path | None = None, max_waiting: int = 3) -> None:
        self.root = Path(root) if root is not None else runs_root()
        self.max_waiting = max_waiting
        self._jobs: dict[str, LiveJob] = {}
        self._waiting: deque[LiveJob] = deque()
        self._lock = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, config: FinetuneConfig, owner: str) -> LiveJob:
        """Queue ``config`` for ``owner``. The config is checked here, so a bad option is a clear error now,
        not a failed job later; a full queue is refused with how many are waiting."""
        config = check_config(config)
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                raise ProxyFDAError(f"the machine is busy: one run is training and {len(self._waiting)} are waiting "
                                    f"(at most {self.max_waiting}); start this one when a run has finished, "
                                    "or stop one of yours")
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{config.method}-{secrets.token_hex(3)}"
            job = LiveJob(job_id, config, self.root / job_id, owner)
            self._jobs[job_id] = job
            self._waiting.append(job)
            self._lock.notify_all()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="proxyfda-live", daemon=True)
                self._worker.start()
        return job

    def job(self, job_id: str) -> LiveJob | None:
        return self._jobs.get(job_id)

    def jobs(self, owner: str) -> list[LiveJob]:
        """``owner``'s jobs, oldest first."""
        return [job for job in list(self._jobs.values()) if job.owner == owner]

    def place(self, job: LiveJob) -> int | None:
        """1 for the next to run, 2 after it, …; None when the job is not waiting."""
        with self._lock:
            return next((i + 1 for i, waiting in enumerate(self._waiting) if waiting is job), None)

    def stop(self, job: LiveJob) -> None:
        """Stop ``job``: a running one ends at its next step, a waiting one is cancelled at once."""
        with self._lock:
            job.stop()
            if job in self._waiting:
                self._waiting.remove(job)
                job.state, job.finished = "cancelled", time.time()
            self._lock.notify_all()

    def wait(self, job: LiveJob, timeout: float | None = None) -> bool:
        """Block until ``job`` has finished (True) or ``timeout`` seconds passed (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: job.done, timeout)

    def _serve(self) -> None:
        while True:
            with self._lock:
                if not self._lock.wait_for(lambda: self._waiting, timeout=60.0):
                    self._worker = None  # idle: the next submission starts a new worker
                    return
                job = self._waiting.popleft()
                job.state, job.started = "running", time.time()
            self._train(job)
            with self._lock:
                job.finished = time.time()
                self._lock.notify_all()

    @staticmethod
    def _train(job: LiveJob) -> None:
        try:
            result = finetune(job.config, job.run_dir, callback=job.record, stop=job._stop)
            job.state = result.status
        except ProxyFDAError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a bug, not bad input: keep the app alive and the traceback in the log
            log.exception("live fine-tune %s failed", job.id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc} (the server log has the traceback)"


def runs_table(runs: list[Run]) -> "pd.DataFrame":
    """The runs side by side, one row each: what made it (method with its preset, strength, steps) and
    what it measured (task accuracy, and the probe's overlap@10 and CKNNA with the pre-trained space at
    its last evaluation; mean ΔLP and the OT and L2 distances once its forgetting was measured), its
    status and wall time. ``spec`` loads it as an encoder."""
    import pandas as pd

    from .methods import METHODS, method_label

    rows = []
    for run in runs:
        summary, wise = run.summary(), run.wise()
        method = METHODS.get(run.method)
        evals = [r for r in run.records() if r.get("kind") == "eval"]
        last = evals[-1] if evals and evals[-1]["step"] > 0 else {}
        if wise:
            label, strength = "wise-ft", wise["alpha"]
        else:
            label = method_label(run.config) if method else run.method
            strength = run.config.reg_options.get(method.strength) if method and method.strength else None
        forgetting = run.forgetting() or {}
        rows.append({"run": run.name, "method": label, "strength": strength, "status": run.status,
                     "steps": summary.get("steps_done"), "task accuracy": summary.get("final_eval_accuracy"),
                     "mean ΔLP": forgetting.get("delta_LP", {}).get("mean"),
                     "overlap@10": last.get("probe_overlap"), "CKNNA": last.get("probe_cknna"),
                     "OT distance": forgetting.get("otdd", {}).get("mean"),
                     "L2 distance": forgetting.get("l2", {}).get("mean"),
                     "seconds": summary.get("seconds"), "spec": run.spec})
    return pd.DataFrame(rows, columns=["run", "method", "strength", "status", "steps", "task accuracy", "mean ΔLP",
                                       "overlap@10", "CKNNA", "OT distance", "L2 distance", "seconds", "spec"])
