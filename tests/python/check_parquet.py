"""Reads a finished run's Parquet files with pyarrow, independently of
stepstore, and checks they hold exactly the expected points.

Usage: check_parquet.py DATA_DIR EXPECTED_JSON
EXPECTED_JSON: {"experiment_id", "run_id", "series": {key: {"steps", "timestamps", "values"}}}
with non-finite values written as "NaN", "Infinity", "-Infinity".
"""

import json
import math
import pathlib
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def decode(value):
    if isinstance(value, str):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[value]
    return float(value)


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def main():
    data_dir, expected_path = sys.argv[1], sys.argv[2]
    expected = json.loads(pathlib.Path(expected_path).read_text())
    run_dir = (
        pathlib.Path(data_dir)
        / "metrics"
        / f"experiment_id={expected['experiment_id']}"
        / f"run_id={expected['run_id']}"
    )
    files = sorted(run_dir.glob("*.parquet"))
    assert len(files) == 1, f"a finished run is compacted into one file, found {files}"

    # File layout: encodings, compression, statistics, sort order.
    metadata = pq.ParquetFile(files[0]).metadata
    columns = {metadata.schema.column(i).name: i for i in range(metadata.num_columns)}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        step = row_group.column(columns["step"])
        value = row_group.column(columns["value"])
        key = row_group.column(columns["key"])
        assert "DELTA_BINARY_PACKED" in step.encodings, step.encodings
        assert "BYTE_STREAM_SPLIT" in value.encodings, value.encodings
        assert any("DICTIONARY" in e for e in key.encodings), key.encodings
        timestamp = row_group.column(columns["timestamp"])
        assert key.compression == "UNCOMPRESSED" and step.compression == "UNCOMPRESSED"
        assert timestamp.compression == "ZSTD" and value.compression == "ZSTD"
        assert key.statistics is not None and key.statistics.has_min_max

    # The Hive-partitioned tree as any engine reads it.
    dataset = ds.dataset(pathlib.Path(data_dir) / "metrics", format="parquet", partitioning="hive")
    table = dataset.to_table(filter=ds.field("run_id") == expected["run_id"])
    schema = table.schema
    assert schema.field("step").type == pa.int64(), schema
    assert schema.field("timestamp").type == pa.timestamp("ms", tz="UTC"), schema
    assert schema.field("value").type == pa.float64(), schema
    rows = table.to_pydict()
    assert all(str(e) == str(expected["experiment_id"]) for e in rows["experiment_id"])

    # Sorted by (key, step, timestamp) within the file.
    file_rows = pq.read_table(files[0]).to_pydict()
    order = list(zip(file_rows["key"], file_rows["step"], file_rows["timestamp"]))
    assert order == sorted(order), "rows are sorted by key, step, timestamp"

    got = {}
    for key, step, timestamp, value in zip(rows["key"], rows["step"], rows["timestamp"], rows["value"]):
        series = got.setdefault(key, [])
        series.append((step, int(timestamp.timestamp() * 1000), value))
    assert sorted(got) == sorted(expected["series"]), (sorted(got), sorted(expected["series"]))
    total = 0
    for key, want in expected["series"].items():
        have = sorted(got[key], key=lambda point: (point[0], point[1]))
        assert [p[0] for p in have] == want["steps"], f"steps of {key}"
        assert [p[1] for p in have] == want["timestamps"], f"timestamps of {key}"
        for (step, _, value), wanted in zip(have, want["values"]):
            assert same(value, decode(wanted)), f"{key} step {step}: {value} != {wanted}"
        total += len(have)
    print(f"pyarrow read {total} points in {len(expected['series'])} keys from {files[0].name}: all exact")


if __name__ == "__main__":
    main()
