#!/usr/bin/env bash
# Runs every test. Prepares what the tests need first:
# - Debian's chromium and chromium-driver for the browser tests (installed
#   with apt-get when missing; needs root or sudo);
# - a Python virtual environment with the independent readers, the clients
#   the end-to-end tests drive and Selenium (kept between runs; override
#   its place with STEPSTORE_VENV);
# - the MLflow web UI builds the UI tests serve, from the `mlflow` wheels
#   (installed without their dependencies beside the venv: only the
#   built files are used).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

venv="${STEPSTORE_VENV:-$HOME/.cache/stepstore-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# The Python client installs as users install it (its tests run the
# checked-out source, through PYTHONPATH).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./clients/python
export STEPSTORE_PYTHON="$venv/bin/python"

# A bare interpreter for the Python client's tests without its optional
# packages (no pyarrow: the columnar JSON transport): the oldest Python the
# client supports when pyenv has it, else the system's python3.
bare="${STEPSTORE_BARE_VENV:-$HOME/.cache/stepstore-venv-bare}"
if [ ! -x "$bare/bin/python" ]; then
  oldest="$(ls -d "$HOME"/.pyenv/versions/3.9.*/bin/python 2>/dev/null | tail -n 1 || true)"
  "${oldest:-python3}" -m venv "$bare"
fi
"$bare/bin/python" -m pip install --quiet --disable-pip-version-check pytest==8.4.2
export STEPSTORE_PYTHON_BARE="$bare/bin/python"

# The MLflow UI versions the UI tests run against: the newest 3.x on the
# package registry and the last 2.x.
ui_roots=()
for version in 3.18.0 2.22.4; do
  root="$venv/mlflow-ui/$version"
  if [ ! -f "$root/mlflow/server/js/build/index.html" ]; then
    rm -rf "$root"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$root" "mlflow==$version"
  fi
  ui_roots+=("$root")
done
STEPSTORE_MLFLOW_UI_ROOTS="$(IFS=:; echo "${ui_roots[*]}")"
export STEPSTORE_MLFLOW_UI_ROOTS

cargo test "$@"
