"""stepstore's Python client: log training metrics from a training loop
without blocking it.

    import stepstore

    run = stepstore.init(experiment="mnist", name="baseline", config=cfg)
    for step in range(n):
        run.log({"train/loss": loss, "lr": lr}, step=step)
    run.finish()

``log()`` only appends to in-memory columns; a background thread sends them
to the server's bulk endpoint (Arrow IPC with pyarrow, columnar JSON
without), retries with the same idempotency key, and spools to disk while
the server is unreachable (``python -m stepstore sync`` sends the spool).
"""

from typing import Any, Mapping, Optional

from ._config import flatten_config
from ._http import ServerUnreachable, StepstoreError
from ._run import Run, current, init
from ._spool import default_spool_dir, sync

__all__ = [
    "Run",
    "ServerUnreachable",
    "StepstoreError",
    "current",
    "default_spool_dir",
    "finish",
    "flatten_config",
    "init",
    "log",
    "sync",
]

__version__ = "0.1.0"


def _current_or_fail() -> Run:
    run = current()
    if run is None:
        raise RuntimeError("no active run: call stepstore.init() first")
    return run


def log(data: Mapping[str, Any], step: Optional[int] = None, **options: Any) -> None:
    """``log()`` on the run most recently started (see ``Run.log``)."""
    _current_or_fail().log(data, step, **options)


def finish(status: str = "FINISHED") -> None:
    """``finish()`` of the run most recently started."""
    _current_or_fail().finish(status)
