#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with proxsparse-ao and its test tools
# (with a virtual or conda environment other than conda's base active and no .venv yet: that
# environment, .venv linking to it).
#  - keeps a torch that is already installed (a GPU user's CUDA build) by pinning it;
#  - otherwise installs the CPU build of torch when no NVIDIA driver is present, so a
#    CPU-only machine never downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${PROXSPARSE_VENV:-.venv}
TORCH_CPU_VERSION=2.13.0

has_torch() { "$1" -c "import torch" >/dev/null 2>&1; }

# The version pip knows the installed torch by: its package metadata. torch.__version__ can differ
# (PyPI's CUDA wheels install as 2.11.0 and say 2.11.0+cu130), and pip cannot match a pin of that.
torch_version() { "$1" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null; }

physical() { (cd "$1" 2>/dev/null && pwd -P); }

# The environment the user has active: the virtual or conda environment whose python is first on
# PATH (VIRTUAL_ENV or CONDA_PREFIX says which is active, PATH which of them runs). Conda's base,
# active by default in many shells, is left alone: .venv is then made from its python.
ACTIVE=""
if python_on_path=$(command -v python 2>/dev/null); then
  candidate=$(physical "$(dirname "$python_on_path")/..")
  for variable in VIRTUAL_ENV CONDA_PREFIX; do
    prefix=${!variable:-}
    if [ -n "$prefix" ] && [ -n "$candidate" ] && [ "$(physical "$prefix")" = "$candidate" ]; then
      if [ "$variable" = VIRTUAL_ENV ] || [ "${CONDA_DEFAULT_ENV:-}" != base ]; then
        ACTIVE=$candidate
      fi
      break
    fi
  done
fi

VENV=${VENV%/}
if [ -n "$ACTIVE" ] && [ ! -e "$VENV" ] && [ ! -L "$VENV" ]; then
  # install into the user's own environment, and make $VENV point at it, so that the README's
  # .venv/bin commands run in it
  mkdir -p "$(dirname "$VENV")"
  ln -s "$ACTIVE" "$VENV"
  echo "setup: installing into the active environment $ACTIVE ($VENV links to it)"
elif [ -n "$ACTIVE" ] && [ "$(physical "$VENV")" != "$ACTIVE" ]; then
  echo "setup: $VENV already exists: installing there, not into the active environment $ACTIVE"
fi
if [ -L "$VENV" ] && [ ! -x "$VENV/bin/python" ]; then
  echo "setup: $VENV links to $(readlink "$VENV"), which has no bin/python: remove the link, or point PROXSPARSE_VENV elsewhere" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  if has_torch "$PYTHON"; then
    "$PYTHON" -m venv --system-site-packages "$VENV"   # see the torch already installed
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY=$VENV/bin/python

pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
if has_torch "$PY"; then
  if ! version=$(torch_version "$PY"); then
    echo "setup: $PY imports a torch that pip does not see installed (no package metadata), so it cannot be kept: install torch with pip or conda" >&2
    exit 2
  fi
  echo "torch==$version" >"$pin"
  echo "setup: keeping the installed torch ($(cat "$pin"))"
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: NVIDIA driver found; pip will install a CUDA build of torch"
else
  echo "setup: no torch and no NVIDIA driver; installing the CPU build of torch $TORCH_CPU_VERSION"
  # "+cpu" exists only in PyTorch's CPU index (or a local mirror of it): try the configured
  # indexes first (fails fast where they lack it), then PyTorch's CPU index.
  "$PY" -m pip install -q "torch==$TORCH_CPU_VERSION+cpu" 2>/dev/null \
    || "$PY" -m pip install -q "torch==$TORCH_CPU_VERSION+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  echo "torch==$(torch_version "$PY")" >"$pin"
fi

"$PY" -m pip install -q -c "$pin" -e ".[test]"
echo "setup: done ($(physical "$VENV")/bin/python)"
