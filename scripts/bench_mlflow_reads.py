"""Times the MLflow read endpoints the MLflow client and UI wait for,
against one or more stepstore binaries in turn (so a change is measured
back to back with the binary before it): for each binary a fresh server on
a temporary data directory, then

- `get-history` of one 140,000-point series (what
  `MlflowClient.get_metric_history` and MLflow 2's metric page read),
  first while the points are in the run's buffer, then persisted (after a
  restart);
- `get-history-bulk-interval` of one key over 100 runs of 100,000 steps
  (what the UI's chart view sends for one chart, `max_results=320`).

Each figure is the median of `--repeat` requests (whole body received)
after one warm-up. Usage:
    python scripts/bench_mlflow_reads.py BIN [BIN ...] [--repeat N]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time

import requests

HISTORY_POINTS = 140_000
RUNS = 100
RUN_STEPS = 100_000


def start(binary, data_dir):
    process = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0", "--wal-sync", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in process.stdout:
        if line.startswith("stepstore listening on "):
            return process, line.split()[-1]
    raise RuntimeError(f"{binary} did not start")


def stop(process):
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)


def ingest(url, run_id, key, steps, seed):
    """A noisy decaying curve with one spike, in chunks of 100,000."""
    state = seed
    for first in range(0, steps, 100_000):
        values = []
        for step in range(first, min(first + 100_000, steps)):
            state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            noise = (state >> 11) / float(1 << 53) - 0.5
            values.append(1000.0 if step == steps // 3 else 2.0 ** (-step / (steps / 5)) + 0.05 * noise)
        body = {"batches": [{
            "run_id": run_id,
            "steps": list(range(first, first + len(values))),
            "timestamps": [1_700_000_000_000 + 50 * s for s in range(first, first + len(values))],
            "values": {key: values},
        }]}
        response = requests.post(f"{url}/api/v1/ingest", data=json.dumps(body),
                                 headers={"content-type": "application/json"}, timeout=300)
        response.raise_for_status()


def median_ms(url, params, repeat):
    session = requests.Session()
    session.get(url, params=params, timeout=300).raise_for_status()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = session.get(url, params=params, timeout=300)
        response.raise_for_status()
        _ = response.content
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), len(response.content)


def measure(binary, repeat):
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start(binary, data_dir)
        history = requests.post(f"{url}/api/v1/runs",
                                json={"experiment_name": "bench", "run_name": "history"}).json()["run_id"]
        ingest(url, history, "loss", HISTORY_POINTS, 1)
        runs = []
        for index in range(RUNS):
            run_id = requests.post(f"{url}/api/v1/runs",
                                   json={"experiment_name": "bench", "run_name": f"run-{index}"}).json()["run_id"]
            ingest(url, run_id, "loss", RUN_STEPS, index + 2)
            runs.append(run_id)
        api = f"{url}/ajax-api/2.0/mlflow/metrics"
        history_params = {"run_id": history, "metric_key": "loss"}
        chart_params = {"run_ids": runs, "metric_key": "loss", "max_results": 320}
        figures = {"get_history_buffered": median_ms(f"{api}/get-history", history_params, repeat)}
        stop(process)
        process, url = start(binary, data_dir)
        api = f"{url}/ajax-api/2.0/mlflow/metrics"
        figures["get_history_persisted"] = median_ms(f"{api}/get-history", history_params, repeat)
        figures["chart_one_key_100_runs"] = median_ms(f"{api}/get-history-bulk-interval", chart_params, repeat)
        stop(process)
        return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    for binary in args.binaries:
        figures = measure(binary, args.repeat)
        print(binary)
        for name, (ms, size) in figures.items():
            print(f"  {name:26} {ms:8.1f} ms  ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
