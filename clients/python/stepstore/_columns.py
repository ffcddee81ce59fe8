"""In-memory columns of logged points and their encodings for
``POST /api/v1/ingest``.

Points are kept per *key set*: every ``log()`` call with the same keys (in
the same order) appends one row to the same ``Segment`` - its step and
timestamp to two ``array('q')`` and its values, row after row, to one
``array('d')``. That is a few C-level appends per call, whatever the number
of keys, and the value column is already the float64 buffer Arrow needs.
"""

import json
import re
import struct
from array import array
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

try:  # optional: Arrow IPC when present, columnar JSON otherwise
    import pyarrow as pa
    import pyarrow.compute as pc
except ImportError:  # pragma: no cover - exercised by the JSON transport tests
    pa = None
    pc = None

ARROW_STREAM = "application/vnd.apache.arrow.stream"
COLUMNAR_JSON = "application/json"


class Segment:
    """Rows logged with one tuple of keys."""

    __slots__ = ("keys", "packer", "steps", "times", "values")

    def __init__(self, keys: Tuple[str, ...]):
        self.keys = keys
        # Packs one row of values as native doubles (the layout of `values`).
        self.packer = struct.Struct(f"={len(keys)}d")
        self.steps = array("q")
        self.times = array("q")
        self.values = array("d")

    @property
    def rows(self) -> int:
        return len(self.steps)

    @property
    def points(self) -> int:
        return len(self.values)


class Rows:
    """Rows ``start..end`` of a segment (a view: nothing is copied)."""

    __slots__ = ("segment", "start", "end")

    def __init__(self, segment: Segment, start: int, end: int):
        self.segment = segment
        self.start = start
        self.end = end

    @property
    def keys(self) -> Tuple[str, ...]:
        return self.segment.keys

    @property
    def rows(self) -> int:
        return self.end - self.start

    @property
    def points(self) -> int:
        return self.rows * len(self.segment.keys)

    def steps(self) -> array:
        return self.segment.steps[self.start : self.end]

    def times(self) -> array:
        return self.segment.times[self.start : self.end]

    def column(self, index: int) -> array:
        width = len(self.segment.keys)
        return self.segment.values[self.start * width + index : self.end * width : width]


def take_batches(segments: List[Segment], max_points: int) -> List[List[Rows]]:
    """Groups the segments' rows (in order) into batches of at most
    ``max_points`` points (a row is never split), as views."""
    batches: List[List[Rows]] = []
    current: List[Rows] = []
    room = max_points
    for segment in segments:
        width = len(segment.keys)
        start = 0
        while start < segment.rows:
            if room < width and current:
                batches.append(current)
                current, room = [], max_points
            rows = min(segment.rows - start, max(1, room // width))
            current.append(Rows(segment, start, start + rows))
            room -= rows * width
            start += rows
    if current:
        batches.append(current)
    return batches


# ---- Arrow IPC -----------------------------------------------------------

# Per key count: (row of each point, key of each point) for as many points
# as a batch may hold, built once; a batch takes a zero-copy slice.
_INDICES: Dict[int, Tuple["pa.Array", "pa.Array"]] = {}


def _indices(width: int, points: int):
    cached = _INDICES.get(width)
    if cached is None or len(cached[0]) < points:
        size = max(points, 1 << 16)
        positions = pa.array(array("i", range(size)), type=pa.int32())
        rows = pc.divide(positions, pa.scalar(width, pa.int32()))  # integer division
        keys = pc.subtract(positions, pc.multiply(rows, pa.scalar(width, pa.int32())))
        cached = _INDICES[width] = (rows, keys)
    return cached[0].slice(0, points), cached[1].slice(0, points)


_SCHEMA = None


def _schema():
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = pa.schema(
            [
                ("run_id", pa.dictionary(pa.int32(), pa.string())),
                ("key", pa.dictionary(pa.int32(), pa.string())),
                ("step", pa.int64()),
                ("timestamp", pa.int64()),
                ("value", pa.float64()),
            ]
        )
    return _SCHEMA


def encode_arrow(run_id: str, batch: Sequence[Rows]):
    """An Arrow IPC stream of the rows' points: columns ``run_id`` and
    ``key`` (dictionaries), ``step``, ``timestamp``, ``value``. The value
    column is the logged buffer itself; the others are built by Arrow's
    kernels, which run without the GIL (the training thread keeps it)."""
    schema = _schema()
    run_dictionary = pa.array([run_id], pa.string())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for rows in batch:
            segment = rows.segment
            width = len(segment.keys)
            n = rows.points
            row_index, key_index = _indices(width, n)
            steps = pa.Array.from_buffers(
                pa.int64(), rows.rows, [None, pa.py_buffer(segment.steps)], offset=rows.start
            )
            times = pa.Array.from_buffers(
                pa.int64(), rows.rows, [None, pa.py_buffer(segment.times)], offset=rows.start
            )
            repeated = pa.RecordBatch.from_arrays([steps, times], ["step", "timestamp"]).take(
                row_index
            )
            values = pa.Array.from_buffers(
                pa.float64(), n, [None, pa.py_buffer(segment.values)], offset=rows.start * width
            )
            batch_out = pa.RecordBatch.from_arrays(
                [
                    pa.DictionaryArray.from_arrays(
                        pa.repeat(pa.scalar(0, pa.int32()), n), run_dictionary
                    ),
                    pa.DictionaryArray.from_arrays(key_index, pa.array(segment.keys, pa.string())),
                    repeated.column(0),
                    repeated.column(1),
                    values,
                ],
                schema=schema,
            )
            writer.write_batch(batch_out)
    return sink.getvalue()


# ---- columnar JSON -------------------------------------------------------

_NON_FINITE = re.compile(r"-?Infinity|NaN")


def _json_floats(values: Iterable[float]) -> str:
    # json writes non-finite floats as bare NaN/Infinity; the API wants the
    # strings (protobuf's JSON mapping). The text holds only numbers here.
    text = json.dumps(list(values))
    return _NON_FINITE.sub(lambda match: f'"{match.group(0)}"', text)


def encode_json(run_id: str, batch: Sequence[Rows]) -> bytes:
    """A columnar JSON body: one batch object per run of rows."""
    parts = []
    for rows in batch:
        columns = ",".join(
            f"{json.dumps(key)}:{_json_floats(rows.column(index))}"
            for index, key in enumerate(rows.keys)
        )
        parts.append(
            f'{{"run_id":{json.dumps(run_id)},"steps":{json.dumps(rows.steps().tolist())},'
            f'"timestamps":{json.dumps(rows.times().tolist())},"values":{{{columns}}}}}'
        )
    return ('{"batches":[' + ",".join(parts) + "]}").encode()


def encoder(transport: str):
    """``(content_type, encode)`` for ``"arrow"``, ``"json"`` or ``"auto"``
    (Arrow when pyarrow is installed)."""
    if transport == "auto":
        transport = "arrow" if pa is not None else "json"
    if transport == "arrow":
        if pa is None:
            raise ImportError("transport='arrow' needs pyarrow: pip install 'stepstore[arrow]'")
        return ARROW_STREAM, encode_arrow
    if transport == "json":
        return COLUMNAR_JSON, encode_json
    raise ValueError(f"transport must be 'auto', 'arrow' or 'json', not {transport!r}")


def coerce_values(data: Dict[str, object]) -> List[float]:
    """The values of ``data`` as floats, or ``TypeError`` naming the first
    key whose value is not a number (the slow path of ``log()``)."""
    out = []
    for key, value in data.items():
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError("a string")
            out.append(float(value))  # numpy scalars, 0-d tensors, Decimal, bool
        except (TypeError, ValueError, OverflowError) as error:
            raise TypeError(
                f"metric {key!r} has a value of type {type(value).__name__} ({value!r:.80}); "
                f"metric values must be numbers"
            ) from error
    return out


def optional_int(value: Optional[int], what: str) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be an integer, not {value!r}") from error
