#!/usr/bin/env python3
"""Logging throughput from one Python process, 100 keys per step, against
one stepstore server started here: the stepstore client over Arrow IPC and
over columnar JSON, then the MLflow client, synchronous and with its async
logging. Reports points/s (from the first log() to the end of finish(),
i.e. until the server acknowledged every point) and the caller's side of a
log() call (p50, p99, p99.9).

    python scripts/bench_python_client.py --binary target/release/stepstore

Needs the test venv (pyarrow, mlflow-skinny) and the client
(pip install ./clients/python, or PYTHONPATH=clients/python).
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

KEYS = [f"train/metric_{index:03d}" for index in range(100)]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(binary, data_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).read()
            return process, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


def percentiles(latencies_ns):
    latencies_ns.sort()
    count = len(latencies_ns)

    def at(fraction):
        return latencies_ns[min(count - 1, int(count * fraction))] / 1000.0

    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999)}


def measure(log_step, steps, finish):
    """Calls log_step(step) for each step, timing each call; then finish()."""
    clock = time.perf_counter_ns
    latencies = []
    started = time.perf_counter()
    for step in range(steps):
        values = {key: step * 0.001 + index for index, key in enumerate(KEYS)}
        before = clock()
        log_step(values, step)
        latencies.append(clock() - before)
    logged = time.perf_counter()
    finish()
    done = time.perf_counter()
    points = steps * len(KEYS)
    return {
        "points": points,
        "log_loop_s": logged - started,
        "total_s": done - started,
        "points_per_s": points / (done - started),
        **percentiles(latencies),
    }


def bench_client(url, transport, steps):
    import stepstore

    run = stepstore.init(
        experiment="bench-python-client", name=transport, url=url, transport=transport
    )
    result = measure(lambda values, step: run.log(values, step), steps, run.finish)
    stats = run.stats()
    assert stats["sent"] == steps * len(KEYS), stats
    return result


def bench_mlflow(url, steps, synchronous):
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("bench-python-client")
    run = mlflow.start_run(run_name="mlflow-sync" if synchronous else "mlflow-async")

    def log(values, step):
        mlflow.log_metrics(values, step=step, synchronous=synchronous)

    def finish():
        if not synchronous:
            mlflow.flush_async_logging()
        mlflow.end_run()

    result = measure(log, steps, finish)
    info = json.load(urllib.request.urlopen(f"{url}/api/v1/runs/{run.info.run_id}"))
    assert info["metrics"][KEYS[0]]["count"] == steps, info["metrics"][KEYS[0]]
    return result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/stepstore")
    parser.add_argument("--steps", type=int, default=100_000, help="steps of the Arrow client run")
    parser.add_argument("--json-steps", type=int, default=20_000)
    parser.add_argument("--mlflow-steps", type=int, default=300, help="synchronous MLflow")
    parser.add_argument("--mlflow-async-steps", type=int, default=3_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(args.binary, data_dir)
        try:
            results = {
                "stepstore client, Arrow IPC": bench_client(url, "arrow", args.steps),
                "stepstore client, columnar JSON": bench_client(url, "json", args.json_steps),
                "mlflow.log_metrics, synchronous": bench_mlflow(url, args.mlflow_steps, True),
                "mlflow.log_metrics, async logging": bench_mlflow(
                    url, args.mlflow_async_steps, False
                ),
            }
        finally:
            process.terminate()
            process.wait()
    print(json.dumps(results, indent=2))
    reference = results["mlflow.log_metrics, async logging"]["points_per_s"]
    print(
        f"\n{'':36} {'points':>10} {'points/s':>12} {'vs async':>9} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9}"
    )
    for name, result in results.items():
        print(
            f"{name:36} {result['points']:>10,} {result['points_per_s']:>12,.0f} "
            f"{result['points_per_s'] / reference:>8.1f}x {result['p50_us']:>8.1f} "
            f"{result['p99_us']:>8.1f} {result['p999_us']:>9.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
