#!/usr/bin/env bash
# GPU check of the 2:4 deployment path (issue 5): one prepared run, under 8 minutes on one H200.
#   benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options, e.g. --model DIR, --sparse always, --smoke]
# Needs only python3 with torch (CUDA build) and transformers; writes OUT_DIR/gpu_check.json
# (and OUT_DIR/linear24_timings.json). Uses .venv/bin/python when the checkout has one.
set -euo pipefail

out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [options]}"
shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi
mkdir -p "$out"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export TORCHINDUCTOR_CACHE_DIR="$scratch/inductor"
export PROXSPARSE_CACHE="$scratch/proxsparse"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

# The cached-plan cuSPARSELt caller goes through ctypes: checked first in a process of its own,
# and replaced by torch's wrapper for the whole run if it fails there.
# Its output goes to OUT_DIR/probe.log too (gpu_check.json quotes it).
started=$SECONDS
if ! timeout 60 "$python" "$repo/benchmarks/gpu_check.py" --probe-cusparselt 2>&1 | tee "$out/probe.log"; then
  echo "gpu_check: the cached-plan cuSPARSELt caller failed its probe; using torch's wrapper" | tee -a "$out/probe.log" >&2
  export PROXSPARSE_CUSPARSELT=torch
fi

# gpu_check.py stops starting new steps at --budget-s (430 s less the probe's time); this hard
# stop keeps the whole script under 8 minutes even if one step overruns. Results written so far
# stay in OUT_DIR. Options given to this script come after, so they override the budget.
spent=$((SECONDS - started))
timeout --signal=TERM $((470 - spent)) "$python" "$repo/benchmarks/gpu_check.py" "$out" --budget-s $((430 - spent)) "$@"
