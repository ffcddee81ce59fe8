#!/usr/bin/env bash
# Runs every test. Prepares what the tests need first: a Python virtual
# environment with the independent readers and clients the end-to-end tests
# drive (kept between runs; override its place with STEPSTORE_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${STEPSTORE_VENV:-$HOME/.cache/stepstore-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export STEPSTORE_PYTHON="$venv/bin/python"

cargo test "$@"
