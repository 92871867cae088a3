#!/usr/bin/env bash
# The test suite against other torch releases, each from PyPI into a fresh clone of this
# checkout's HEAD with its own .venv (setup.sh keeps that torch):
#   .ci/torch_versions.sh [VERSION ...]        default: 2.11.0 2.12.1 2.14.1 2.15.0
# Logs go to $OUT/<version>/ (default OUT=/tmp/proxsparse-torch-versions); one line per version
# on stdout. PyPI's Linux wheels of torch are CUDA builds (a few GB with their NVIDIA libraries);
# they run on a CPU. A pip constraint that caps torch must be lifted (PIP_CONSTRAINT=/dev/null).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/proxsparse-torch-versions}
python=${PYTHON:-python3}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.11.0 2.12.1 2.14.1 2.15.0)
for version in "${versions[@]}"; do
  folder=$out/$version
  if [ -e "$folder" ]; then
    echo "torch_versions: $folder exists: remove it, or set OUT to another folder" >&2
    exit 2
  fi
  mkdir -p "$folder" && git clone -q "$repo" "$folder/repo" || exit 2
  # the tests that read the team's shared assets find them next to the checkout, as in this one
  [ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$folder/shared"
  if ! (cd "$folder/repo" && "$python" -m venv .venv && .venv/bin/pip install -q "torch==$version" \
        && ./setup.sh) >"$folder/setup.log" 2>&1; then
    echo "torch $version: setup failed ($folder/setup.log)"
    continue
  fi
  (cd "$folder/repo" && .venv/bin/python -m pytest -p no:cacheprovider -rfEs) >"$folder/pytest.log" 2>&1
  echo "torch $version: $(tail -n 1 "$folder/pytest.log")"
done
