"""Binary ``COPY ... FROM STDIN`` of whole rows, with the column list and field codecs generated
from the ORM tables of :mod:`geoloc.store.schema` (one place names the columns).

Scalars and float arrays use Postgres' binary wire formats; ``halfvec`` uses pgvector's own
codec (:meth:`pgvector.HalfVector.to_binary`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

import numpy as np
from pgvector import HalfVector
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import BigInteger, Double, Integer, String, Table, Text
from sqlalchemy.dialects.postgresql import ARRAY, REAL

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_OID_FLOAT4, _OID_FLOAT8 = 700, 701

FieldCodec = Callable[[Any], bytes]


def _field(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _array(oid: int, size: int) -> FieldCodec:
    dtype = ">f4" if size == 4 else ">f8"

    def encode(values: Any) -> bytes:
        vals = np.ascontiguousarray(values, dtype=dtype).ravel()
        n = vals.size
        body = np.empty((n, 4 + size), dtype=np.uint8)
        body[:, :4] = np.full(n, size, dtype=">i4").view(np.uint8).reshape(n, 4)
        body[:, 4:] = vals.view(np.uint8).reshape(n, size)
        return _field(struct.pack(">iiiii", 1, 0, oid, n, 1) + body.tobytes())

    return encode


def _codec(column: Any) -> FieldCodec:
    """The binary field codec of one column, from its SQL type."""
    t = column.type
    if isinstance(t, HALFVEC):
        return lambda v: _field(HalfVector(np.asarray(v, dtype=np.float32)).to_binary())
    if isinstance(t, ARRAY):
        if isinstance(t.item_type, REAL):
            return _array(_OID_FLOAT4, 4)
        if isinstance(t.item_type, Double):
            return _array(_OID_FLOAT8, 8)
    elif isinstance(t, BigInteger):
        return lambda v: _field(struct.pack(">q", int(v)))
    elif isinstance(t, Integer):
        return lambda v: _field(struct.pack(">i", int(v)))
    elif isinstance(t, REAL):
        return lambda v: _field(struct.pack(">f", float(v)))
    elif isinstance(t, Double):
        return lambda v: _field(struct.pack(">d", float(v)))
    elif isinstance(t, (Text, String)):
        return lambda v: _field(str(v).encode("utf-8"))
    raise TypeError(f"{column.table.name}.{column.name}: no binary COPY codec for {t!r}")


@cache
def _plan(table: Table) -> tuple[tuple[str, ...], tuple[FieldCodec, ...], str]:
    names = tuple(c.name for c in table.columns)
    codecs = tuple(_codec(c) for c in table.columns)
    cols = ", ".join(f'"{n}"' for n in names)
    return names, codecs, f"COPY {table.name} ({cols}) FROM STDIN WITH (FORMAT binary)"


def columns(table: Table) -> tuple[str, ...]:
    """The column names of ``table`` in schema order."""
    return _plan(table)[0]


def copy_rows(cursor: Any, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` (one value per column of ``table``, by name) with one binary COPY."""
    names, codecs, sql = _plan(table)
    count = struct.pack(">h", len(names))
    buf = io.BytesIO()
    buf.write(_HEADER)
    for row in rows:
        buf.write(count)
        for name, codec in zip(names, codecs, strict=True):
            buf.write(codec(row[name]))
    buf.write(_TRAILER)
    buf.seek(0)
    cursor.copy_expert(sql, buf)
