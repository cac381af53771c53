#!/usr/bin/env bash
# The GPU check (issue 15): on one CUDA GPU, in at most 8 minutes, writes bench/results/gpu_check.json with
#   tests  the test suite with the GPU visible (pass/fail counts, failing tests, seconds; capped at 210 s),
#   quick  the quick SAILS preset with the model in bf16 on the GPU (wall time, stage times, safety numbers),
#   sae    TopK SAE training tokens/s and dense-equivalent TFLOP/s against bf16 and fp32 matmul TFLOP/s at the
#          same shapes, measured in the same run.
# Without CUDA it exits with status 2 and a message, before doing anything. See bench/gpu_check.py for what it
# needs installed (nothing is fetched). Usage: bash bench/gpu_check.sh [--parts tests,quick,sae]
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import torch; set PYTHON to an interpreter with saelign's dependencies" >&2
  exit 2
fi
if ! "$PYTHON" -c "import importlib.metadata as m; m.version('saelign')" 2>/dev/null; then
  echo "gpu_check: saelign is not installed for $PYTHON (its version is read from the package metadata);" \
       "run: $PYTHON -m pip install --no-deps --no-build-isolation -e ." >&2
  exit 2
fi
# 480 s in all: a part that overruns its own cap is stopped inside the script; this is the last resort.
exec timeout --signal=INT --kill-after=10 480 "$PYTHON" bench/gpu_check.py "$@"
