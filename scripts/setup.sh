#!/usr/bin/env bash
# Install the suite and everything it needs. torch is installed FIRST and pinned (a CPU build works);
# if a torch is already importable (e.g. your CUDA build), it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
if "$PY" -c "import torchvision" >/dev/null 2>&1; then
  echo "warning: torchvision is installed; if diffusers fails to import, run: pip uninstall -y torchvision" >&2
fi
# The versions CI tested (scripts/constraints.txt); INDOMAIN_CONSTRAINTS=none lets pip pick the newest.
CONSTRAINTS=${INDOMAIN_CONSTRAINTS:-scripts/constraints.txt}
if [ "$CONSTRAINTS" = none ]; then
  "$PY" -m pip install --quiet -e ".[${EXTRAS:-all}]"
else
  "$PY" -m pip install --quiet -c "$CONSTRAINTS" -e ".[${EXTRAS:-all}]"
fi
