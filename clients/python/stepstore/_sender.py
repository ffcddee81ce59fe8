"""The point buffer a run's ``log()`` appends to, and the background
thread that sends it.

``log()`` appends to :class:`PointBuffer` under a short lock. The
:class:`Sender` thread wakes when a batch's worth of points is pending or
``flush_interval`` passed, takes everything, encodes it in batches of at
most ``batch_points`` points and sends them in order, each with its own
``Idempotency-Key``. A batch whose answer does not come back is sent again
with the same key (the server stores it once). While the server stays
unreachable for ``spool_after`` seconds, batches go to the on-disk spool
instead, in order, and the sender sends the spool first once the server
answers again.
"""

import logging
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

from ._columns import Segment, take_batches
from ._http import Connection, ServerUnreachable, StepstoreError
from ._spool import Spool, move_aside, send_spooled

logger = logging.getLogger("stepstore")

# Most points in one request: about 32 MiB of Arrow IPC (the server takes
# 64 MiB per request by default, --max-request-mb).
MAX_BATCH_POINTS = 1_000_000

# Answers after which the same request may succeed later.
RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504, 507}


class BufferFull(Exception):
    """The buffer stayed full for the whole ``block_timeout``."""


class PointBuffer:
    """Points logged and not yet taken by the sender, per key tuple."""

    def __init__(self, max_pending: int, on_full: str, batch_points: int):
        if on_full not in ("block", "drop"):
            raise ValueError(f"on_full must be 'block' or 'drop', not {on_full!r}")
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.segments: Dict[Tuple[str, ...], Segment] = {}
        self.pending = 0
        self.max_pending = max(1, int(max_pending))
        if not 1 <= int(batch_points) <= MAX_BATCH_POINTS:
            raise ValueError(
                f"batch_points must be 1 to {MAX_BATCH_POINTS:,} (a batch must fit the server's "
                f"request limit, 64 MiB by default), not {batch_points}"
            )
        self.batch_points = int(batch_points)
        self.on_full = on_full
        self.dropped = 0
        self.blocked_seconds = 0.0
        self.oldest: Optional[float] = None

    def wait_for_room(self) -> bool:
        """Called with the lock held when the buffer is full: waits for the
        sender (``block``) or refuses (``drop``). True when there is room."""
        if self.on_full == "drop":
            return False
        started = time.monotonic()
        while self.pending >= self.max_pending:
            self.room.wait(0.5)
        self.blocked_seconds += time.monotonic() - started
        return True

    def take(self) -> List[Segment]:
        """Everything pending, in the order the key tuples first appeared."""
        with self.lock:
            segments = list(self.segments.values())
            self.segments = {}
            self.pending = 0
            self.oldest = None
            self.room.notify_all()
        return segments


class Counts:
    """What became of the points logged (read with ``Run.stats()``)."""

    def __init__(self):
        self.sent = 0
        self.spooled = 0
        self.failed = 0
        self.retries = 0
        self.requests = 0
        self.replayed = 0
        self.in_flight = 0
        self.last_error: Optional[str] = None


class Sender(threading.Thread):
    """Sends a run's points in the background (a daemon thread: the run's
    ``finish()``, also called at interpreter exit, stops it)."""

    def __init__(
        self,
        run_id: str,
        buffer: PointBuffer,
        connect: Callable[[], Connection],
        encoder: Tuple[str, Callable],
        spool: Spool,
        url: str,
        flush_interval: float,
        spool_after: float,
    ):
        super().__init__(name=f"stepstore-sender-{run_id[:8]}", daemon=True)
        self.run_id = run_id
        self.buffer = buffer
        self.connection = connect()
        self.content_type, self.encode = encoder
        self.spool = spool
        self.url = url
        self.flush_interval = flush_interval
        self.spool_after = spool_after
        self.counts = Counts()
        self.wake = threading.Event()
        self._flushed = threading.Condition()
        self._flush_requests = 0
        self._flushes_done = 0
        self._closing = False
        self._close_deadline: Optional[float] = None
        # A spool left by an earlier process for this run is sent first.
        self.spooling = len(spool) > 0
        self._next_probe = 0.0

    # ---- called from the training thread ----

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until everything logged so far was sent or spooled."""
        with self._flushed:
            self._flush_requests += 1
            wanted = self._flush_requests
        self.wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._flushed:
            while self._flushes_done < wanted:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not self.is_alive():
                    return False
                self._flushed.wait(0.2 if remaining is None else min(remaining, 0.2))
        return True

    def close(self, timeout: float) -> None:
        """Sends what is left (spooling what cannot be sent within
        ``timeout``) and stops."""
        self._close_deadline = time.monotonic() + timeout
        self._closing = True
        self.wake.set()
        self.join(timeout + 5.0)

    # ---- the thread ----

    def run(self) -> None:
        try:
            while True:
                self.wake.wait(self.flush_interval)
                self.wake.clear()
                with self._flushed:
                    flushes = self._flush_requests
                closing = self._closing
                self._send_pending()
                with self._flushed:
                    self._flushes_done = max(self._flushes_done, flushes)
                    self._flushed.notify_all()
                if closing:
                    return
        except Exception:  # never dies silently: the points would be lost unseen
            logger.exception("stepstore: the sender of run %s stopped", self.run_id)
            self.counts.last_error = "the sender stopped; see the log"
            raise
        finally:
            self.connection.close()

    def _send_pending(self) -> None:
        if self.spooling:
            self._drain_spool()
        segments = self.buffer.take()
        if not segments:
            return
        for batch in take_batches(segments, self.buffer.batch_points):
            points = sum(rows.points for rows in batch)
            self.counts.in_flight = points
            body = self.encode(self.run_id, batch)
            self._deliver(body, uuid.uuid4().hex, points)
            self.counts.in_flight = 0

    def _give_up_by(self, first_failure: float) -> float:
        deadline = first_failure + self.spool_after
        if self._close_deadline is not None:
            deadline = min(deadline, self._close_deadline)
        return deadline

    def _deliver(self, body, key: str, points: int) -> None:
        if self.spooling:
            self._spool(body, key, points)
            return
        headers = {"Content-Type": self.content_type, "Idempotency-Key": key}
        first_failure = None
        delay = 0.1
        while True:
            self.counts.requests += 1
            try:
                response = self.connection.request("POST", "/api/v1/ingest", body, headers)
            except ServerUnreachable as error:
                problem, wait = str(error), None
            else:
                if response.status < 300:
                    self.counts.sent += points
                    if response.headers.get("idempotent-replayed") == "true":
                        self.counts.replayed += points
                    return
                if response.status not in RETRYABLE:
                    self.counts.failed += points
                    self.counts.last_error = str(response.error())
                    logger.error(
                        "stepstore: the server refused %d points of run %s: %s",
                        points,
                        self.run_id,
                        self.counts.last_error,
                    )
                    return
                problem, wait = str(response.error()), response.retry_after()
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            self.counts.retries += 1
            self.counts.last_error = problem
            give_up = self._give_up_by(first_failure)
            if now >= give_up:
                logger.warning(
                    "stepstore: the server has not taken points of run %s for %.0f s (%s); "
                    "spooling to %s until it does",
                    self.run_id,
                    now - first_failure,
                    problem,
                    self.spool.dir,
                )
                self.spooling = True
                self._next_probe = now + 1.0
                self._spool(body, key, points)
                return
            time.sleep(max(0.0, min(wait if wait is not None else delay, give_up - now)))
            delay = min(delay * 2, 2.0)

    def _spool(self, body, key: str, points: int) -> None:
        self.spool.write(
            "POST",
            "/api/v1/ingest",
            self.content_type,
            body,
            self.url,
            idempotency_key=key,
            points=points,
        )
        self.counts.spooled += points

    def _drain_spool(self) -> None:
        """Sends spooled requests in order while the server takes them."""
        now = time.monotonic()
        if now < self._next_probe:
            return
        for request in self.spool:
            try:
                _, problem = send_spooled(self.connection, request)
            except (ServerUnreachable, StepstoreError) as error:
                self.counts.last_error = str(error)
                self._next_probe = time.monotonic() + 2.0
                return
            if problem is None:
                self.spool.remove(request)
                self.counts.spooled -= min(self.counts.spooled, request.points)
                self.counts.sent += request.points
            else:
                move_aside(request, problem)
                self.counts.failed += request.points
                self.counts.last_error = problem
        logger.info("stepstore: the server is back; the spool of run %s was sent", self.run_id)
        self.spooling = False
