#!/usr/bin/env bash
# The Python callback benchmark: this project's pyqbdi next to QBDI's PyQBDI 0.12.1, on the
# same script (bench_callbacks.py) and guest code (kernels.c).
#
#   host/python/bench/run.sh [ITERATIONS]
#
# Builds this project's pyqbdi (release) into a scratch venv, installs PyQBDI 0.12.1 from
# PyPI into another (never in the tests), under ${BENCH_DIR:-/tmp/pyqbdi-bench}. Set
# PYQBDI_PYTHON to an interpreter that already has this project's pyqbdi to skip its build.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${BENCH_DIR:-/tmp/pyqbdi-bench}"
mkdir -p "$DIR"
gcc -O1 -shared -fPIC -o "$DIR/libbench.so" "$HERE/kernels.c"
OURS="${PYQBDI_PYTHON:-}"
if [ -z "$OURS" ]; then
    python3 -m venv "$DIR/ours"
    "$DIR/ours/bin/pip" install -q "$HERE/.."
    OURS="$DIR/ours/bin/python"
fi
if [ ! -x "$DIR/qbdi/bin/python" ]; then
    python3 -m venv "$DIR/qbdi"
    "$DIR/qbdi/bin/pip" install -q PyQBDI==0.12.1
fi
"$OURS" "$HERE/bench_callbacks.py" "$DIR/libbench.so" "$@"
"$DIR/qbdi/bin/python" "$HERE/bench_callbacks.py" "$DIR/libbench.so" "$@"
