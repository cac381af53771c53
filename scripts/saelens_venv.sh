#!/usr/bin/env bash
# Create .venv-saelens: an isolated environment with sae_lens, used only by tests/test_saelens_compat.py to check
# that SAELens loads what saelign saves with identical outputs. sae_lens pulls many dependencies we do not want in
# the main environment, hence a separate venv. CPU torch is installed first and pinned so that sae_lens' own
# torch requirement is already satisfied and pip never fetches a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-saelens
TORCH_VERSION=2.13.0
SAE_LENS_VERSION=6.54.12
PYTHON=${PYTHON:-python3}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/python" - <<'PY'
import torch, sys
if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build; install the CPU wheel of torch first")
PY
echo "torch==$TORCH_VERSION" > "$VENV/constraints.txt"
"$VENV/bin/pip" install --quiet -c "$VENV/constraints.txt" "sae-lens==$SAE_LENS_VERSION"
"$VENV/bin/python" -c "import sae_lens, torch; print('sae_lens', sae_lens.__version__, 'torch', torch.__version__)"
