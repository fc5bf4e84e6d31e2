"""One user SQL statement against the tile database (``geoloc sql``): read-only unless asked.

The statement is sent as is through the DBAPI cursor (no parameter interpolation, so ``%`` is
literal), inside a transaction that is ``READ ONLY`` by default and rolled back; with
``write=True`` it is committed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from geoloc.errors import DatabaseError

if TYPE_CHECKING:
    from geoloc.store.database import Database

FORMATS = ("json", "csv")


@dataclass(frozen=True)
class SqlResult:
    """Column names and rows of a statement (no columns: it returned no rows, e.g. UPDATE)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    rowcount: int


def _split_check(statement: str) -> str:
    """``statement`` without trailing semicolons; DatabaseError if it holds more than one."""
    text = statement.strip().rstrip(";").strip()
    if not text:
        raise DatabaseError("sql: empty statement")
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
        elif ch == ";":
            raise DatabaseError("sql: give one statement (found a ';' between statements)")
        i += 1
    return text


def run_statement(db: Database, statement: str, *, write: bool = False) -> SqlResult:
    """Run one statement; read-only (and rolled back) unless ``write``.

    DatabaseError (one line: the server's message) when it fails.
    """
    import psycopg2

    text = _split_check(statement)
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            if not write:
                cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(text)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            rowcount = int(cur.rowcount)
        finally:
            cur.close()
        if write:
            raw.commit()
        else:
            raw.rollback()
    except psycopg2.Error as exc:
        raw.rollback()
        lines = (exc.pgerror or str(exc)).strip().splitlines() or [type(exc).__name__]
        msg = lines[0].removeprefix("ERROR:").strip()
        if getattr(exc, "pgcode", None) == "25006":  # read_only_sql_transaction
            msg += " (pass --write to allow changes)"
        raise DatabaseError(f"sql: {msg}") from exc
    finally:
        raw.close()
    return SqlResult(columns=columns, rows=rows, rowcount=rowcount)


def _plain(v: Any) -> Any:
    """A JSON-able form of one value as psycopg2 returns it."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (datetime, date, time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)


def format_rows(result: SqlResult, fmt: str = "json") -> Iterator[str]:
    """The rows as JSON lines (one object per row) or CSV (a header, then one line per row)."""
    if fmt not in FORMATS:
        raise DatabaseError(f"sql: --format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        for row in result.rows:
            yield json.dumps(
                dict(zip(result.columns, (_plain(v) for v in row), strict=True)),
                ensure_ascii=False,
            )
        return
    if not result.columns:
        return
    yield _csv_line(result.columns)
    for row in result.rows:
        yield _csv_line(
            [
                "" if v is None else json.dumps(p) if isinstance(p := _plain(v), list | dict) else p
                for v in row
            ]
        )


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()
