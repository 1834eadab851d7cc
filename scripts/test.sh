#!/usr/bin/env bash
# Set up, lint and run the test suite (CPU, no downloads; 5 to 7 minutes of pytest on 2 cores, README "Tests").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# Folders of this run's own (torch's extension builds, the tiny models built on first use), removed at its end.
MADE=()
if [ -z "${TORCH_EXTENSIONS_DIR:-}" ]; then TORCH_EXTENSIONS_DIR=$(mktemp -d); MADE+=("$TORCH_EXTENSIONS_DIR"); fi
if [ -z "${INDOMAIN_TINY_DIR:-}" ]; then tiny=$(mktemp -d); INDOMAIN_TINY_DIR=$tiny/tiny; MADE+=("$tiny"); fi
export TORCH_EXTENSIONS_DIR INDOMAIN_TINY_DIR
trap 'rm -rf ${MADE[@]+"${MADE[@]}"}' EXIT
# The app's real-browser test needs Chromium (Debian's package); without it that test is skipped with the reason.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will be skipped"
fi
"$PY" -m ruff check .
# Two pytest workers with one torch thread each (tests/conftest.py): when measured, 6 minutes on 2 cores where one
# process with two threads took 8 (--dist worksteal measured the same as the default; the longest tests first with
# worksteal was slower, 346 s against 298 and 316 s, 2026-12-06: their subprocesses then ran side by side). A run
# that picks its own tests with -m (the slow tier: a few long runs) stays in one process: in two workers the slow
# tier took 9 minutes. INDOMAIN_TEST_WORKERS=N sets the workers (0: one process).
WORKERS=${INDOMAIN_TEST_WORKERS:-2}
for arg in "$@"; do
    case "$arg" in -m*) WORKERS=${INDOMAIN_TEST_WORKERS:-0} ;; esac
done
"$PY" -m pytest -q -n "$WORKERS" "$@"
