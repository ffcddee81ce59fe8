"""DuckDB side of `cargo bench --bench sql`.

Reads a JSON job on stdin: {"queries": {name: sql}, "repeat": n, "warmup": n},
runs each query `warmup` times untimed and `repeat` times timed in one
in-process DuckDB connection, and prints {name: {"median_ms", "min_ms",
"rows"}} as JSON on stdout. The queries read the stepstore Parquet files in
place (read_parquet with Hive partitioning), so both engines read the same
bytes.
"""

import json
import statistics
import sys
import time

import duckdb


def main() -> None:
    job = json.load(sys.stdin)
    connection = duckdb.connect()
    out = {"duckdb_version": duckdb.__version__, "threads": None, "results": {}}
    out["threads"] = connection.execute("SELECT current_setting('threads')").fetchone()[0]
    for name, sql in job["queries"].items():
        rows = 0
        for _ in range(job.get("warmup", 1)):
            rows = len(connection.execute(sql).fetchall())
        times = []
        for _ in range(job["repeat"]):
            started = time.perf_counter()
            rows = len(connection.execute(sql).fetchall())
            times.append((time.perf_counter() - started) * 1000.0)
        out["results"][name] = {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "rows": rows,
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
