"""Access to the machine's real PostgreSQL and Redis, isolated per test.

Each test gets its own PostgreSQL schema and its own Redis key prefix, removed afterwards. Outside CI a
missing service skips the test; in CI (CI=true) it fails it, because a skipped test proves nothing.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

PG_BASE = os.environ.get("RESPONDER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("RESPONDER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(service: str, reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"{service} is required in CI: {reason}")
    pytest.skip(f"{service} unavailable: {reason}")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
