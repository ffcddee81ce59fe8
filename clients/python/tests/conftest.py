"""Fixtures of the client's tests: the server the Rust test started
(``STEPSTORE_URL``), private servers started from the built binary
(``STEPSTORE_BINARY``) for tests that stop one, and a proxy that answers
503, loses answers or refuses connections on demand."""

import http.client
import http.server
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest


def _env(name, why):
    value = os.environ.get(name)
    if not value:
        pytest.exit(
            f"{name} is not set: {why} (cargo test --test python_client sets it; see "
            f"./scripts/test.sh)",
            returncode=2,
        )
    return value


@pytest.fixture(scope="session")
def server_url():
    return _env("STEPSTORE_URL", "these tests need a running stepstore server").rstrip("/")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test has its own spool; no test sees another's URL or token."""
    monkeypatch.setenv("STEPSTORE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("STEPSTORE_TOKEN", raising=False)


@pytest.fixture
def unique():
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:10]}"


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def run_info(url, run_id):
    return get_json(f"{url}/api/v1/runs/{run_id}")


def series(url, run_id, key):
    """Every point of a key: (steps, values) in step order."""
    quoted = urllib.parse.quote(key, safe="/")
    data = get_json(f"{url}/api/v1/runs/{run_id}/metrics/{quoted}?max_points=0")
    return data["steps"], [float(value) for value in data["values"]]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateServer:
    """A stepstore server of this test: its own data directory and port,
    stopped and started again on both."""

    def __init__(self, binary, data_dir, extra_args=()):
        self.binary = binary
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.log = open(os.path.join(data_dir, "server.log"), "ab")

    def start(self):
        self.process = subprocess.Popen(
            [
                self.binary,
                "serve",
                "--data-dir",
                os.path.join(self.data_dir, "data"),
                "--listen",
                f"127.0.0.1:{self.port}",
                *self.extra_args,
            ],
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                get_json(f"{self.url}/health")
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited: see {self.log.name}") from None
                time.sleep(0.05)
        raise RuntimeError("the server did not start within 30 s")

    def create_token(self, name, scope):
        """A token made offline (the server stopped), as an operator would."""
        done = subprocess.run(
            [
                self.binary,
                "token",
                "create",
                "--data-dir",
                os.path.join(self.data_dir, "data"),
                "--name",
                name,
                "--scope",
                scope,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def kill(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_server(tmp_path):
    binary = _env("STEPSTORE_BINARY", "this test starts and stops its own server")
    server = PrivateServer(binary, str(tmp_path))
    yield server.start()
    server.kill()
    server.log.close()


@pytest.fixture
def server_with_auth(tmp_path):
    """A server with --auth required and a write token for trainers."""
    binary = _env("STEPSTORE_BINARY", "this test starts its own server")
    server = PrivateServer(binary, str(tmp_path), ["--auth", "required"])
    server.token = server.create_token("trainer", "write")
    yield server.start()
    server.kill()
    server.log.close()


class Proxy:
    """Forwards HTTP requests to ``target``; ``mode`` decides what happens to
    requests to /api/v1/ingest: ``forward``; ``unavailable`` (503 with
    Retry-After, not forwarded); ``lose_answers`` (forwarded, then the
    connection is closed without an answer). ``down()`` stops listening
    (connections are refused) and ``up()`` listens again."""

    def __init__(self, target):
        self.target = urllib.parse.urlsplit(target)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "forward"
        self.ingest_seen = 0
        self.ingest_keys = []
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self.connections = set()

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with proxy.lock:
                    proxy.connections.add(self.connection)

            def finish(self):
                with proxy.lock:
                    proxy.connections.discard(self.connection)
                super().finish()

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                ingest = self.path.startswith("/api/v1/ingest")
                if ingest:
                    with proxy.lock:
                        proxy.ingest_seen += 1
                        proxy.ingest_keys.append(self.headers.get("Idempotency-Key"))
                    if proxy.mode == "unavailable":
                        payload = json.dumps(
                            {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}
                        ).encode()
                        self.send_response(503)
                        self.send_header("Retry-After", "0.2")
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                upstream = http.client.HTTPConnection(
                    proxy.target.hostname, proxy.target.port, timeout=60
                )
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in ("host", "connection")
                }
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                if ingest and proxy.mode == "lose_answers":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        return Handler

    def wait_for_ingests(self, count, seconds=10):
        """Waits until ``count`` ingest requests arrived (or ``seconds``)."""
        deadline = time.monotonic() + seconds
        while self.ingest_seen < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.ingest_seen >= count

    def up(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def down(self):
        """Refuses new connections and cuts the open ones (kept-alive ones
        included), as a server that went away."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            for connection in list(self.connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxy(server_url):
    proxy = Proxy(server_url).up()
    yield proxy
    proxy.down()


@pytest.fixture
def scratch():
    with tempfile.TemporaryDirectory() as path:
        yield path
