#!/usr/bin/env bash
# Set up, lint and run the test suite (CPU, no downloads, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(mktemp -d)}"
export INDOMAIN_TINY_DIR="${INDOMAIN_TINY_DIR:-$(mktemp -d)/tiny}"
# The app's real-browser test needs Chromium (Debian's package); without it that test is skipped with the reason.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will be skipped"
fi
"$PY" -m ruff check .
# Two pytest workers with one torch thread each (tests/conftest.py): about 6 minutes on 2 cores where one process
# with two threads takes 8. INDOMAIN_TEST_WORKERS=0 runs in one process; on more cores, give more workers.
"$PY" -m pytest -q -n "${INDOMAIN_TEST_WORKERS:-2}" "$@"
