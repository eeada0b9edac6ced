"""Group commit: many callers' writes in one transaction.

A commit costs one fsync (SQLite) or one WAL flush plus the BEGIN/COMMIT round trips (PostgreSQL),
whatever it holds. Callers that write concurrently (webhooks, finishing jobs) queue their items here; a
writer task commits whatever has queued up in one transaction and answers each caller once that
transaction has committed. Under light load a batch is one item, so nothing waits for a timer.

The writers are long-lived tasks: the daemon's supervisor runs them (`tasks()`), restarting one that fails
after a backoff; without a supervisor (a CLI command, a test), `submit` starts them, and starts a failed
one again. A writer that fails answers the submissions it held with WriterFailed, and while every writer
is down a submission is answered at once the same way: a caller gets an error, never a wait without end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from responder.store.db import Connection, Database, StoreUnavailable, retrying

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

# Writes a batch within an open transaction; returns one result per item, in order.
BatchWriter = Callable[[Connection, Sequence[Item]], Coroutine[Any, Any, list[Result]]]


class WriterFailed(StoreUnavailable):
    """A group commit's writer failed unexpectedly: the writes it held were not committed (submit them again
    later), and it is being restarted. The message names the writer and the kind of error, nothing more, so
    it may be shown to whoever submitted."""


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[Item, Result]):
    """`await submit(item)` returns the item's result once it is committed, or raises what it raised.

    A batch that fails for any reason but an unavailable store is retried one item per transaction, so
    one bad item (or one that lost a race, like a job whose lease expired) does not fail its neighbours."""

    def __init__(self, name: str, db: Database, write: BatchWriter[Item, Result], *, writers: int,
                 max_batch: int = 128, connection_only: bool = False) -> None:
        """`connection_only`: `write` awaits nothing but its connection, so the database may run the whole
        transaction in one go (Database.run_batch)."""
        self.name = name
        self.db = db
        self.write = write
        self.connection_only = connection_only
        self.writers = writers
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[Item, Result]] = asyncio.Queue()
        self._supervised = False
        self._own: dict[int, asyncio.Task[None]] = {}  # writers `submit` started, when no supervisor runs them
        self._down: dict[int, WriterFailed] = {}  # writers that failed and have not started again yet

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The writers, by task name, for a supervisor to run from now on."""
        self._supervised = True
        return {f"{self.name}:{i}": functools.partial(self._writer, i) for i in range(self.writers)}

    async def submit(self, item: Item) -> Result:
        if not self._supervised:
            self._start_own()
        elif len(self._down) == self.writers:
            raise WriterFailed(str(next(iter(self._down.values()))))
        pending: _Pending[Item, Result] = _Pending(item)
        await self._queue.put(pending)
        return await pending.future

    def _start_own(self) -> None:
        for i in range(self.writers):
            task = self._own.get(i)
            if task is None or task.done():
                self._down.pop(i, None)
                self._own[i] = asyncio.create_task(self._writer(i), name=f"{self.name}:{i}")
                # Its failure was logged and answered by the writer itself.
                self._own[i].add_done_callback(lambda t: t.cancelled() or t.exception())

    def backlog(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Stop the writers `submit` started (the supervisor stops its own) and fail what is still queued."""
        for task in self._own.values():
            task.cancel()
        await asyncio.gather(*self._own.values(), return_exceptions=True)
        self._own = {}
        self._fail_queued(StoreUnavailable("the store is closing"))

    def _fail_queued(self, exc: StoreUnavailable) -> None:
        while not self._queue.empty():
            _fail(self._queue.get_nowait(), exc)

    async def _writer(self, index: int) -> None:
        """One writer, until cancelled. What escapes its handling of a batch (a cancellation leaking out of a
        driver, a write that breaks its contract) fails the writer: its batch is answered with WriterFailed,
        and so is everything queued if no other writer is left to take it; then it raises, to be restarted."""
        self._down.pop(index, None)
        batch: list[_Pending[Item, Result]] = []
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self._write(batch)
                batch = []
        except BaseException as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                for p in batch:  # stopped: the store is closing
                    _fail(p, StoreUnavailable("the store is closing"))
                raise
            failed = WriterFailed(f"the store's {self.name} failed ({type(exc).__name__}) and is being restarted")
            self._down[index] = failed
            for p in batch:
                _fail(p, failed)
            if len(self._down) == self.writers:
                self._fail_queued(failed)
            log.error("%s:%d failed: %s: %s; %d write(s) answered with an error", self.name, index,
                      type(exc).__name__, exc, len(batch), exc_info=exc if not self._supervised else None)
            if isinstance(exc, asyncio.CancelledError):
                raise failed from exc  # not cancelled by its owner: a failure like any other
            raise

    async def _write(self, batch: list[_Pending[Item, Result]]) -> None:
        """Commit a batch and answer each of its submitters."""
        try:
            results = await self._commit([p.item for p in batch])
        except StoreUnavailable as exc:
            for p in batch:
                _fail(p, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning("%s: a batch of %d failed (%s: %s); retrying one by one", self.name, len(batch),
                        type(exc).__name__, exc)
            for p in batch:
                try:
                    (result,) = await self._commit([p.item])
                except Exception as one:
                    _fail(p, one)
                else:
                    _resolve(p, result)
            return
        for p, result in zip(batch, results, strict=True):
            _resolve(p, result)

    async def _commit(self, items: list[Item]) -> list[Result]:
        """One transaction, run again whole while the store is transiently unavailable (a deadlock, a
        dropped connection): its callers then get their answer after commit, not an error."""

        async def once() -> list[Result]:
            if self.connection_only:
                return await self.db.run_batch(lambda conn: self.write(conn, items))
            async with self.db.transaction() as conn:
                return await self.write(conn, items)

        return await retrying(once)


# A future may already be done: its caller was cancelled (a client gone, a job timed out).

def _resolve(pending: _Pending[Item, Result], result: Result) -> None:
    if not pending.future.done():
        pending.future.set_result(result)


def _fail(pending: _Pending[Item, Result], exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
