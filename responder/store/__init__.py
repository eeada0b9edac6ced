"""Durable state: payloads, alerts, incidents, evidence, the action audit, and the job queue."""

from responder.store.db import StoreUnavailable
from responder.store.group_commit import WriterFailed
from responder.store.queue import JobQueue, LeaseLost
from responder.store.store import Store, open_store

__all__ = ["JobQueue", "LeaseLost", "Store", "StoreUnavailable", "WriterFailed", "open_store"]
