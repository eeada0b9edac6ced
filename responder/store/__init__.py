"""Durable state: payloads, alerts, incidents, the job queue, evidence and the action audit."""

from responder.store.db import StoreUnavailable
from responder.store.store import PIPELINE_QUEUE, LeaseLost, NewJob, Store, open_store

__all__ = ["PIPELINE_QUEUE", "LeaseLost", "NewJob", "Store", "StoreUnavailable", "open_store"]
