#!/usr/bin/env bash
# Writes the dvc lock files the dvc import test reads
# (tests/data/dvc/dvc.lock and dvc-after-lr-change.lock) with the real dvc
# from the package registry: a three-stage pipeline (prepare -> train ->
# evaluate) reproduced once, then again after a change of train.lr.
# Usage: scripts/make_dvc_samples.sh   (needs python3 and network to PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/tests/data/dvc"
venv="${DVC_VENV:-$HOME/.cache/stepstore-dvc-venv}"
[ -x "$venv/bin/dvc" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install --quiet dvc pyyaml; }
export PATH="$venv/bin:$PATH"
repo="$(mktemp -d)"
trap 'rm -rf "$repo"' EXIT
cd "$repo"
dvc init --no-scm -q
mkdir -p data src
python3 -c "
import random
random.seed(1)
open('data/raw.csv', 'w').write('\n'.join(f'{i},{random.random()}' for i in range(1000)))"
cat > params.yaml <<'YAML'
prepare:
  split: 0.2
  seed: 20170428
train:
  lr: 0.001
  epochs: 3
  layers: [64, 32]
YAML
cat > src/prepare.py <<'PY'
import os, sys
os.makedirs("data/prepared", exist_ok=True)
rows = open(sys.argv[1]).read().splitlines()
cut = int(len(rows) * 0.8)
open("data/prepared/train.csv", "w").write("\n".join(rows[:cut]))
open("data/prepared/test.csv", "w").write("\n".join(rows[cut:]))
PY
cat > src/train.py <<'PY'
import json
import yaml
params = yaml.safe_load(open("params.yaml"))["train"]
rows = open("data/prepared/train.csv").read().splitlines()
open("model.json", "w").write(json.dumps({"weights": len(rows), "lr": params["lr"]}))
PY
cat > src/evaluate.py <<'PY'
import json
model = json.load(open("model.json"))
json.dump({"accuracy": 0.9}, open("metrics.json", "w"))
PY
dvc stage add -q -n prepare -p prepare.split,prepare.seed -d src/prepare.py -d data/raw.csv \
  -o data/prepared python src/prepare.py data/raw.csv
dvc stage add -q -n train -p train -d src/train.py -d data/prepared -o model.json python src/train.py
dvc stage add -q -n evaluate -d src/evaluate.py -d model.json -d data/prepared \
  --metrics-no-cache metrics.json python src/evaluate.py
dvc repro -q
cp dvc.lock "$out/dvc.lock"
sed -i 's/lr: 0.001/lr: 0.01/' params.yaml
dvc repro -q
cp dvc.lock "$out/dvc-after-lr-change.lock"
echo "wrote $out/dvc.lock and $out/dvc-after-lr-change.lock with $(dvc --version | head -1)"
