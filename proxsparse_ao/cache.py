"""Where proxsparse-ao keeps what it builds or downloads, and how it writes there safely."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ProxSparseError


def cache_dir() -> Path:
    """The per-user cache folder: $PROXSPARSE_CACHE, else $XDG_CACHE_HOME/proxsparse_ao."""
    root = os.environ.get("PROXSPARSE_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "proxsparse_ao"


@contextmanager
def building(what: str) -> Iterator[None]:
    """A file error while `what` is built in the cache ($PROXSPARSE_CACHE naming a file, a folder this
    user cannot write, a full disk) as one line naming the cache folder and how to choose another."""
    try:
        yield
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        raise ProxSparseError(
            f"cannot build {what} in the cache folder {cache_dir()} ({where}{err.strerror or err}): "
            "set $PROXSPARSE_CACHE to a folder you can write"
        ) from None


def check_writable_folder(folder: str | Path, what: str) -> None:
    """`folder` exists or can be made, and a file can be created in it: its nearest existing
    ancestor is a folder this process writes in (a probe, removed at once). `what` starts the error."""
    existing, missing = Path(folder).expanduser().absolute(), None
    while not existing.exists() and not existing.is_symlink():
        existing, missing = existing.parent, existing
    if not existing.is_dir():
        raise ProxSparseError(f"{what}: {existing} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".proxsparse-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or err
        if missing is not None:
            raise ProxSparseError(f"{what}: cannot create the folder {missing} ({reason})") from None
        raise ProxSparseError(f"{what}: cannot write in {existing} ({reason})") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
