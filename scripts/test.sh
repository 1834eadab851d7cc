#!/usr/bin/env bash
# Set up, lint and run the test suite (CPU, no downloads, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(mktemp -d)}"
export INDOMAIN_TINY_DIR="${INDOMAIN_TINY_DIR:-$(mktemp -d)/tiny}"
"$PY" -m ruff check .
"$PY" -m pytest -q "$@"
