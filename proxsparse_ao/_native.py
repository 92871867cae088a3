"""Build and load the plain-C prox kernel (`_prox24.c` with `_prox24_solve.h`) on first use.

The kernel has no dependency beyond libm, so any C compiler builds it in about a second; where the
compiler has OpenMP it is built with it, and then needs libgomp, which torch's own wheel already
loads (the kernel's threads are then torch's). The library is cached per source, flags and CPU; when
no compiler is available, callers fall back to the vectorised torch implementation. Loading it also
builds its top-2 table (a few milliseconds).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from .cache import cache_dir

_SOURCE = Path(__file__).with_name("_prox24.c")
_HEADERS = [Path(__file__).with_name("_prox24_solve.h")]
_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c99", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
# This CPU's own vector units where the compiler can target them, else its baseline; OpenMP
# where the compiler has it (the solver then runs its threads in the caller's OpenMP team).
_TUNINGS = [["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []]
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_identity() -> str:
    """What a -march=native build depends on: the CPU model and feature flags (the cache key
    includes them, so a cache shared between different machines never loads a foreign build)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keys = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    return "\n".join(dict.fromkeys(line for line in lines if line.split(":")[0].strip() in keys))


def _build(target: Path, flags: list[str]) -> None:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, str(_SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True)
        os.replace(tmp, target)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"{compiler} failed: {err.stderr.decode(errors='replace').strip()}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here (see `failure()`)."""
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    with _lock:
        if _library is not None or _failure is not None:
            return _library
        if os.environ.get("PROXSPARSE_PROX_BACKEND", "").lower() == "torch":
            _failure = "disabled by PROXSPARSE_PROX_BACKEND=torch"
            return None
        sources = b"".join(path.read_bytes() for path in [_SOURCE, *_HEADERS])
        cpu = _cpu_identity().encode()
        errors = []
        for tuning in _TUNINGS:
            flags = _FLAGS + tuning
            digest = hashlib.sha256(sources + " ".join(flags).encode() + cpu).hexdigest()[:16]
            target = cache_dir() / "kernels" / f"prox24-{platform.machine()}-{digest}.so"
            try:
                if not target.exists():
                    _build(target, flags)
                library = ctypes.CDLL(str(target))
                break
            except (OSError, RuntimeError) as err:
                errors.append(str(err))
        else:
            _failure = "; ".join(dict.fromkeys(errors))
            return None
        i64, dbl = ctypes.c_int64, ctypes.c_double
        for suffix in ("float", "double"):
            prox = getattr(library, f"prox24_{suffix}")
            prox.argtypes, prox.restype = [ctypes.c_void_p, ctypes.c_void_p, i64, dbl, ctypes.c_void_p], i64
            workspace = getattr(library, f"prox24_workspace_{suffix}")
            workspace.argtypes, workspace.restype = [], i64
            check = getattr(library, f"first_nonfinite_{suffix}")
            check.argtypes, check.restype = [ctypes.c_void_p, i64], i64
            check_spans = getattr(library, f"first_nonfinite_spans_{suffix}")
            check_spans.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            check_spans.restype = None
            spans = getattr(library, f"prox24_spans_{suffix}")
            spans.argtypes = [ctypes.c_void_p, ctypes.c_void_p, dbl, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                              ctypes.c_void_p, i64, ctypes.c_void_p]
            spans.restype = None
        library.prox24_openmp.argtypes, library.prox24_openmp.restype = [], ctypes.c_int
        library.prox24_prepare.argtypes, library.prox24_prepare.restype = [], ctypes.c_int
        library.prox24_top2_settled.argtypes, library.prox24_top2_settled.restype = [ctypes.c_void_p, dbl], ctypes.c_int
        if library.prox24_prepare() != 0:
            _failure = "the prox kernel could not build its top-2 table (out of memory?)"
            return None
        _library = library
        return _library


def failure() -> str | None:
    """Why the native kernel is unavailable, once `load()` has returned None."""
    return _failure
