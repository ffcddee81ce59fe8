"""A run as the training loop sees it: ``log()`` points, params and tags,
``finish()``; and the module-level ``init()`` that creates one."""

import atexit
import json
import logging
import os
import struct
import sys
import threading
import time
import urllib.parse
import weakref
from typing import Any, Dict, Mapping, Optional, Tuple

from ._columns import Segment, coerce_values, encoder
from ._config import flatten_config, param_text
from ._http import Connection, ServerUnreachable, StepstoreError
from ._sender import PointBuffer, Sender
from ._spool import Spool, default_spool_dir
from ._system import SystemMetrics

logger = logging.getLogger("stepstore")

DEFAULT_URL = "http://127.0.0.1:5000"
TERMINAL = ("FINISHED", "FAILED", "KILLED")

_active: "weakref.WeakSet[Run]" = weakref.WeakSet()
_current: Optional["Run"] = None
_exit_status = "FINISHED"


def _server(url: Optional[str], token: Optional[str]):
    url = url or os.environ.get("STEPSTORE_URL") or DEFAULT_URL
    token = token if token is not None else os.environ.get("STEPSTORE_TOKEN") or None
    return url.rstrip("/"), token


def _check_keys(keys) -> None:
    for key in keys:
        if not isinstance(key, str) or not key:
            raise TypeError(f"metric keys must be non-empty strings, not {key!r}")


class Run:
    """A run that logs points in the background.

    ``Run(run_id)`` resumes an existing run (its status goes back to
    ``RUNNING`` and steps continue after the last one logged);
    :func:`stepstore.init` creates a new one. Options are those of ``init``.
    """

    def __init__(
        self,
        run_id: str,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        transport: str = "auto",
        flush_interval: float = 1.0,
        batch_points: int = 500_000,
        max_pending_points: int = 10_000_000,
        on_full: str = "block",
        spool_after: float = 10.0,
        spool_dir: Optional[str] = None,
        timeout: float = 60.0,
        system_metrics: bool = False,
        system_metrics_interval: float = 10.0,
        _created: Optional[Dict[str, Any]] = None,
    ):
        self.url, token = _server(url, token)
        self._token = token
        self._timeout = timeout
        self._api = Connection(self.url, token, timeout)
        self._api_lock = threading.Lock()
        if _created is None:
            info = self._api.json("GET", f"/api/v1/runs/{urllib.parse.quote(run_id)}")
            if info.get("status") != "RUNNING":
                self._api.json(
                    "PATCH", f"/api/v1/runs/{run_id}", {"status": "RUNNING", "end_time": None}
                )
            last_steps = [
                summary.get("last_step", -1) for summary in info.get("metrics", {}).values()
            ]
            self._next_step = max(last_steps, default=-1) + 1
        else:
            info = _created
            self._next_step = 0
        self.id: str = info["run_id"]
        self.name: str = info.get("run_name", "")
        self.experiment_id: str = str(info.get("experiment_id", ""))
        content_type, encode = encoder(transport)
        self.transport = "arrow" if content_type.endswith("arrow.stream") else "json"
        self._buffer = PointBuffer(max_pending_points, on_full, batch_points)
        self._spool = Spool(spool_dir or default_spool_dir(), self.id)
        self._sender = Sender(
            self.id,
            self._buffer,
            lambda: Connection(self.url, token, timeout),
            (content_type, encode),
            self._spool,
            self.url,
            flush_interval,
            spool_after,
        )
        self._sender.start()
        self._finished = False
        self._warned_drop = False
        self._system: Optional[SystemMetrics] = None
        if system_metrics:
            self._system = SystemMetrics(self._log_system, system_metrics_interval)
            self._system.start()
        _active.add(self)
        global _current
        _current = self

    # ---- identity ----

    @property
    def run_url(self) -> str:
        """The run's page in the server's dashboard."""
        query = urllib.parse.urlencode({"view": "run", "exp": self.experiment_id, "run": self.id})
        return f"{self.url}/ui/?{query}"

    @property
    def step(self) -> int:
        """The step the next ``log()`` without ``step`` gets."""
        return self._next_step

    def __repr__(self) -> str:
        return f"<stepstore.Run {self.id} {self.name!r} at {self.url}>"

    # ---- logging ----

    def log(
        self,
        data: Mapping[str, Any],
        step: Optional[int] = None,
        *,
        timestamp: Optional[int] = None,
    ) -> None:
        """Logs one value per key at ``step`` (the step after the previous
        ``log()`` when omitted) and ``timestamp`` (ms since the epoch; now
        when omitted). Returns at once: the points are sent in the
        background. Values must be numbers (int, float, bool, numpy
        scalars, 0-d tensors); NaN and infinities are kept."""
        if self._finished:
            raise RuntimeError(f"run {self.id} is finished; start or resume a run to log")
        if step is None:
            step = self._next_step
        elif type(step) is not int:
            step = int(step)
        when = int(time.time() * 1000) if timestamp is None else int(timestamp)
        self._append(data, step, when)
        self._next_step = step + 1

    def _append(self, data: Mapping[str, Any], step: int, when: int) -> None:
        keys = tuple(data)
        if not keys:
            return
        buffer = self._buffer
        with buffer.lock:
            if buffer.pending >= buffer.max_pending and not buffer.wait_for_room():
                buffer.dropped += len(keys)
                dropped = True
            else:
                dropped = False
                segment = buffer.segments.get(keys)
                if segment is None:
                    _check_keys(keys)
                    segment = buffer.segments[keys] = Segment(keys)
                try:
                    # One C call packs every value (float, int, bool,
                    # anything with __float__) as doubles.
                    packed = segment.packer.pack(*data.values())
                except (struct.error, TypeError, OverflowError):
                    packed = segment.packer.pack(*coerce_values(data))
                segment.values.frombytes(packed)
                segment.steps.append(step)
                segment.times.append(when)
                buffer.pending += len(keys)
                if buffer.oldest is None:
                    buffer.oldest = time.monotonic()
        if dropped:
            self._warn_dropped()
        elif buffer.pending >= buffer.batch_points and not self._sender.wake.is_set():
            self._sender.wake.set()

    def _warn_dropped(self) -> None:
        if not self._warned_drop:
            self._warned_drop = True
            logger.warning(
                "stepstore: run %s: the buffer is full (max_pending_points=%d) and on_full='drop': "
                "points are being dropped (see run.stats()['dropped'])",
                self.id,
                self._buffer.max_pending,
            )

    def _log_system(self, values: Dict[str, float], sample: int) -> None:
        # Their own steps (the sample number): the training step is not moved.
        if not self._finished:
            self._append(values, sample, int(time.time() * 1000))

    def log_params(self, params: Any) -> None:
        """Logs params (a dict, possibly nested, or a dataclass, argparse
        namespace or OmegaConf config): flattened to dotted keys, stored as
        ``str(value)``. The same value again is fine; another is an error."""
        self._request("POST", f"/api/v1/runs/{self.id}/params", flatten_config(params))

    def rewind(self, step: int, timeout: Optional[float] = None) -> None:
        """Rewinds the run to ``step`` (a training job restarted from its
        checkpoint at ``step``): the points logged so far with a greater
        step are hidden from every read, and the next ``log()`` without a
        step gets ``step + 1``. Every point logged before is sent first;
        points still waiting in the spool (the server was down) would land
        after the rewind, so they make it a ``RuntimeError`` (``python -m
        stepstore sync``, then rewind), as does a ``timeout`` that passes
        before the points are sent."""
        step = int(step)
        if not self.flush(timeout):
            raise RuntimeError(
                f"cannot rewind run {self.id}: points logged before the rewind are still being sent"
            )
        if self._sender.counts.spooled:
            raise RuntimeError(
                f"cannot rewind run {self.id}: {self._sender.counts.spooled} points logged "
                "before the rewind wait in the spool; sync them first"
            )
        self._request("POST", f"/api/v1/runs/{self.id}/rewind", {"step": step})
        self._next_step = step + 1

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Sets run tags (values stored as strings)."""
        self._request(
            "POST",
            f"/api/v1/runs/{self.id}/tags",
            {str(key): param_text(value) for key, value in tags.items()},
        )

    def _request(self, method: str, path: str, payload: Any) -> Any:
        with self._api_lock:
            return self._api.json(method, path, payload)

    def stats(self) -> Dict[str, Any]:
        """Counts of points: ``sent`` (acknowledged by the server),
        ``pending`` (in memory), ``spooled`` (on disk, waiting for the
        server), ``dropped`` (``on_full='drop'``), ``failed`` (refused by the
        server: see ``last_error``), plus ``retries`` and
        ``blocked_seconds`` (time ``log()`` waited for room)."""
        counts = self._sender.counts
        return {
            "sent": counts.sent,
            "pending": self._buffer.pending + counts.in_flight,
            "spooled": counts.spooled,
            "dropped": self._buffer.dropped,
            "failed": counts.failed,
            "retries": counts.retries,
            "requests": counts.requests,
            "blocked_seconds": self._buffer.blocked_seconds,
            "last_error": counts.last_error,
        }

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every point logged so far was sent (or spooled).
        True unless ``timeout`` passed first."""
        return self._sender.flush(timeout)

    # ---- ending ----

    def finish(self, status: str = "FINISHED", timeout: Optional[float] = None) -> None:
        """Sends what is buffered and sets the run's status (``FINISHED``,
        ``FAILED`` or ``KILLED``). What cannot reach the server within
        ``timeout`` (default: ``spool_after``) is spooled, status included,
        for ``python -m stepstore sync``. Called at interpreter exit for a
        run not finished (``FAILED`` after an uncaught exception)."""
        if self._finished:
            return
        status = status.upper()
        if status not in TERMINAL:
            raise ValueError(f"status must be one of {TERMINAL}, not {status!r}")
        self._finished = True
        if self._system is not None:
            self._system.stop()
        self._sender.close(self._sender.spool_after if timeout is None else timeout)
        update = {"status": status, "end_time": int(time.time() * 1000)}
        if self._sender.spooling or len(self._spool):
            self._spool_update(update)
        else:
            try:
                self._request("PATCH", f"/api/v1/runs/{self.id}", update)
            except (ServerUnreachable, StepstoreError) as error:
                if isinstance(error, StepstoreError) and error.status < 500:
                    raise
                self._spool_update(update)
        self._api.close()
        _active.discard(self)
        global _current
        if _current is self:
            _current = None
        counts = self.stats()
        if counts["spooled"]:
            logger.warning(
                "stepstore: %d points of run %s are spooled in %s; send them with "
                "`python -m stepstore sync`",
                counts["spooled"],
                self.id,
                self._spool.dir,
            )

    def _spool_update(self, update: Dict[str, Any]) -> None:
        self._spool.write(
            "PATCH",
            f"/api/v1/runs/{self.id}",
            "application/json",
            json.dumps(update).encode(),
            self.url,
        )

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.finish("FINISHED")
        elif issubclass(kind, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.finish("FAILED")


def init(
    experiment: Optional[str] = None,
    name: Optional[str] = None,
    config: Any = None,
    tags: Optional[Mapping[str, Any]] = None,
    url: Optional[str] = None,
    token: Optional[str] = None,
    fork_from: Optional[Tuple[str, int]] = None,
    **options: Any,
) -> Run:
    """Creates a run in ``experiment`` (created if missing; the Default
    experiment when omitted) with ``config`` as its params and ``tags``, and
    returns it, ready to ``log()``. ``url`` and ``token`` default to
    ``$STEPSTORE_URL`` (else http://127.0.0.1:5000) and
    ``$STEPSTORE_TOKEN``. ``fork_from=(run_id, step)`` forks that run at
    that step: the new run (in its parent's experiment) starts with the
    parent's params, tags and points up to ``step`` (``config`` and ``tags``
    replace the parent's of the same key), and logs from ``step + 1``.
    Options: see the README's "Python client"."""
    server_url, server_token = _server(url, token)
    _check_options(options)  # before a run is created
    payload: Dict[str, Any] = {
        "params": flatten_config(config),
        "tags": {str(key): param_text(value) for key, value in (tags or {}).items()},
    }
    if experiment is not None:
        payload["experiment_name"] = experiment
    if name is not None:
        payload["run_name"] = name
    if fork_from is not None:
        parent, step = fork_from
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"fork_from=(run_id, step): step must be an int, got {step!r}")
        payload["fork_from"] = {"run_id": str(parent), "step": step}
    connection = Connection(server_url, server_token, options.get("timeout", 60.0))
    try:
        created = connection.json("POST", "/api/v1/runs", payload)
    finally:
        connection.close()
    run = Run(created["run_id"], url=server_url, token=server_token, _created=created, **options)
    if fork_from is not None:
        run._next_step = fork_from[1] + 1
    return run


def _check_options(options: Dict[str, Any]) -> None:
    unknown = set(options) - set(Run.__init__.__kwdefaults__) - {"timeout"}
    unknown.discard("_created")
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    encoder(options.get("transport", "auto"))
    PointBuffer(
        options.get("max_pending_points", 1),
        options.get("on_full", "block"),
        options.get("batch_points", 1),
    )


def current() -> Optional[Run]:
    """The run most recently started and not finished."""
    return _current


def _finish_at_exit() -> None:
    for run in list(_active):
        try:
            run.finish(_exit_status)
        except Exception as error:  # at exit: report, never raise
            print(f"stepstore: could not finish run {run.id}: {error}", file=sys.stderr)


_previous_hook = sys.excepthook


def _excepthook(kind, error, traceback) -> None:
    global _exit_status
    _exit_status = "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
    _previous_hook(kind, error, traceback)


sys.excepthook = _excepthook
atexit.register(_finish_at_exit)
