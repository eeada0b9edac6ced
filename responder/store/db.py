"""One small database interface over aiosqlite and asyncpg.

The store's SQL is written once, in PostgreSQL's `$1` placeholder style; the SQLite side rewrites the
placeholders to SQLite's numbered `?1` form. Values are plain Python scalars and text (JSON is stored
as text, times as epoch seconds), so both engines see the same data.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import functools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson

# Each driver is imported when a store of its kind is opened: SQLite users never load asyncpg.
if TYPE_CHECKING:
    import aiosqlite
    import asyncpg

from responder.backoff import backoff_delay
from responder.store.wal_checkpoint import WalCheckpointer

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
# A statement and its arguments.
Statement = tuple[str, Sequence[Any]]
Dialect = Literal["sqlite", "postgres"]


class StoreUnavailable(Exception):
    """The database cannot be reached or cannot write now; callers answer 503 and retry later.

    Raised for whatever may pass by itself: the server down or restarting, a lost connection, too many
    connections, a deadlock or serialization failure, a read-only server after a failover. The writes of
    the failed transaction were rolled back, so it can be run again whole (see `retrying`)."""


class Connection(abc.ABC):
    """A connection inside an open transaction."""

    dialect: Dialect

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it touched."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    # Rows one rows_source may hold (SQLite binds each value as a parameter, and allows 32766); None: any.
    rows_per_statement: int | None

    @abc.abstractmethod
    def rows_source(self, rows: Sequence[Sequence[Any]], types: Sequence[str], first: int = 1
                    ) -> tuple[str, list[Any]]:
        """A FROM-able set of literal rows, `... AS v` with columns v.column1..N, and its arguments
        (numbered from `$first`; further arguments of the statement follow them). `types` are SQL type names."""

    async def fetch_each(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """Each statement's rows. The statements must not depend on each other: none reads what another
        writes and no two write the same rows, because on PostgreSQL they run as one statement (one round
        trip), all seeing the database as it was before it; elsewhere they run one after another. Each one
        is a SELECT or returns its rows (RETURNING)."""
        return [await self.fetch(sql, *args) for sql, args in statements]

    @abc.abstractmethod
    def reserve_ids(self, table: str, count: int) -> Statement:
        """A statement reserving `count` new ids of `table`, which rows inserted later in this transaction may
        take; `reserved` reads them from its rows."""

    def reserved(self, rows: Sequence[Row], count: int) -> list[int]:
        """The ids reserve_ids' statement returned, ascending."""
        return sorted(int(r["id"]) for r in rows)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return next(iter(row.values())) if row else None


class Database(abc.ABC):
    dialect: Dialect

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """`async with db.transaction() as conn:` commits on exit, rolls back on error."""

    async def run_batch(self, write: Callable[[Connection], Coroutine[Any, Any, T]], *, durable: bool = True) -> T:
        """`write(conn)` in one transaction, for a writer that awaits nothing but its connection (a group
        commit's batch). The same as `async with transaction()`, except on SQLite (see there).

        `durable=False`: the caller can lose this transaction to a power failure and recover on its own (a
        job's claim: the job is run again). SQLite then commits it without waiting for the disk; the next
        durable commit syncs it with its own. PostgreSQL commits it as any other: there, another replica
        would claim a job whose claim was lost while this one still runs it."""
        async with self.transaction() as conn:
            return await write(conn)

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The database's own long-lived tasks, by name, for the daemon's supervisor to run."""
        return {}

    @abc.abstractmethod
    def read(self) -> AbstractAsyncContextManager[Connection]:
        """`async with db.read() as conn:` for queries that change nothing: no write transaction."""

    @abc.abstractmethod
    async def close(self) -> None: ...


# --- SQLite -------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=4096)
def sqlite_sql(sql: str) -> str:
    """`$1` -> `?1`, once per distinct statement."""
    return _PLACEHOLDER.sub(lambda m: "?" + m.group(1), sql)


@functools.lru_cache(maxsize=256)
def _sqlite_json_rows(types: tuple[str, ...], first: int) -> str:
    """The rows of the JSON array `$first`, one array per row; a bytea value is the [start, length] of its
    bytes in the blob `$(first + 1)` (substr of a blob is a blob), so bytes travel as they are, not as text."""
    columns = ", ".join((f"substr(${first + 1}, e.item ->> '$[{i}][0]', e.item ->> '$[{i}][1]')" if t == "bytea"
                         else f"e.item ->> {i}") + f" AS column{i + 1}" for i, t in enumerate(types))
    # Each row's text is taken from json_each once (it renders the row anew each time `value` is read: for
    # every column, most of the JSON's cost). The columns are materialized too, so that the planner looks rows
    # up by index from them, as it does from VALUES.
    return (f"(WITH e AS MATERIALIZED (SELECT value AS item FROM json_each(${first})),"
            f" r AS MATERIALIZED (SELECT {columns} FROM e) SELECT * FROM r) AS v")


@functools.lru_cache(maxsize=1024)
def _values_placeholders(rows: int, columns: int, first: int) -> str:
    return ", ".join("(" + ", ".join(f"${first + r * columns + c}" for c in range(columns)) + ")"
                     for r in range(rows))


# Up to this many rows a statement takes them as JSON. Beyond, SQLite's parsing of each row's JSON (once per
# column) costs more than preparing the statement, as there are few statements that large.
JSON_ROWS = 64


class _SqliteRows(Connection):
    dialect: Dialect = "sqlite"
    # Bounds the blob that holds a statement's bytes (request bodies) well below SQLite's 1 GB for a value.
    rows_per_statement = 400

    def rows_source(self, rows: Sequence[Sequence[Any]], types: Sequence[str], first: int = 1
                    ) -> tuple[str, list[Any]]:
        """The rows as one JSON argument (and one blob for bytes) instead of a parameter per value: the
        statement's text is the same whatever the row count, so sqlite3 prepares it once and keeps it in
        its statement cache. JSON keeps integers, finite floats (exactly: SQLite parses them back to the
        same double), text and NULL as they are; text with NUL is refused, as PostgreSQL refuses it (SQLite's
        JSON would cut it there). Many rows are bound one parameter per value instead (see JSON_ROWS)."""
        if len(rows) > JSON_ROWS:
            text = _values_placeholders(len(rows), len(types), first)
            return f"(VALUES {text}) AS v", [value for row in rows for value in row]
        binary = [i for i, t in enumerate(types) if t == "bytea"]
        args: list[Any] = []
        if binary:
            # Never empty: substr of an empty blob is NULL, not an empty blob.
            blob = bytearray(b"\x00")
            encoded = []
            for row in rows:
                values = list(row)
                for i in binary:
                    value = values[i]
                    if value is not None:
                        values[i] = (len(blob) + 1, len(value))
                        blob += value
                encoded.append(values)
            rows, args = encoded, [bytes(blob)]
        text = orjson.dumps(rows).decode()
        if "\\u0000" in text and any(isinstance(v, str) and "\x00" in v for row in rows for v in row):
            raise ValueError("text with a NUL character cannot be stored")
        return _sqlite_json_rows(tuple(types), first), [text, *args]

    def reserve_ids(self, table: str, count: int) -> Statement:
        # AUTOINCREMENT's high-water mark; the one writer holds the database until it commits, and the rows
        # inserted with the ids that follow it move the mark past them. So one row, the first id, says them all.
        return f"SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0) + 1 AS id", []

    def reserved(self, rows: Sequence[Row], count: int) -> list[int]:
        first = int(rows[0]["id"])
        return list(range(first, first + count))


class _SqliteConnection(_SqliteRows):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    # Each call is one hop to aiosqlite's thread (execute_fetchall runs, fetches and closes the cursor
    # there); the row count comes from total_changes, exact because one lock serializes all access.

    async def execute(self, sql: str, *args: Any) -> int:
        before: int = self._conn.total_changes
        await self._run(sql, args)
        after: int = self._conn.total_changes
        return after - before

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._run(sql, args)]

    async def _run(self, sql: str, args: tuple[Any, ...]) -> Any:
        with _sqlite_unavailable():
            return await self._conn.execute_fetchall(sqlite_sql(sql), args)


@contextmanager
def _sqlite_unavailable() -> Iterator[None]:
    """SQLite's errors that pass by themselves as StoreUnavailable; the others (our bugs) as they are."""
    try:
        yield
    except sqlite3.OperationalError as exc:  # busy, disk full, read-only, I/O error: not our bug, retry later
        raise StoreUnavailable(f"sqlite: {exc}") from exc
    except (sqlite3.ProgrammingError, ValueError) as exc:
        if "closed" in str(exc) or "no active connection" in str(exc):
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        raise


class _SqliteOnItsThread(_SqliteRows):
    """The connection as seen from aiosqlite's own thread: every call runs at once and returns without
    suspending, so a coroutine that awaits only these runs to its end in one go there (see run_batch)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        before = self._conn.total_changes
        self._conn.execute(sqlite_sql(sql), args).close()
        return self._conn.total_changes - before

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        cursor = self._conn.execute(sqlite_sql(sql), args)
        try:
            return [dict(r) for r in cursor.fetchall()]
        finally:
            cursor.close()


def _run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends; anything else is a programming error, not a wait."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a batch run on the SQLite thread awaited something other than its connection")


class SqliteDatabase(Database):
    """A writing connection in WAL mode, its writers serialized by an asyncio lock as SQLite would, and a
    reading connection: WAL lets reads run beside a write, so a read never waits for a commit's fsync."""

    dialect: Dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path, *,
                 synchronous: str = "full") -> None:
        self._conn = conn
        self._reader = reader
        self._lock = asyncio.Lock()
        self._wrapped = _SqliteConnection(conn)
        self._reading = _SqliteConnection(reader)
        self._synchronous = "FULL" if synchronous == "full" else "NORMAL"
        self.checkpointer = WalCheckpointer(path, self._synchronous, self._lock, conn)

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "full") -> SqliteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True)
        import aiosqlite

        conn = await aiosqlite.connect(str(path), isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        reader = await aiosqlite.connect(str(path), isolation_level=None)
        reader.row_factory = sqlite3.Row
        db = cls(conn, reader, path, synchronous=synchronous)
        await conn.execute(f"PRAGMA synchronous={db._synchronous}")
        for each in (conn, reader):
            await each.execute("PRAGMA foreign_keys=ON")
            await each.execute("PRAGMA busy_timeout=5000")
        await reader.execute("PRAGMA query_only=ON")
        return db

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return self.checkpointer.tasks()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, ValueError) as exc:  # ValueError: the connection is closed
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            try:
                yield self._wrapped
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            try:
                await self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._conn.execute("ROLLBACK")
                raise StoreUnavailable(f"sqlite commit failed: {exc}") from exc
            self.checkpointer.committed()

    async def run_batch(self, write: Callable[[Connection], Coroutine[Any, Any, T]], *, durable: bool = True) -> T:
        """The whole transaction, BEGIN to COMMIT, in one call to the database's thread instead of one per
        statement: under load each of those calls waits for the busy event loop to resume it, and the one
        writer holds SQLite's lock meanwhile (a storm batch is about ten statements)."""

        def transaction() -> T:
            # aiosqlite runs functions on the connection's own thread (the only one that may use it) through
            # `_execute`, with the sqlite3 connection as `_conn`; it has no public name for either.
            raw: sqlite3.Connection = self._conn._conn
            if not durable:
                # In WAL mode NORMAL writes the commit to the WAL without an fsync; the next FULL commit's
                # fsync covers it (and a checkpoint syncs first), so only this transaction is at risk.
                raw.execute("PRAGMA synchronous=NORMAL")
            try:
                raw.execute("BEGIN IMMEDIATE")
                try:
                    result = _run_to_end(write(_SqliteOnItsThread(raw)))
                except BaseException:
                    raw.execute("ROLLBACK")
                    raise
                try:
                    raw.execute("COMMIT")
                except sqlite3.Error:
                    raw.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    raw.execute(f"PRAGMA synchronous={self._synchronous}")
            return result

        async with self._lock:
            with _sqlite_unavailable():
                done: T = await self._conn._execute(transaction)  # type: ignore[no-untyped-call]
            self.checkpointer.committed()
            return done

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        # Each statement reads the last commit, as a PostgreSQL read outside a transaction does.
        yield self._reading

    async def close(self) -> None:
        await self._reader.close()
        await self._conn.close()


# --- PostgreSQL ---------------------------------------------------------------------------------

@functools.cache
def _connection_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning the database cannot serve us now (retry later), not that a statement is wrong."""
    import asyncpg

    return (
        OSError,
        asyncio.TimeoutError,
        asyncpg.PostgresConnectionError,  # connection lost or refused
        asyncpg.InterfaceError,  # the connection closed under us
        asyncpg.OperatorInterventionError,  # shutting down, starting up, crashed
        asyncpg.TransactionRollbackError,  # deadlock, serialization failure
        asyncpg.InsufficientResourcesError,  # too many connections, disk full
        asyncpg.ReadOnlySQLTransactionError,  # a replica after a failover, or a database made read-only
        # A pooled connection whose server session was killed can be handed out mid-teardown; asyncpg then
        # refuses to use it ("cannot switch to state ..."): a lost connection too.
        asyncpg.exceptions.InternalClientError,
)


def shift_placeholders(sql: str, by: int) -> str:
    """The statement with `$n` renumbered `$(n + by)`, to follow another statement's arguments."""
    return _PLACEHOLDER.sub(lambda m: f"${int(m.group(1)) + by}", sql) if by else sql


@functools.lru_cache(maxsize=256)
def _together(texts: tuple[str, ...], counts: tuple[int, ...]) -> str:
    """Statements as the CTEs of one, which returns each one's rows as a JSON array (one value per
    statement, so statements of any shape share one result row)."""
    parts = []
    offset = 0
    for n, (text, count) in enumerate(zip(texts, counts, strict=True)):
        parts.append(f"s{n} AS ({shift_placeholders(text, offset)})")
        offset += count
    selects = ", ".join(f"(SELECT json_agg(s{n}) FROM s{n})" for n in range(len(texts)))
    return f"WITH {', '.join(parts)} SELECT {selects}"


@functools.lru_cache(maxsize=256)
def _json_rows(types: tuple[str, ...], first: int) -> str:
    columns = ", ".join((f"decode(r.e ->> {i}, 'base64')" if t == "bytea" else f"CAST(r.e ->> {i} AS {t})")
                        + f" AS column{i + 1}" for i, t in enumerate(types))
    return f"(SELECT {columns} FROM jsonb_array_elements(CAST(${first} AS jsonb)) AS r (e)) AS v"


class _PostgresConnection(Connection):
    dialect: Dialect = "postgres"
    rows_per_statement = None

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def rows_source(self, rows: Sequence[Sequence[Any]], types: Sequence[str], first: int = 1
                    ) -> tuple[str, list[Any]]:
        # All the rows as one JSON argument, an array of arrays: asyncpg encodes an array argument value by
        # value (with several type checks each, most of a batch's CPU with 50 alerts per delivery), while
        # orjson writes the whole at once. The statement text is the same whatever the row count, so
        # asyncpg's prepared-statement cache holds and the server plans it once. bytea travels as base64.
        binary = [i for i, t in enumerate(types) if t == "bytea"]
        if binary:
            rows = [[base64.b64encode(v).decode() if i in binary and v is not None else v for i, v in enumerate(row)]
                    for row in rows]
        return _json_rows(tuple(types), first), [orjson.dumps(rows).decode()]
    def reserve_ids(self, table: str, count: int) -> Statement:
        return f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) AS id FROM generate_series(1, $1)", [count]

    async def fetch_each(self, statements: Sequence[Statement]) -> list[list[Row]]:
        if len(statements) < 2:
            return await super().fetch_each(statements)
        sql = _together(tuple(text for text, _ in statements), tuple(len(args) for _, args in statements))
        values = await self._conn.fetchrow(sql, *(arg for _, args in statements for arg in args))
        assert values is not None
        return [orjson.loads(value) if value is not None else [] for value in values]

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(sql, *args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(sql, *args))


class PostgresDatabase(Database):
    dialect: Dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool, schema: str | None) -> None:
        self._pool = pool
        self.schema = schema

    @classmethod
    async def open(cls, url: str, *, pool_size: int, timeout: float) -> PostgresDatabase:
        dsn, schema = split_schema(url)
        settings = {"search_path": schema} if schema else {}
        if schema:
            await _ensure_schema(dsn, schema, timeout)
        import asyncpg

        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                timeout=timeout,
                command_timeout=max(timeout, 30.0),
                server_settings=settings,
                reset=_keep_session,
            )
        except _connection_errors() as exc:
            raise StoreUnavailable(f"postgresql: {exc}") from exc
        return cls(pool, schema)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield _PostgresConnection(conn)
        except _connection_errors() as exc:
            raise await self._unavailable(exc) from exc

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire() as conn:
                yield _PostgresConnection(conn)
        except _connection_errors() as exc:
            raise await self._unavailable(exc) from exc

    async def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        import asyncpg

        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError | asyncpg.exceptions.InternalClientError):
            # Every pooled session may be on the old primary, began read-only, or be half torn down: replace
            # them all, so the next transactions connect afresh (to the new primary, or a writable database).
            await self._pool.expire_connections()
        return StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), timeout=10)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs before its next use, beyond the rollback of an unfinished transaction
    that asyncpg always does: nothing, since no store code leaves state in a session (no LISTEN, SET or
    session-level advisory lock). asyncpg's default (RESET ALL, UNLISTEN, CLOSE ALL and unlocking) is a round
    trip after every transaction, which its caller waits for."""


def split_schema(url: str) -> tuple[str, str | None]:
    """`postgresql://.../db?schema=name` -> (DSN without it, 'name'): one database, many responders."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", [None])[0]
    if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ValueError(f"schema name {schema!r} must be lower-case letters, digits and _")
    rest = "&".join(f"{k}={v}" for k, vs in query.items() for v in vs)
    return urlunsplit(parts._replace(query=rest)), schema


async def _ensure_schema(dsn: str, schema: str, timeout: float) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except _connection_errors() as exc:
        raise StoreUnavailable(f"postgresql: {exc}") from exc
    try:
        # Replicas may start together; the advisory lock keeps CREATE SCHEMA from racing itself.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"responder-schema-{schema}")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a transaction that met StoreUnavailable is run again before giving up."""

    attempts: int = 4
    initial: float = 0.05
    maximum: float = 0.5


async def retrying(run: Callable[[], Awaitable[T]], policy: RetryPolicy = RetryPolicy()) -> T:
    """`run()` (one whole transaction), again after a jittered backoff while the store is unavailable,
    at most `policy.attempts` times; then the last StoreUnavailable is raised."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return await run()
        except StoreUnavailable as exc:
            if attempt == policy.attempts:
                raise
            log.debug("store unavailable (attempt %d of %d): %s", attempt, policy.attempts, exc)
            await asyncio.sleep(backoff_delay(attempt, policy.initial, policy.maximum))
    raise AssertionError("unreachable")


async def open_database(url: str, *, synchronous: str = "full", pool_size: int = 10,
                        timeout: float = 5.0) -> Database:
    if url.startswith("sqlite:///"):
        return await SqliteDatabase.open(Path(url.removeprefix("sqlite:///")), synchronous=synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresDatabase.open(url, pool_size=pool_size, timeout=timeout)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://...")
