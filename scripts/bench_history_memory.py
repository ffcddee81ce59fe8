"""Memory of MLflow's full-history reads: one binary on a fresh server,
4 runs of POINTS points of one key (default 5,000,000; sent as columnar
JSON, then the runs finished), then

- every page of `get-history` of one run (1,000,000 points a page);
- `get-history-bulk` of the 4 runs with `max_results=25000`;

each with its time and the server's resident memory after it and at its
peak (the kernel's high-water mark, reset before each read; Linux only).

Usage: python scripts/bench_history_memory.py BIN [POINTS]
"""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

RUNS = 4
CHUNK = 200_000


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    binary = sys.argv[1]
    points = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000_000
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp()
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def call(method, path, body=None):
        request = urllib.request.Request(
            base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request) as answer:
            return json.loads(answer.read() or b"{}")

    def status(field):
        with open(f"/proc/{server.pid}/status") as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) // 1024
        return -1

    def reset_peak():
        with open(f"/proc/{server.pid}/clear_refs", "w") as clear:
            clear.write("5")

    try:
        for _ in range(100):
            try:
                call("GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        mlflow = "/api/2.0/mlflow"
        experiment = call("POST", f"{mlflow}/experiments/create", {"name": "history"})
        runs = [
            call("POST", f"{mlflow}/runs/create", {"experiment_id": experiment["experiment_id"]})[
                "run"
            ]["info"]["run_id"]
            for _ in range(RUNS)
        ]
        for run in runs:
            for start in range(0, points, CHUNK):
                steps = list(range(start, min(points, start + CHUNK)))
                batch = {
                    "run_id": run,
                    "steps": steps,
                    "timestamps": [1_700_000_000_000 + step for step in steps],
                    "values": {"loss": [step * 1e-6 for step in steps]},
                }
                call("POST", "/api/v1/ingest", {"batches": [batch]})
            call("POST", f"{mlflow}/runs/update", {"run_id": run, "status": "FINISHED"})
        time.sleep(3)  # the runs' buffers are persisted and compacted
        reset_peak()
        print(f"after loading: rss {status('VmRSS')} MiB")

        started = time.time()
        received = 0
        token = None
        while True:
            path = f"{mlflow}/metrics/get-history?run_id={runs[0]}&metric_key=loss"
            if token:
                path += f"&page_token={token}"
            page = call("GET", path)
            received += len(page.get("metrics", []))
            token = page.get("next_page_token")
            if not token:
                break
        print(
            f"get-history, every page: {received} points in {time.time() - started:.2f} s; "
            f"rss {status('VmRSS')} MiB, peak {status('VmHWM')} MiB"
        )

        reset_peak()
        started = time.time()
        named = "&".join(f"run_id={run}" for run in runs)
        bulk = call(
            "GET", f"{mlflow}/metrics/get-history-bulk?metric_key=loss&max_results=25000&{named}"
        )
        print(
            f"get-history-bulk, {RUNS} runs x 25,000: {len(bulk['metrics'])} points in "
            f"{time.time() - started:.3f} s; rss {status('VmRSS')} MiB, peak {status('VmHWM')} MiB"
        )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
