"""What one ranged GET costs on moto's S3 server, by range size.

The store benchmark (`cargo bench --bench store`) reads from moto; this
shows where its floor is. moto reads the whole object for every GET, ranged
or not (`FakeKey.value` in moto/s3/models.py), so a small range of a large
object costs about as much as a large one, and requests to one object take
turns (its lock). Run with the test venv's Python:

    ~/.cache/stepstore-venv/bin/python scripts/moto_range_cost.py
"""

import os
import socket
import subprocess
import sys
import time

import boto3

OBJECT_BYTES = 68 << 20  # the 10 M-point file of the store benchmark
SIZES = [16 << 10, 1 << 20, 10 << 20, 67 << 20]


def main() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        deadline = time.time() + 60
        while True:
            try:
                client.create_bucket(Bucket="range-cost")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        client.put_object(Bucket="range-cost", Key="object", Body=os.urandom(OBJECT_BYTES))
        print(f"object of {OBJECT_BYTES >> 20} MiB; median of 9 GETs each")
        for size in SIZES:
            times = []
            for _ in range(9):
                started = time.perf_counter()
                body = client.get_object(
                    Bucket="range-cost", Key="object", Range=f"bytes=0-{size - 1}"
                )["Body"].read()
                times.append(time.perf_counter() - started)
                assert len(body) == size
            times.sort()
            print(f"range of {size >> 10:>6} KiB: {times[4] * 1000:6.1f} ms")
    finally:
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    main()
