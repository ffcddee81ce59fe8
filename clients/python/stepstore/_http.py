"""A small HTTP/1.1 client over one kept-alive connection (standard library
only), and the errors of the stepstore API."""

import http.client
import json
import socket
import urllib.parse
from typing import Any, Dict, Mapping, Optional


class StepstoreError(Exception):
    """An error answer of the server (``{"error_code", "message"}``)."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message


class ServerUnreachable(ConnectionError):
    """The server could not be reached (refused, reset, timed out)."""


# Failures of the connection itself: the request may or may not have
# reached the server.
NETWORK_ERRORS = (OSError, http.client.HTTPException, socket.timeout)


class Response:
    """A status, the headers that matter here and the body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}

    def error(self) -> StepstoreError:
        try:
            parsed = json.loads(self.body)
            code = parsed.get("error_code", "UNKNOWN")
            message = parsed.get("message", "")
        except (ValueError, AttributeError):
            code, message = "UNKNOWN", self.body[:500].decode("utf-8", "replace")
        return StepstoreError(self.status, code, message)

    def retry_after(self) -> Optional[float]:
        value = self.headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return None


class Connection:
    """Requests to one server over a kept-alive connection, reopened after a
    failure. Not thread-safe: each thread has its own."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 60.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"the server URL must be http://host:port or https://..., not {url!r}")
        self.url = url.rstrip("/")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._base_path = parsed.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def _open(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Response:
        """Sends one request; raises ``ServerUnreachable`` when the connection
        fails (the connection is reopened by the next request)."""
        all_headers = {"Accept": "application/json"}
        if self._token:
            all_headers["Authorization"] = f"Bearer {self._token}"
        if headers:
            all_headers.update(headers)
        conn = self._open()
        try:
            conn.request(method, self._base_path + path, body=body, headers=all_headers)
            answer = conn.getresponse()
            data = answer.read()
        except NETWORK_ERRORS as error:
            self.close()
            raise ServerUnreachable(f"{method} {self.url}{path}: {error}") from error
        if answer.will_close:
            self.close()
        wanted = {"retry-after", "idempotent-replayed", "content-type"}
        kept = {
            name.lower(): value for name, value in answer.getheaders() if name.lower() in wanted
        }
        return Response(answer.status, kept, data)

    def json(self, method: str, path: str, payload: Any = None) -> Any:
        """A JSON request whose error answers raise ``StepstoreError``."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else None
        response = self.request(method, path, body, headers)
        if response.status >= 400:
            raise response.error()
        return response.json()
