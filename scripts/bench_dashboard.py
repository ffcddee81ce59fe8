"""Dashboard benchmark (run by scripts/bench-dashboard.sh): starts a
stepstore server on a temporary data directory, loads 20 runs x 4 keys x
1,000,000 points (Arrow IPC bulk ingest), 1,000 runs x 200 params, and one
run each of 10,000,000 and 1,000 points, then opens the dashboard in
headless Chromium and reports, from the `performance` marks the page sets:

- curves: from opening the charts of the 20 runs x 4 keys to every chart
  drawn (`curves:open` -> `curves:drawn`), and from navigation start;
- the 10-million-point curve against the 1,000-point one;
- runs table: from the runs/search request to the table drawn (`runs`).

Each figure is the median of --repeat page loads (a fresh page each time,
after one warm-up load), printed as a table and as JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

import dashboard_data
from browser import Browser

KEYS = ["train/loss", "train/acc", "grad_norm", "lr"]


def start_server(binary, data_dir):
    process = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0", "--wal-sync", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    for line in process.stdout:
        if line.startswith("stepstore listening on "):
            # Keep draining stdout so the server never blocks on it.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, line.split(" on ", 1)[1].strip()
    raise SystemExit("the server did not start")


def metric(server, name):
    text = server.http.get(server.base + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def load_curves(server, runs, points):
    """`runs` finished runs with the four keys of `points` points each; one spike per series."""
    start = int(time.time() * 1000) - points * dashboard_data.STEP_MS
    ids = []
    for index in range(runs):
        run_id = server.create_run(
            "bench-curves", f"run-{index:02d}", params={"lr": 0.001 * (index + 1)}, start_time=start
        )
        for key_index, key in enumerate(KEYS):
            steps, values, timestamps = dashboard_data.curve(
                points, index * 10 + key_index, start, scale=1 + index * 0.05
            )
            values = dashboard_data.with_value(
                values, (index * 7919 + key_index * 104729) % points, 25.0
            )
            server.ingest(run_id, key, steps, values, timestamps)
        server.finish(run_id)
        ids.append(run_id)
    return ids


def load_one(server, name, points):
    start = int(time.time() * 1000) - points * dashboard_data.STEP_MS
    run_id = server.create_run("bench-length", name, start_time=start)
    steps, values, timestamps = dashboard_data.curve(points, 1, start)
    server.ingest(
        run_id, "loss", steps, dashboard_data.with_value(values, points // 3, 25.0), timestamps
    )
    server.finish(run_id)
    return run_id


def load_table(server, runs, params):
    def create(index):
        return server.create_run(
            "bench-table",
            f"trial-{index:04d}",
            params={f"param_{key:03d}": (index * 31 + key) % 97 for key in range(params)},
        )

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(create, range(runs)))
    batches = [
        {
            "run_id": run_id,
            "steps": [0],
            "values": {"loss": [0.5 + i * 1e-4], "acc": [0.9 - i * 1e-4]},
        }
        for i, run_id in enumerate(ids)
    ]
    for offset in range(0, len(batches), 200):
        server.post("/api/v1/ingest", {"batches": batches[offset : offset + 200]})
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(server.finish, ids))
    return ids


def wait_settled(server, timeout=300):
    """Waits until every point is persisted (the finished runs' files written)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (
            metric(server, "stepstore_buffer_bytes") == 0
            and metric(server, "stepstore_in_flight_bytes") == 0
        ):
            return
        time.sleep(0.5)
    print("warning: buffers not persisted yet; measuring anyway", file=sys.stderr)


def measure(browser, path, read, repeat):
    """Opens `path` repeat + 1 times (the first is a warm-up) and returns the `read` figures."""
    figures = []
    for attempt in range(repeat + 1):
        browser.driver.get("about:blank")
        browser.open(path)
        deadline = time.time() + 120
        while (value := browser.driver.execute_script(read)) is None:
            if time.time() > deadline:
                raise SystemExit(f"{path}: the page never reported its figure")
            time.sleep(0.02)
        if attempt:
            figures.append(value)
    return figures


CURVES = "return window.stepstore && window.stepstore.charts.perf()"
TABLE = (
    "const m = performance.getEntriesByName('runs', 'measure');"
    "return m.length ? {open_to_drawn_ms: m[0].duration, navigation_to_drawn_ms: m[0].startTime + m[0].duration} : null"
)


def median(figures, name):
    return statistics.median(figure[name] for figure in figures)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", required=True)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--table-runs", type=int, default=1000)
    parser.add_argument("--table-params", type=int, default=200)
    parser.add_argument("--long-points", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--shots", default=os.path.join(tempfile.gettempdir(), "stepstore-bench-dashboard")
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stepstore-bench-") as data_dir:
        process, base = start_server(args.binary, data_dir)
        try:
            server = dashboard_data.Server(base)
            started = time.time()
            curves = load_curves(server, args.runs, args.points)
            long_run = load_one(server, "long", args.long_points)
            short_run = load_one(server, "one-thousand", 1_000)
            table = load_table(server, args.table_runs, args.table_params)
            wait_settled(server)
            loaded = time.time() - started
            experiments = {
                e["name"]: e["experiment_id"]
                for e in server.get("/api/v1/experiments")["experiments"]
            }
            print(
                f"loaded {args.runs} x {len(KEYS)} x {args.points:,} points, {args.long_points:,} + 1,000 points, "
                f"{len(table):,} runs x {args.table_params} params in {loaded:.1f} s",
                file=sys.stderr,
            )
            browser = Browser(base, args.shots)
            try:
                curves_path = f"/ui/?view=charts&exp={experiments['bench-curves']}&runs={','.join(curves)}&keys={','.join(KEYS)}"
                curve_figures = measure(browser, curves_path, CURVES, args.repeat)
                browser.screenshot("bench-curves")
                long_path = (
                    f"/ui/?view=charts&exp={experiments['bench-length']}&runs={long_run}&keys=loss"
                )
                long_figures = measure(browser, long_path, CURVES, args.repeat)
                short_path = (
                    f"/ui/?view=charts&exp={experiments['bench-length']}&runs={short_run}&keys=loss"
                )
                short_figures = measure(browser, short_path, CURVES, args.repeat)
                table_figures = measure(
                    browser, f"/ui/?exp={experiments['bench-table']}", TABLE, args.repeat
                )
                browser.screenshot("bench-table")
                failures, errors = browser.failures(), browser.js_errors()
            finally:
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=120)

    report = {
        "curves": {
            "runs": args.runs,
            "keys": len(KEYS),
            "points_per_series": args.points,
            "points_drawn": curve_figures[0]["points"],
            "open_to_drawn_ms": median(curve_figures, "open_to_drawn_ms"),
            "navigation_to_drawn_ms": median(curve_figures, "navigation_to_drawn_ms"),
            "all_open_to_drawn_ms": [round(f["open_to_drawn_ms"], 1) for f in curve_figures],
        },
        "long_curve": {
            "points": args.long_points,
            "open_to_drawn_ms": median(long_figures, "open_to_drawn_ms"),
            "navigation_to_drawn_ms": median(long_figures, "navigation_to_drawn_ms"),
        },
        "one_thousand_points": {
            "open_to_drawn_ms": median(short_figures, "open_to_drawn_ms"),
            "navigation_to_drawn_ms": median(short_figures, "navigation_to_drawn_ms"),
        },
        "runs_table": {
            "runs": args.table_runs,
            "params": args.table_params,
            "search_to_drawn_ms": median(table_figures, "open_to_drawn_ms"),
            "navigation_to_drawn_ms": median(table_figures, "navigation_to_drawn_ms"),
        },
        "failed_requests": failures,
        "javascript_errors": errors,
    }
    c, t = report["curves"], report["runs_table"]
    print(f"\nmedian of {args.repeat} page loads (after a warm-up), headless Chromium:")
    print("| view | open -> drawn | navigation start -> drawn |")
    print("|---|---|---|")
    print(
        f"| curves: {c['runs']} runs x {c['keys']} keys x {c['points_per_series']:,} points ({c['points_drawn']:,} drawn) | {c['open_to_drawn_ms']:.0f} ms | {c['navigation_to_drawn_ms']:.0f} ms |"
    )
    for name, label in (
        ("long_curve", f"one curve of {args.long_points:,} points"),
        ("one_thousand_points", "one curve of 1,000 points"),
    ):
        f = report[name]
        print(
            f"| {label} | {f['open_to_drawn_ms']:.0f} ms | {f['navigation_to_drawn_ms']:.0f} ms |"
        )
    print(
        f"| runs table: {t['runs']:,} runs x {t['params']} params | {t['search_to_drawn_ms']:.0f} ms | {t['navigation_to_drawn_ms']:.0f} ms |"
    )
    print(json.dumps(report, indent=2))
    if failures or errors:
        raise SystemExit(f"the page failed: {failures} {errors}")


if __name__ == "__main__":
    main()
