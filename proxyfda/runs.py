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
``summary.json``   ``status``, the final figures and the wall time of the writing (``seconds``)
``.lock``          present while a process writes the run: it holds an exclusive ``flock`` on it and
                   its pid is inside. The OS drops the lock when the process ends, however it ends
=================  =================================================================================

A run's status (`Run.status`), written to ``summary.json`` from the first moment: ``running``, then
``completed``, ``stopped`` (asked to stop; its last checkpoint is where it stopped) or ``diverged``
(a non-finite loss or weights: it stopped there, and its checkpoint is the last finite one). A run
whose summary still says ``running`` while no process holds its lock reads as ``interrupted`` (killed,
or ended by an error). Using a run that did not complete (``run:<dir>`` as an encoder, forgetting,
the app) warns with `IncompleteRunWarning`, the one mechanism for it; the CLI prints these as
``proxyfda: warning: ...``.

Only one process writes a run directory at a time: `RunWriter` (and `Run.save_forgetting`) take its
lock first, and a second writer fails at once naming the first one's pid. `RunWriter` refuses a
folder that is not empty unless told to ``overwrite`` a run there; it then builds the new run in a
hidden sibling folder (``.<name>.new-<random>``) and swaps it into place when it has finished, so
the old run stays whole until then. The swap is two renames (the old run aside to ``.<name>.old-…``, the
new one to its name): a failing second rename puts the old run back, and a writer killed between the
two leaves the old run aside, which the next reader (`Run.open`, `list_runs`, a new writer) puts back. A run in a new (or empty) folder is written in place, where it
can be watched while it trains. Temporary files (``.*.tmp``, from atomic writes) found in a folder
nobody holds the lock of are left by a killed writer: opening the run, to read or to write, removes
them, and a new writer removes the hidden folders of an abandoned overwrite.

A run whose forgetting was measured (`proxyfda.forgetting.forgetting_report`) also keeps
``forgetting.json``: A_LP, ΔLP per held-out set, the OT and L2 distances, and the sets and seed used.

`RunWriter` writes a run (the training loop, SAFE, WiSE-FT), `Run` reads one back and `list_runs`
finds the runs under a folder. A run loads as an encoder from its spec ``run:<dir>`` (`Run.spec`),
resolved by `proxyfda.encoders.create_encoder`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import DEFAULT_FINETUNE, FinetuneConfig
from .errors import ProxyFDAError
from .paths import atomic_write_bytes, atomic_write_text, cache_dir, check_writable

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
LOCK = ".lock"

RUNNING, COMPLETED, STOPPED, DIVERGED, INTERRUPTED = "running", "completed", "stopped", "diverged", "interrupted"
#: a writer that finds the lock taken tries again this often, this far apart: a reader cleaning
#: temporaries holds it for a moment, a real writer for the whole run
LOCK_ATTEMPTS, LOCK_RETRY_SECONDS = 5, 0.05

#: callback(record): called with every history record as it is written
Callback = Callable[[dict], None]


class IncompleteRunWarning(UserWarning):
    """A run that did not complete (stopped, diverged, interrupted or still running) is being used."""


@dataclass
class RunResult:
    """What a finished (or stopped) run reports back to its caller."""

    run_dir: Path
    status: str  # "completed", "stopped" or "diverged" (non-finite at step steps_done + 1)
    steps_done: int
    final_eval_accuracy: float | None


# ---------------------------------------------------------------------------------------------
# who writes a run directory: an exclusive flock on its lock file


def _read_pid(fd: int) -> int:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else 0


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a releasing writer removes its lock file)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _busy_message(run_dir: Path, pid: int) -> str:
    who = f"pid {pid}" if pid else "pid not yet recorded"
    return (f"run directory {run_dir} is being written by another process ({who}); wait for it to finish, "
            "stop it, or choose another output folder")


def writer_pid(run_dir: str | Path, attempts: int = 1) -> int | None:
    """The pid of the process writing ``run_dir`` now (0 if it has not recorded it yet), or None when no
    process holds its lock. ``attempts`` > 1 looks again before answering that one does."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if attempt + 1 == attempts:
                    return _read_pid(fd)
                time.sleep(LOCK_RETRY_SECONDS)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    return None


class RunLock:
    """An exclusive claim on a run directory, held until `release` (or the process's end, however it
    ends: the OS drops a ``flock`` with its process). The holder's pid is written into the lock file;
    `release` removes the file."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self, attempts: int = LOCK_ATTEMPTS) -> "RunLock":
        """Take the lock, or raise a clear error naming the process that holds it."""
        busy = 0
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                busy += 1
                if busy >= attempts:
                    raise ProxyFDAError(_busy_message(self.path.parent, pid)) from None
                time.sleep(LOCK_RETRY_SECONDS)
                continue
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return self
            os.close(fd)  # we locked a file its last holder had just removed: lock the current one

    def moved_to(self, run_dir: Path) -> None:
        """The directory (and the lock file in it) was renamed to ``run_dir``."""
        self.path = Path(run_dir) / LOCK

    def release(self) -> None:
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            os.unlink(self.path)  # before unlocking: a newcomer then locks a fresh file, never a removed one
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def clean_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files (``.*.tmp``) a killed writer left in ``run_dir`` and its ``probe/``.

    Only when no process holds the run's lock: the lock is taken for the moment of cleaning, so no
    writer can start meanwhile. Returns what was removed (nothing when the run is being written or the
    folder cannot be written).
    """
    path = Path(run_dir)
    if not _temporaries(path):
        return []
    lock = RunLock(path)
    try:
        lock.acquire(attempts=1)
    except (ProxyFDAError, OSError):
        return []
    try:
        return _remove_temporaries(path)
    finally:
        lock.release()


def _temporaries(path: Path) -> list[Path]:
    return [p for folder in (path, path / PROBE) if folder.is_dir() for p in folder.glob(".*.tmp") if p.is_file()]


def _remove_temporaries(path: Path) -> list[Path]:
    removed = []
    for temporary in _temporaries(path):
        try:
            temporary.unlink()
            removed.append(temporary)
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------------------------------------
# where a new run may be written


def check_run_dir(run_dir: str | Path, overwrite: bool = False) -> Path:
    """``run_dir`` if a new run may be written there, else a clear error; nothing is left written.

    It must be a new or empty folder in a place that can be written, or, with ``overwrite``, hold a
    run (never other files: those are not the runs' to delete) that no process is writing.
    """
    path = check_writable(run_dir)  # where it is created or filled (the file system's own answer)
    restore_replaced_run(path)
    if path.is_dir():
        check_writable(path.parent)  # where a replacement is built beside it
        pid = writer_pid(path, attempts=LOCK_ATTEMPTS)
        if pid is not None:
            raise ProxyFDAError(_busy_message(path, pid))
        _check_occupant(path, overwrite)
    return path


def _occupants(path: Path) -> list[str]:
    """What a folder holds besides a lock file and temporaries (both left by an ended writer)."""
    return sorted(p.name for p in path.iterdir() if p.name != LOCK and not (p.name.startswith(".")
                                                                           and p.name.endswith(".tmp")))


def _check_occupant(path: Path, overwrite: bool) -> None:
    names = _occupants(path)
    if not names:
        return
    holds_run = CONFIG in names
    if holds_run:
        try:
            run = Run.open(path)
            what = f"a {run.method} run (status: {run.status}, {run.summary().get('steps_done', '?')} steps)"
        except ProxyFDAError:
            what = f"a damaged run ({', '.join(names[:5])})"
    else:
        shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
        what = f"{len(names)} file(s) that are not a run ({shown})"
    if not holds_run:
        raise ProxyFDAError(f"{path} is not empty: it holds {what}. Runs are written to a new or empty folder; "
                            "choose another output folder (overwrite replaces runs only, never other files)")
    if not overwrite:
        raise ProxyFDAError(f"{path} is not empty: it holds {what}. Choose another output folder, or replace "
                            "the run with --overwrite (overwrite=True in Python): the old run stays whole until "
                            "the new one has finished")


def _sibling(path: Path, kind: str) -> Path:
    """A hidden folder beside ``path`` for a run being built (``new``) or replaced (``old``)."""
    return path.parent / f".{path.name}.{kind}-{secrets.token_hex(4)}"


def _remove_abandoned_siblings(path: Path) -> None:
    """The hidden folders of overwrites of ``path`` whose writer died (its lock is held by the caller)."""
    for kind in ("new", "old"):
        for sibling in _abandoned(path, kind):
            shutil.rmtree(sibling, ignore_errors=True)


def _abandoned(path: Path, kind: str) -> list[Path]:
    """The hidden ``kind`` folders (``new`` or ``old``) of overwrites of ``path`` that no process writes."""
    prefix = f".{path.name}.{kind}-"
    if not path.parent.is_dir():
        return []
    return sorted(sibling for sibling in path.parent.iterdir()
                  if sibling.name.startswith(prefix) and sibling.is_dir() and writer_pid(sibling) is None)


def restore_replaced_run(path: str | Path) -> bool:
    """Put back a run whose replacement died between its two renames (the old run moved aside to
    ``.<name>.old-…``, the new one not yet in its place): with nothing at ``path`` and such a folder that
    no process writes, it is renamed back. Whether a run was restored."""
    path = Path(path).expanduser()
    if path.exists():
        return False
    for old in _abandoned(path, "old"):
        try:
            os.rename(old, path)
            return True
        except OSError:  # another process restored it first
            continue
    return False


class RunWriter:
    """Writes one run directory: the config first, history records as they come, checkpoints
    atomically, and the summary last. Use as a context manager; `finish` records the outcome.

    Until `finish`, ``summary.json`` says ``"status": "running"``, so a reader can tell an unfinished
    run from a finished one. The writer holds the run's lock from its first write to its last (see
    the module docstring). A folder that already holds a run is refused unless ``overwrite``; the new
    run is then built in a hidden sibling folder (`path`) and swapped into ``run_dir`` by `finish`.
    Leaving the block without `finish` (an error, Ctrl-C) records ``interrupted`` in place, or
    discards the unfinished replacement and leaves the old run as it was.
    """

    def __init__(self, run_dir: str | Path, config: FinetuneConfig, callback: Callback | None = None,
                 overwrite: bool = False):
        self.target = check_run_dir(run_dir, overwrite)
        self.callback = callback
        self._started = time.perf_counter()
        self._finished = False
        self.target.mkdir(parents=True, exist_ok=True)
        self._locks = [RunLock(self.target).acquire()]
        try:
            _remove_temporaries(self.target)
            _check_occupant(self.target, overwrite)  # again, now that nobody else can write it
            self.path = self.target
            if _occupants(self.target):
                _remove_abandoned_siblings(self.target)
                self.path = _sibling(self.target, "new")
                self.path.mkdir()
                self._locks.append(RunLock(self.path).acquire())
            atomic_write_text(self.path / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
            self._write_summary({"status": RUNNING})
            self._history = (self.path / HISTORY).open("w")
        except BaseException:
            self._release()
            raise

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._finished:
            self._abandon(exc)
        self._release()

    @property
    def replacing(self) -> bool:
        """Whether this run is being built beside an earlier run it will replace."""
        return self.path != self.target

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

    def finish(self, status: str, steps_done: int, final_eval_accuracy: float | None, **details: Any) -> RunResult:
        """Close the history and write the summary (``status``: completed, stopped or diverged; ``details``,
        e.g. the training loop's ``world_size``, join it): the run is now finished on disk, and in place of
        the run it replaces, if any."""
        self.close()
        self._write_summary({"status": status, "steps_done": steps_done, "final_eval_accuracy": final_eval_accuracy,
                             "seconds": round(time.perf_counter() - self._started, 3), **details})
        if self.replacing:
            self._swap_into_place()
        self._finished = True
        self._release()
        return RunResult(self.path, status, steps_done, final_eval_accuracy)

    def close(self) -> None:
        if not self._history.closed:
            self._history.close()

    def _write_summary(self, summary: dict) -> None:
        self.save_json(SUMMARY, summary)

    def _swap_into_place(self) -> None:
        """The finished run takes the old one's name; the old one goes. Both locks stay held throughout."""
        old = _sibling(self.target, "old")
        os.rename(self.target, old)
        self._locks[0].moved_to(old)
        try:
            os.rename(self.path, self.target)
        except BaseException:  # the old run goes back to its name; `_abandon` then discards the new one
            os.rename(old, self.target)
            self._locks[0].moved_to(self.target)
            raise
        self._locks[1].moved_to(self.target)
        self.path = self.target
        shutil.rmtree(old, ignore_errors=True)

    def _abandon(self, error: BaseException | None) -> None:
        """Left without `finish`: an unfinished replacement is discarded (the old run was never touched);
        a run written in place says it was interrupted, and by what."""
        self.close()
        if self.replacing:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        summary: dict = {"status": INTERRUPTED, "seconds": round(time.perf_counter() - self._started, 3)}
        if error is not None:
            summary["error"] = f"{type(error).__name__}: {error}"
        self._write_summary(summary)

    def _release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()


class SilentWriter:
    """What the ranks other than 0 of a distributed run (``torchrun``) hold in place of a `RunWriter`:
    the same calls, nothing written, so rank 0 alone writes the run directory and the training loop
    reads the same on every rank."""

    def __init__(self, run_dir: str | Path):
        self.path = self.target = Path(run_dir)

    def __enter__(self) -> "SilentWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def log(self, record: dict) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def save_probe_rows(self, rows: "np.ndarray") -> None:
        pass

    def save_probe(self, step: int, features: "np.ndarray") -> None:
        pass

    def finish(self, status: str, steps_done: int, final_eval_accuracy: float | None, **details: Any) -> RunResult:
        return RunResult(self.target, status, steps_done, final_eval_accuracy)


@dataclass(frozen=True)
class Run:
    """A run directory read back: its config, summary, history and checkpoints."""

    path: Path
    config: FinetuneConfig

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        """Read the run at ``run_dir``, or a clear error when it is not one."""
        path = Path(run_dir).expanduser()
        restore_replaced_run(path)
        config_path = path / CONFIG
        if not config_path.exists():
            raise ProxyFDAError(f"'{path}' is not a proxyfda run directory (no {CONFIG}); "
                                "runs are written by `proxyfda finetune --out DIR`")
        try:
            values = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ProxyFDAError(f"{config_path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
                                "the run directory is damaged") from exc
        clean_stale_temporaries(path)
        return cls(path, _read_config(config_path, values))

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
        """running, completed, stopped, diverged, or interrupted: said running, but no process writes it
        (killed, or ended by an error); "unknown" for a run written before summaries existed."""
        status = self.summary().get("status", "unknown")
        if status == RUNNING and writer_pid(self.path) is None:
            status = self.summary().get("status", "unknown")  # read again: its writer may just have finished
            return INTERRUPTED if status == RUNNING else status
        return status

    def incomplete_note(self) -> str | None:
        """A sentence saying this run did not complete and what using it means; None when it completed
        (or predates statuses)."""
        status = self.status
        if status in (COMPLETED, "unknown"):
            return None
        summary = self.summary()
        done = summary.get("steps_done")
        how = {RUNNING: f"it is still being trained (pid {writer_pid(self.path)}), so what is used is its latest "
                        "checkpoint, which will change",
               STOPPED: f"it was stopped after {done} of {self.config.steps} steps, so it is used as it stood then",
               DIVERGED: f"its training diverged at step {(done or 0) + 1} (a non-finite loss or weights), so it "
                         "is used at its last finite checkpoint",
               INTERRUPTED: "its process ended before it finished (killed, or an error"
                            + (f": {summary['error']}" if summary.get("error") else "") + "), so it is used at its "
                            "last checkpoint; train it again with --overwrite to complete it"}
        return f"run '{self.path}' did not complete (status: {status}): {how.get(status, 'its status is unknown')}"

    def warn_if_incomplete(self) -> None:
        """Warn (`IncompleteRunWarning`) when this run did not complete. One call site for every warning,
        so the same run is named once per process under Python's default warning filter."""
        note = self.incomplete_note()
        if note:
            warnings.warn(note, IncompleteRunWarning, stacklevel=1)

    def records(self) -> list[dict]:
        """Every history record, in order (a line cut short at the end by a killed writer is left out)."""
        path = self.path / HISTORY
        if not path.exists():
            return []
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines[:-1]]
        try:
            records += [json.loads(line) for line in lines[-1:]]
        except json.JSONDecodeError:
            pass
        return records

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
            raise ProxyFDAError(f"run '{self.path}' has no {CHECKPOINT} yet (status: {self.status}): it ended before its "
                                "first checkpoint, or is still running; train it again, with more steps or a "
                                "lower learning rate if it diverged")
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
        """Keep a forgetting measurement with the run (replacing an earlier one), under the run's lock like
        every write into a run directory."""
        lock = RunLock(self.path).acquire()
        try:
            atomic_write_text(self.path / FORGETTING, json.dumps(measurement, indent=2) + "\n")
        finally:
            lock.release()


def _read_config(path: Path, values: Any) -> FinetuneConfig:
    """The `FinetuneConfig` in a run's ``config.json``, or a clear error naming the file when it holds none."""
    if not isinstance(values, dict):
        raise ProxyFDAError(f"{path} does not hold a run config (a JSON object), but {type(values).__name__}; "
                            "the run directory is damaged: train it again with --overwrite")
    try:
        return FinetuneConfig.from_dict(values)
    except (ProxyFDAError, TypeError, ValueError) as exc:
        raise ProxyFDAError(f"{path} does not hold a valid run config ({exc}); the run directory is damaged: "
                            "train it again with --overwrite") from exc


def list_runs(root: str | Path) -> list[Run]:
    """The runs directly under ``root`` (folders with a ``config.json``), sorted by name; hidden folders
    (runs being built to replace another) are not listed, and a run whose replacement died half-way
    through its swap is put back first (`restore_replaced_run`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    for moved in root.glob(".*.old-*"):
        restore_replaced_run(root / moved.name[1:].rpartition(".old-")[0])
    return [Run.open(path) for path in sorted(root.iterdir())
            if not path.name.startswith(".") and (path / CONFIG).is_file()]


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
    return (run_dir / CONFIG).exists() and Run.open(run_dir).status == COMPLETED
