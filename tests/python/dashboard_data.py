"""Data for the dashboard's browser tests and benchmark, loaded through the
server's own APIs: runs with nested params and tags (`POST /api/v1/runs`),
dataset inputs (MLflow's `runs/log-inputs`), and curves of any length sent
in bulk as Arrow IPC streams (`POST /api/v1/ingest`), generated with
pyarrow's compute functions so a million points take a fraction of a
second.
"""

import math
import time

import pyarrow as pa
import pyarrow.compute as pc
import requests

ARROW = "application/vnd.apache.arrow.stream"
# Points per ingest request (the server takes at most 4,000,000).
CHUNK = 1_000_000
# One point every 10 ms of wall time.
STEP_MS = 10


class Server:
    """A stepstore server's HTTP API, for loading data."""

    def __init__(self, base_url):
        self.base = base_url.rstrip("/")
        self.http = requests.Session()

    def post(self, path, body):
        response = self.http.post(self.base + path, json=body, timeout=300)
        assert response.ok, f"POST {path}: {response.status_code} {response.text}"
        return response.json()

    def patch(self, path, body):
        response = self.http.patch(self.base + path, json=body, timeout=300)
        assert response.ok, f"PATCH {path}: {response.status_code} {response.text}"
        return response.json()

    def get(self, path):
        response = self.http.get(self.base + path, timeout=300)
        assert response.ok, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def create_run(self, experiment, name, params=None, tags=None, start_time=None):
        body = {"experiment_name": experiment, "run_name": name}
        if params:
            body["params"] = params
        if tags:
            body["tags"] = tags
        if start_time is not None:
            body["start_time"] = start_time
        return self.post("/api/v1/runs", body)["run_id"]

    def finish(self, run_id, status="FINISHED"):
        self.patch(f"/api/v1/runs/{run_id}", {"status": status})

    def log_points(self, run_id, points):
        """Logs `[(key, step, value)]` (timestamps now) through the native API."""
        body = {"points": [{"key": k, "step": s, "value": encode(v)} for k, s, v in points]}
        return self.post(f"/api/v1/runs/{run_id}/metrics", body)

    def ingest(self, run_id, key, steps, values, timestamps):
        """Sends one key's points (pyarrow arrays) as Arrow IPC streams."""
        total = len(steps)
        for offset in range(0, total, CHUNK):
            length = min(CHUNK, total - offset)
            zeros = pa.array([0] * length, pa.int32())
            table = pa.table(
                {
                    "run_id": pa.DictionaryArray.from_arrays(zeros, pa.array([run_id])),
                    "key": pa.DictionaryArray.from_arrays(zeros, pa.array([key])),
                    "step": steps.slice(offset, length),
                    "value": values.slice(offset, length),
                    "timestamp": timestamps.slice(offset, length),
                }
            )
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            response = self.http.post(
                self.base + "/api/v1/ingest",
                data=sink.getvalue().to_pybytes(),
                headers={"content-type": ARROW},
                timeout=600,
            )
            assert response.ok, f"ingest: {response.status_code} {response.text}"

    def log_dataset(self, run_id, name, digest, context):
        self.post(
            "/api/2.0/mlflow/runs/log-inputs",
            {
                "run_id": run_id,
                "datasets": [
                    {
                        "tags": [{"key": "mlflow.data.context", "value": context}],
                        "dataset": {
                            "name": name,
                            "digest": digest,
                            "source_type": "local",
                            "source": '{"uri": "/data/' + name + '"}',
                        },
                    }
                ],
            },
        )


def encode(value):
    if math.isnan(value):
        return "NaN"
    if value == float("inf"):
        return "Infinity"
    if value == float("-inf"):
        return "-Infinity"
    return value


def curve(count, seed, start_ms, scale=1.0, decay=0.25, noise=0.3, every=1):
    """A training curve: `scale * (0.02 + exp(-x / decay) * (1 + noise * u))`
    with x in [0, 1) and u uniform in [-0.5, 0.5), one point every `every`
    steps. Returns (steps, values, timestamps) arrays."""
    steps = pc.multiply(pa.array(range(count), pa.int64()), every)
    x = pc.divide(pc.cast(steps, pa.float64()), float(count * every))
    jitter = pc.add(pc.multiply(pc.subtract(pc.random(count, initializer=seed), 0.5), noise), 1.0)
    values = pc.multiply(
        pc.add(pc.multiply(pc.exp(pc.divide(pc.negate(x), decay)), jitter), 0.02), scale
    )
    timestamps = pc.add(pc.multiply(steps, STEP_MS), start_ms)
    return steps, values, timestamps


def with_value(values, index, value):
    """`values` with the point at `index` replaced by `value`."""
    return pa.concat_arrays(
        [values.slice(0, index), pa.array([value], pa.float64()), values.slice(index + 1)]
    )


SPIKE_STEP = 777_777
SPIKE_VALUE = 42.0


def seed_tests(server):
    """The browser tests' data. Returns the ids and facts the tests check."""
    now = int(time.time() * 1000) - 3_600_000
    seeded = {"sweep": []}
    # A sweep: nested configs, five keys, tags, one dataset input.
    for index, (lr, batch) in enumerate(
        [(0.1, 32), (0.03, 32), (0.01, 64), (0.003, 64), (0.001, 128), (0.0003, 128)]
    ):
        run_id = server.create_run(
            "sweep",
            f"lr={lr} bs={batch}",
            params={
                "optimizer": {"name": "adam", "lr": lr, "betas": {"b1": 0.9, "b2": 0.999}},
                "model": {"layers": 4 + index, "dropout": 0.1},
                "data": {"batch_size": batch},
                "seed": index,
            },
            tags={"team": "vision", "git_sha": f"abc{index}"},
            start_time=now + index * 60_000,
        )
        start = now + index * 60_000
        for key, scale, every, count in [
            ("train/loss", 2.0 + index * 0.2, 1, 5000),
            ("train/acc", 1.0, 1, 5000),
            ("eval/loss", 2.2 + index * 0.2, 50, 100),
            ("eval/acc", 1.0, 50, 100),
            ("lr", lr, 1, 5000),
        ]:
            steps, values, timestamps = curve(
                count, 10 * index + len(key), start, scale, every=every
            )
            if key.endswith("acc"):
                values = pc.subtract(1.0, values)
            server.ingest(run_id, key, steps, values, timestamps)
        if index == 0:
            server.log_dataset(run_id, "mnist-train", "d41d8cd9", "training")
        server.finish(run_id)
        seeded["sweep"].append(run_id)
    # A million-step series with one spike, and a run with NaN and infinities.
    spike = server.create_run("spikes", "one-spike", params={"points": 1_000_000}, start_time=now)
    steps, values, timestamps = curve(1_000_000, 7, now)
    server.ingest(spike, "loss", steps, with_value(values, SPIKE_STEP, SPIKE_VALUE), timestamps)
    server.finish(spike)
    seeded["spike"] = spike
    odd = server.create_run("spikes", "non-finite", start_time=now)
    steps, values, timestamps = curve(1000, 3, now)
    for index, value in [(200, float("nan")), (500, float("inf")), (800, float("-inf"))]:
        values = with_value(values, index, value)
    server.ingest(odd, "loss", steps, values, timestamps)
    server.finish(odd)
    seeded["non_finite"] = odd
    return seeded


def seed_wide(server, runs, params, metrics, experiment="wide"):
    """`runs` runs with `params` params and `metrics` keys (one point each):
    the runs table with thousands of columns."""
    ids = []
    for index in range(runs):
        run_id = server.create_run(
            experiment,
            f"wide-{index:04d}",
            params={f"p{key:04d}": (index * 7 + key) % 13 for key in range(params)},
        )
        if metrics:
            server.post(
                "/api/v1/ingest",
                {
                    "batches": [
                        {
                            "run_id": run_id,
                            "steps": [0],
                            "values": {
                                f"m{key:03d}": [index * 0.001 + key] for key in range(metrics)
                            },
                        }
                    ]
                },
            )
        ids.append(run_id)
    return ids
