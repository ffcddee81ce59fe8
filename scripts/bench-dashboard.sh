#!/usr/bin/env bash
# Dashboard benchmark: builds the release binary, then runs
# scripts/bench_dashboard.py, which loads 20 runs x 4 keys x 1,000,000
# points and 1,000 runs x 200 params into a fresh server and times the
# dashboard in headless Chromium (performance marks set by the page).
# Arguments are passed to the driver (--repeat, --runs, --points, ...).
# Needs chromium + chromium-driver and the test virtual environment
# (./scripts/test.sh prepares both).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stepstore-target}"

venv="${STEPSTORE_VENV:-$HOME/.cache/stepstore-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install chromium chromium-driver" >&2; exit 1; }
done

cargo build --release --quiet
exec "$venv/bin/python" scripts/bench_dashboard.py --binary "$CARGO_TARGET_DIR/release/stepstore" "$@"
