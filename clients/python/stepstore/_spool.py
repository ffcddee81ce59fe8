"""The on-disk spool: requests that could not reach the server, kept in
order until they can (``python -m stepstore sync``, or the run's own
sender once the server is back).

Layout: ``<spool_dir>/<run_id>/<sequence>.req``, one request per file,
written to a temporary file, synced and renamed (a file is whole or
absent). A file holds one JSON header line (method, path, content type,
idempotency key, server URL, point count) and the body. Requests are sent
in sequence order per run; the idempotency key of a metrics batch makes
sending it twice harmless.
"""

import json
import os
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from ._http import Connection, ServerUnreachable, StepstoreError

SUFFIX = ".req"


def default_spool_dir() -> Path:
    """``$STEPSTORE_SPOOL_DIR``, or ``~/.cache/stepstore/spool``."""
    configured = os.environ.get("STEPSTORE_SPOOL_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "stepstore" / "spool"


class SpooledRequest:
    """One request read back from the spool."""

    __slots__ = ("path", "header", "body")

    def __init__(self, path: Path, header: dict, body: bytes):
        self.path = path
        self.header = header
        self.body = body

    @property
    def points(self) -> int:
        return int(self.header.get("points", 0))

    def headers(self) -> dict:
        out = {"Content-Type": self.header["content_type"]}
        if self.header.get("idempotency_key"):
            out["Idempotency-Key"] = self.header["idempotency_key"]
        return out


class Spool:
    """The spooled requests of one run."""

    def __init__(self, root: Path, run_id: str):
        self.dir = Path(root) / run_id
        self._next: Optional[int] = None

    def _sequence(self) -> int:
        if self._next is None:
            existing = [int(path.stem) for path in self._files()]
            self._next = max(existing, default=0) + 1
        value = self._next
        self._next += 1
        return value

    def _files(self) -> List[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(
            (path for path in self.dir.iterdir() if path.suffix == SUFFIX and path.stem.isdigit()),
            key=lambda path: int(path.stem),
        )

    def write(
        self,
        method: str,
        path: str,
        content_type: str,
        body: bytes,
        url: str,
        idempotency_key: Optional[str] = None,
        points: int = 0,
    ) -> Path:
        """Appends a request; returns once it is on disk."""
        self.dir.mkdir(parents=True, exist_ok=True)
        header = {
            "method": method,
            "path": path,
            "content_type": content_type,
            "idempotency_key": idempotency_key,
            "url": url,
            "points": points,
            "spooled_at": time.time(),
        }
        target = self.dir / f"{self._sequence():012d}{SUFFIX}"
        temp = target.with_suffix(".tmp")
        with open(temp, "wb") as out:
            out.write(json.dumps(header).encode() + b"\n")
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
        directory = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return target

    def __iter__(self) -> Iterator[SpooledRequest]:
        for path in self._files():
            data = path.read_bytes()
            line, _, body = data.partition(b"\n")
            yield SpooledRequest(path, json.loads(line), body)

    def __len__(self) -> int:
        return len(self._files())

    def remove(self, request: SpooledRequest) -> None:
        request.path.unlink(missing_ok=True)
        if not self._files():
            try:
                self.dir.rmdir()
            except OSError:
                pass


def send_spooled(connection: Connection, request: SpooledRequest) -> Tuple[bool, Optional[str]]:
    """Sends one spooled request. ``(True, None)`` when the server took it
    (or had taken it: a replayed idempotency key); ``(True, message)`` when
    it refused it for good (4xx: the file is moved aside, it can never
    succeed); raises ``ServerUnreachable`` or ``StepstoreError`` (a 5xx,
    409 or 429) when it should be tried again later."""
    response = connection.request(
        request.header["method"], request.header["path"], request.body, request.headers()
    )
    if response.status < 300:
        return True, None
    if response.status in (408, 409, 425, 429) or response.status >= 500:
        raise response.error()
    return True, str(response.error())


def move_aside(request: SpooledRequest, reason: str) -> Path:
    """Keeps a request the server refused for good under ``failed/``."""
    failed = request.path.parent.parent / "failed" / request.path.parent.name
    failed.mkdir(parents=True, exist_ok=True)
    target = failed / request.path.name
    os.replace(request.path, target)
    target.with_suffix(".reason").write_text(reason + "\n")
    return target


def runs_in(root: Path) -> List[str]:
    """Run ids with spooled requests under ``root``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and entry.name != "failed" and any(entry.glob(f"*{SUFFIX}"))
    )


def sync(
    root: Path,
    url: Optional[str] = None,
    token: Optional[str] = None,
    log=print,
) -> Tuple[int, int, int]:
    """Sends every spooled request under ``root`` (to ``url``, or the server
    each was meant for). Returns ``(sent, refused, left)`` request counts."""
    sent = refused = left = 0
    connections = {}
    for run_id in runs_in(root):
        spool = Spool(root, run_id)
        for request in spool:
            target = url or request.header["url"]
            connection = connections.get(target)
            if connection is None:
                connection = connections[target] = Connection(target, token)
            try:
                _, problem = send_spooled(connection, request)
            except (ServerUnreachable, StepstoreError) as error:
                remaining = len(spool)
                left += remaining
                log(f"{run_id}: stopped, {remaining} request(s) left: {error}")
                break
            if problem is None:
                spool.remove(request)
                sent += 1
            else:
                moved = move_aside(request, problem)
                refused += 1
                log(
                    f"{run_id}: the server refused {request.path.name} ({problem}); kept in {moved}"
                )
    for connection in connections.values():
        connection.close()
    return sent, refused, left
