"""Where proxyfda keeps what it builds: features, projections and the default fine-tuned run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $PROXYFDA_CACHE, else $XDG_CACHE_HOME/proxyfda, else ~/.cache/proxyfda."""
    root = os.environ.get("PROXYFDA_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "proxyfda")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, write) -> None:
    """Write a file so that a crash mid-write leaves the previous version intact.

    `write` receives an open binary file object; the file appears at `path` only once
    `write` has returned and the data is flushed to disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text (configs, summaries)."""
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))
