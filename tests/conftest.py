"""Shared fixtures: isolated real PostgreSQL schemas and Redis prefixes, stores for both engines, and
an in-process daemon behind aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from responder.cli._common import load_plugins
from responder.config import Config, load_config
from responder.daemon import Daemon
from responder.rules.engine import RuleSet
from responder.rules.loader import load_rules
from responder.server import build_app
from responder.store import Store, open_store
from tests.support.services import PG_BASE, REDIS_BASE, require, unique


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A PostgreSQL URL with a schema of its own, dropped after the test."""
    schema = unique("t")
    try:
        conn = await asyncpg.connect(PG_BASE, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        require("PostgreSQL", str(exc))
    try:
        yield f"{PG_BASE}?schema={schema}"
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the real Redis; its keys are deleted afterwards."""
    prefix = unique("rtest") + ":"
    client = aioredis.from_url(REDIS_BASE)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        require("Redis", str(exc))
    try:
        yield prefix
    finally:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
        await client.aclose()


@pytest.fixture
def redis_url() -> str:
    return REDIS_BASE


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Run the test once on the embedded SQLite store and once on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'responder.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


def write_rules(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rules.yaml"
    path.write_text(text)
    return directory


def make_config(store_url: str, rules_dir: Path, **overrides: Any) -> Config:
    base: dict[str, Any] = {
        "store.url": store_url,
        "rules.dirs": [str(rules_dir)],
        "store.poll_interval": 0.05,
        "pipeline.retry_initial": 0.05,
        "pipeline.retry_max": 0.2,
    }
    base.update(overrides)
    return load_config(None, base)


DaemonClient = Callable[..., Any]


@pytest.fixture
async def daemon_client(store_url: str) -> AsyncIterator[DaemonClient]:
    """`client, daemon = await daemon_client(config)`: the real app on a loopback port, in-process.
    It depends on `store_url` so the daemon stops before the test's database schema is dropped."""
    clients: list[TestClient[Any, Any]] = []

    async def start(config: Config) -> tuple[TestClient[Any, Any], Daemon]:
        load_plugins(config)
        rules, problems = load_rules(config.rule_dirs())
        assert not problems, problems
        daemon = Daemon(config, RuleSet(rules, config.rules.default_rule))
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(daemon), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client, daemon

    try:
        yield start
    finally:
        for client in clients:
            await client.close()
