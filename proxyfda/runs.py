"""The run directory: one folder per fine-tuning run, and the only code that knows its layout.

=================  =================================================================================
``config.json``    the `FinetuneConfig` that made the run, every method default filled in
``history.jsonl``  one JSON record per logged train step (``"kind": "train"``) or evaluation (``"eval"``)
``checkpoint.pt``  ``{"encoder", "head", "step"}``, written atomically: a run killed mid-write keeps
                   the previous checkpoint loadable
``safe.pt``        what a SAFE run saves instead (`proxyfda.safe_encoder.save_safe`)
``wise.json``      a WiSE-FT run only: the run it interpolates and α
``probe/``         the feature space's own history: ``rows.json`` names the probe images (rows of the
                   run's eval set), ``step-NNNNNN.npy`` their features (float16) at every evaluation,
                   step 0 being the pre-trained encoder
``summary.json``   ``status`` (running, completed, stopped), the final figures and the wall time of
                   the writing (``seconds``)
=================  =================================================================================

A run whose forgetting was measured (`proxyfda.forgetting.forgetting_report`) also keeps
``forgetting.json``: A_LP, ΔLP per held-out set, the OT and L2 distances, and the sets and seed used.

`RunWriter` writes a run (the training loop, SAFE, WiSE-FT), `Run` reads one back and `list_runs`
finds the runs under a folder. A run loads as an encoder from its spec ``run:<dir>`` (`Run.spec`),
resolved by `proxyfda.encoders.create_encoder`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import DEFAULT_FINETUNE, FinetuneConfig
from .errors import ProxyFDAError
from .paths import atomic_write_bytes, atomic_write_text, cache_dir

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .data import ImageSet

CONFIG = "config.json"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint.pt"
SAFE_RESULT = "safe.pt"
WISE = "wise.json"
FORGETTING = "forgetting.json"
SUMMARY = "summary.json"
PROBE = "probe"
PROBE_ROWS = "rows.json"

#: callback(record): called with every history record as it is written
Callback = Callable[[dict], None]


@dataclass
class RunResult:
    """What a finished (or stopped) run reports back to its caller."""

    run_dir: Path
    status: str  # "completed" or "stopped"
    steps_done: int
    final_eval_accuracy: float | None


class RunWriter:
    """Writes one run directory: the config first, history records as they come, checkpoints
    atomically, and the summary last. Use as a context manager; `finish` records the outcome.

    Until `finish`, ``summary.json`` says ``"status": "running"``, so a reader can tell an unfinished
    run from a finished one.
    """

    def __init__(self, run_dir: str | Path, config: FinetuneConfig, callback: Callback | None = None):
        self.path = Path(run_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.callback = callback
        self._started = time.perf_counter()
        atomic_write_text(self.path / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
        self._write_summary({"status": "running"})
        self._history = (self.path / HISTORY).open("w")

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def log(self, record: dict) -> None:
        """Append one record to the history (flushed at once) and pass it to the callback."""
        self._history.write(json.dumps(record) + "\n")
        self._history.flush()
        if self.callback:
            self.callback(record)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """``checkpoint.pt`` = ``state`` (tensors and plain values), replaced atomically."""
        import torch

        atomic_write_bytes(self.path / CHECKPOINT, lambda handle: torch.save(state, handle))

    def file(self, name: str) -> Path:
        """Where this run keeps the file ``name`` (one of this module's names, e.g. `SAFE_RESULT`)."""
        return self.path / name

    def save_json(self, name: str, value: dict) -> None:
        atomic_write_text(self.path / name, json.dumps(value, indent=2) + "\n")

    def save_probe_rows(self, rows: "np.ndarray") -> None:
        """Which rows of the run's eval set form the probe set whose features every evaluation keeps."""
        (self.path / PROBE).mkdir(exist_ok=True)
        atomic_write_text(self.path / PROBE / PROBE_ROWS, json.dumps([int(r) for r in rows]) + "\n")

    def save_probe(self, step: int, features: "np.ndarray") -> None:
        """The probe set's features at ``step`` (float16: a 500 × 1280 snapshot is 1.3 MB)."""
        import numpy as np

        (self.path / PROBE).mkdir(exist_ok=True)
        atomic_write_bytes(self.path / PROBE / f"step-{step:06d}.npy",
                           lambda handle: np.save(handle, np.asarray(features, dtype=np.float16)))

    def finish(self, status: str, steps_done: int, final_eval_accuracy: float | None) -> RunResult:
        """Close the history and write the summary: the run is now complete (or stopped) on disk."""
        self.close()
        self._write_summary({"status": status, "steps_done": steps_done, "final_eval_accuracy": final_eval_accuracy,
                             "seconds": round(time.perf_counter() - self._started, 3)})
        return RunResult(self.path, status, steps_done, final_eval_accuracy)

    def close(self) -> None:
        if not self._history.closed:
            self._history.close()

    def _write_summary(self, summary: dict) -> None:
        self.save_json(SUMMARY, summary)


@dataclass(frozen=True)
class Run:
    """A run directory read back: its config, summary, history and checkpoints."""

    path: Path
    config: FinetuneConfig

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        """Read the run at ``run_dir``, or a clear error when it is not one."""
        path = Path(run_dir).expanduser()
        config_path = path / CONFIG
        if not config_path.exists():
            raise ProxyFDAError(f"'{path}' is not a proxyfda run directory (no {CONFIG}); "
                                "runs are written by `proxyfda finetune --out DIR`")
        try:
            values = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ProxyFDAError(f"{config_path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
                                "the run directory is damaged") from exc
        return cls(path, FinetuneConfig.from_dict(values))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def spec(self) -> str:
        """The encoder spec of this run, for `proxyfda.encoders.create_encoder`."""
        return f"run:{self.path}"

    @property
    def method(self) -> str:
        return self.config.method

    def summary(self) -> dict:
        """``summary.json``; empty for a run written before summaries existed."""
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def status(self) -> str:
        return self.summary().get("status", "unknown")

    def records(self) -> list[dict]:
        """Every history record, in order."""
        path = self.path / HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def history(self) -> "pd.DataFrame":
        """The history as a table: one row per record, a column per field (``kind`` tells train from eval)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.records())

    def checkpoints(self) -> list[Path]:
        """The weight files this run has written (``checkpoint.pt``, or ``safe.pt`` for SAFE)."""
        return [self.path / name for name in (CHECKPOINT, SAFE_RESULT) if (self.path / name).exists()]

    def checkpoint_state(self) -> dict:
        """``checkpoint.pt`` read back safely, or a clear error when the run has none."""
        from .backbones import read_checkpoint

        path = self.path / CHECKPOINT
        if not path.exists():
            raise ProxyFDAError(f"run '{self.path}' has no {CHECKPOINT} yet: it was stopped before its first "
                                "checkpoint, or is still running")
        state = read_checkpoint(path)
        if "encoder" not in state:
            raise ProxyFDAError(f"{path} is not a proxyfda run checkpoint (no 'encoder' entry)")
        return state

    @property
    def safe_result(self) -> Path:
        """Where a SAFE run keeps its result (a clear error when it has none)."""
        path = self.path / SAFE_RESULT
        if not path.exists():
            raise ProxyFDAError(f"SAFE run '{self.path}' has no {SAFE_RESULT}: it did not finish")
        return path

    def probe_steps(self) -> list[int]:
        """The steps with a probe snapshot, ascending (0 is the pre-trained encoder); empty for runs that
        kept none (SAFE, WiSE-FT, runs written before snapshots existed)."""
        folder = self.path / PROBE
        names = (re.fullmatch(r"step-(\d+)\.npy", p.name) for p in folder.iterdir()) if folder.is_dir() else ()
        return sorted(int(m.group(1)) for m in names if m)

    def probe_features(self, step: int) -> "np.ndarray":
        """The probe set's features at ``step`` as float32, or a clear error naming the steps there are."""
        import numpy as np

        path = self.path / PROBE / f"step-{step:06d}.npy"
        if not path.exists():
            raise ProxyFDAError(f"run '{self.path}' has no probe snapshot at step {step}; it has "
                                f"{self.probe_steps() or 'none'}")
        return np.load(path).astype(np.float32)

    def probe_images(self) -> "ImageSet":
        """The probe images: the run's eval set (as the run loaded it) at the rows in ``probe/rows.json``."""
        from .data import load_images

        images = load_images(self.config.eval_data, n=self.config.eval_size, seed=self.config.seed)
        return images.subset(self.probe_rows())

    def probe_rows(self) -> list[int]:
        """Which rows of the run's eval set (``eval_data``, ``eval_size``, ``seed``) form its probe set."""
        path = self.path / PROBE / PROBE_ROWS
        if not path.exists():
            raise ProxyFDAError(f"run '{self.path}' kept no probe set (no {PROBE}/{PROBE_ROWS})")
        return json.loads(path.read_text())

    def wise(self) -> dict | None:
        """For a WiSE-FT run, ``{"source": run dir, "alpha": α}``; None otherwise."""
        path = self.path / WISE
        return json.loads(path.read_text()) if path.exists() else None

    def forgetting(self) -> dict | None:
        """The run's last forgetting measurement (`save_forgetting`), or None if it was never measured."""
        path = self.path / FORGETTING
        return json.loads(path.read_text()) if path.exists() else None

    def save_forgetting(self, measurement: dict) -> None:
        """Keep a forgetting measurement with the run (replacing an earlier one)."""
        atomic_write_text(self.path / FORGETTING, json.dumps(measurement, indent=2) + "\n")


def list_runs(root: str | Path) -> list[Run]:
    """The runs directly under ``root`` (folders with a ``config.json``), sorted by name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    return [Run.open(path) for path in sorted(root.iterdir()) if (path / CONFIG).is_file()]


def runs_root() -> Path:
    """The folder the app starts runs in and lists them from: ``$PROXYFDA_RUNS``, else the cache's
    ``runs`` folder (where the embedded default fine-tuned run lives too)."""
    chosen = os.environ.get("PROXYFDA_RUNS")
    return Path(chosen).expanduser() if chosen else cache_dir() / "runs"


# ---------------------------------------------------------------------------------------------
# the embedded default fine-tuned run (built by proxyfda.default)


def default_run_dir(config: FinetuneConfig | None = None) -> Path:
    """Where the default fine-tuned run lives: the cache, under a name that hashes its recipe."""
    config = config or DEFAULT_FINETUNE
    digest = hashlib.blake2b(json.dumps(config.to_dict(), sort_keys=True).encode(), digest_size=6).hexdigest()
    return cache_dir() / "runs" / f"default-finetuned-{digest}"  # not runs_root(): it belongs to the cache


def default_run_ready(config: FinetuneConfig | None = None) -> bool:
    """Whether the default fine-tuned run has been built on this machine and completed."""
    run_dir = default_run_dir(config)
    return (run_dir / CONFIG).exists() and Run.open(run_dir).status == "completed"
