"""The PostgreSQL sink: usage records as rows of one table that many proxy processes share.

Rows carry the indexed fields as typed columns and the whole record as ``jsonb``; ``record_id``
is the primary key and inserts are ``ON CONFLICT (record_id) DO NOTHING``, so a batch retried
after a lost acknowledgement, or replayed from the spool, is never stored twice. While the
database is down or slow, records wait in the local spool. psycopg 3 is imported lazily (the
``postgres`` extra).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ._base import BatchRejected, RemoteSink, TransientError, redact_url
from ._columns import TOKEN_FIELDS, columns
from ._jsonl import dumps
from ._spool import DEFAULT_SPOOL_BYTES, default_spool_dir

__all__ = ["DEFAULT_TABLE", "SCHEMA_VERSION", "PostgresSink"]

logger = logging.getLogger("ssetally.sinks")

#: The table written when the URL has no ``?table=``.
DEFAULT_TABLE = "ssetally_usage"
#: The version of the table layout, kept in the ``ssetally_schema`` table.
SCHEMA_VERSION = 1
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Serialises the schema creation of processes starting together.
_SCHEMA_LOCK = 0x55E7A11

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("record_id", "text PRIMARY KEY"),
    ("time", "timestamptz"),
    ("request_id", "text"),
    ("instance_id", "text"),
    ("key_fingerprint", "text"),
    ("method", "text"),
    ("path", "text"),
    ("model", "text"),
    ("requested_model", "text"),
    ("provider", "text"),
    ("api", "text"),
    ("status", "text"),
    ("stream", "boolean"),
    ("http_status", "bigint"),
    ("upstream_status", "bigint"),
    ("usage_source", "text"),
    *((field, "bigint") for _, field in TOKEN_FIELDS),
    ("duration_s", "double precision"),
    ("ttft_s", "double precision"),
    ("record", "jsonb NOT NULL"),
)
_INDEXES = (
    ("time", "time"),
    ("model", "model, time"),
    ("key", "key_fingerprint, time"),
    ("status", "status, time"),
)


def _psycopg() -> Any:
    try:
        return importlib.import_module("psycopg")
    except ImportError:
        raise ImportError(
            "the PostgreSQL sink needs psycopg 3: pip install 'ssetally[postgres]'"
        ) from None


def _table(name: str) -> tuple[str, ...]:
    parts = tuple(name.split("."))
    if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ValueError(f"not a table name: {name!r} (letters, digits, _; optionally schema.)")
    return parts


class PostgresSink(RemoteSink):
    """Rows in a PostgreSQL table (default ``ssetally_usage``, created when absent).

    ``url`` is a libpq URL, ``postgresql://user[:password]@host[:port]/db[?table=name&...]``
    (other query parameters, like ``sslmode``, go to libpq); the password may also come from
    ``PGPASSWORD`` or ``~/.pgpass``. It is never logged: every message and the repr show the
    URL with the password masked. Every wait is bounded: ``connect_timeout`` (seconds) for
    connecting and ``statement_timeout`` (seconds) for each statement.
    """

    kind = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        table: str | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
        spool_dir: str | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
        **options: Any,
    ) -> None:
        self._psycopg = _psycopg()
        self._sql = importlib.import_module("psycopg.sql")
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("a PostgreSQL sink URL starts with postgresql:// or postgres://")
        query = parse_qsl(parts.query, keep_blank_values=True)
        table = table or next((v for k, v in query if k == "table"), None) or DEFAULT_TABLE
        self.table = table
        self._table = _table(table)
        libpq = [(k, v) for k, v in query if k != "table"]
        self._conninfo = urlunsplit(parts._replace(query=urlencode(libpq)))
        self._connect_args: dict[str, Any] = {"autocommit": False}
        names = {k for k, _ in libpq}
        if "connect_timeout" not in names:
            # libpq's own minimum is 2 s.
            self._connect_args["connect_timeout"] = max(2, round(connect_timeout))
        if "options" not in names:
            self._connect_args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
        for name, value in (("keepalives", 1), ("keepalives_idle", 30), ("keepalives_count", 3)):
            if name not in names:
                self._connect_args[name] = value
        secrets = [s for s in (parts.password, os.environ.get("PGPASSWORD")) if s]
        self._secrets = tuple({*secrets, *(unquote(s) for s in secrets)})
        self._conn: Any = None
        self._schema_ready = False
        redacted = redact_url(urlunsplit(parts._replace(query="")))
        super().__init__(
            redacted,
            spool_dir=spool_dir or default_spool_dir(self.kind, f"{redacted}#{table}"),
            spool_max_bytes=spool_max_bytes,
            **options,
        )

    def __repr__(self) -> str:
        return f"PostgresSink({self.target!r}, table={self.table!r})"

    # -- connection and schema

    def _connect_at_start(self) -> None:
        try:
            self._connection()
        except Exception as exc:  # noqa: BLE001 - the spool keeps records until it is up
            logger.warning(
                "ssetally sink: %s is not reachable at start-up (%s); records wait in the spool %s",
                self.target,
                self._describe(exc),
                self.spool_directory,
            )

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(self._conninfo, **self._connect_args)
            self._schema_ready = False
        if not self._schema_ready:
            self._create_schema(self._conn)
            self._schema_ready = True
        return self._conn

    def _create_schema(self, conn: Any) -> None:
        sql = self._sql
        table = sql.Identifier(*self._table)
        versions = sql.Identifier(*self._table[:-1], "ssetally_schema")
        name = self._table[-1]
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, "
                    "version integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(versions)
            )
            cur.execute(
                sql.SQL("SELECT version FROM {} WHERE table_name = %s").format(versions),
                (self.table,),
            )
            row = cur.fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                logger.warning(
                    "ssetally sink: %s has schema version %d, newer than this ssetally's %d",
                    self.table,
                    row[0],
                    SCHEMA_VERSION,
                )
            columns_sql = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(kind)) for c, kind in _COLUMNS
            )
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ({}, inserted_at timestamptz NOT NULL "
                    "DEFAULT now())"
                ).format(table, columns_sql)
            )
            for suffix, cols in _INDEXES:
                cur.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                        sql.Identifier(f"{name}_{suffix}"[:63]), table, sql.SQL(cols)
                    )
                )
            if row is None:
                cur.execute(
                    sql.SQL("INSERT INTO {} (table_name, version) VALUES (%s, %s)").format(
                        versions
                    ),
                    (self.table, SCHEMA_VERSION),
                )
        names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in _COLUMNS)
        values = sql.SQL(", ").join(
            sql.SQL("%s::jsonb" if c == "record" else "%s") for c, _ in _COLUMNS
        )
        self._insert = sql.SQL(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (record_id) DO NOTHING"
        ).format(table, names, values)

    # -- writing

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        rows = [_row(r) for r in records]
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.executemany(self._insert, rows)
            conn.commit()
        except BaseException:
            self._reset(conn)
            raise

    def _reset(self, conn: Any) -> None:
        """After a failure: roll back, or drop a broken connection (the next write reconnects)."""
        try:
            if conn.broken or conn.closed:
                raise ConnectionError
            conn.rollback()
        except Exception:  # noqa: BLE001 - a dead connection is replaced anyway
            self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - it is being discarded
                logger.debug("ssetally sink: closing a PostgreSQL connection: %s", exc)

    def _classify(self, exc: Exception) -> str:
        errors = self._psycopg.errors
        if isinstance(exc, errors.UndefinedTable):
            # Dropped under us: create it again on the next attempt.
            self._schema_ready = False
            return super()._classify(TransientError(str(exc)))
        if isinstance(exc, errors.InsufficientPrivilege):
            return super()._classify(BatchRejected(str(exc)))
        if isinstance(exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError)):
            self._drop_connection()
            return super()._classify(TransientError(str(exc)))
        return super()._classify(exc)

    def _close_destination(self) -> None:
        self._drop_connection()


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
    c = columns(record)
    values = []
    for name, _ in _COLUMNS:
        if name == "record":
            values.append(dumps(record))
        else:
            values.append(c[name])
    return tuple(values)
