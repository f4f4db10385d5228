"""Arrow values built from bytes, not from Python objects.

Handing pyarrow a Python value (``pa.array([...])``, ``pa.scalar(...)``, a ``str`` argument to a
compute function, ``pa.table({...})``) makes it import pandas, when installed, to check the value's
type: about 0.2 s, which a fresh process's first lookup would otherwise pay (DESIGN §11). The state
protocol's read path builds what it needs here instead.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Sequence

import pyarrow as pa

_INT32_LIMIT = 2**31


def string_array(texts: Sequence[str]) -> pa.StringArray:
    encoded = [text.encode() for text in texts]
    offsets = array.array("i", itertools.accumulate((len(b) for b in encoded), initial=0))
    if offsets[-1] >= _INT32_LIMIT:  # beyond 32-bit offsets: pyarrow chunks it its own way
        return pa.array(list(texts), pa.string())
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers)


def string_scalar(text: str) -> pa.StringScalar:
    return string_array([text])[0]


def int64_scalar(value: int) -> pa.Int64Scalar:
    return pa.Array.from_buffers(pa.int64(), 1, [None, pa.py_buffer(array.array("q", [value]))])[0]


def true_array() -> pa.BooleanArray:
    """``[True]``, one element."""
    return pa.Array.from_buffers(pa.bool_(), 1, [None, pa.py_buffer(b"\x01")])


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table with no rows (``Schema.empty_table()`` imports pandas)."""
    return pa.Table.from_batches([], schema=schema)
