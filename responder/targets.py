"""Named targets from the config (Kubernetes clusters, databases, Redis, Prometheus, HTTP endpoints)
and the clients to reach them, created on first use and closed with the daemon."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from responder.config import Config, KubernetesTarget, RedisTarget, SecretRef, TargetsConfig

# The client libraries are imported when a target of their kind is first used (or at start by
# `preload_clients`): a daemon without Kubernetes targets never loads the Kubernetes client, and the CLI
# stays quick.
if TYPE_CHECKING:
    import aiohttp
    import redis.asyncio as aioredis
    from kubernetes_asyncio import client as k8s

# Every call through these clients is also bounded by the caller's own timeout; these stop a dead
# peer from holding a socket open past it.
REDIS_SOCKET_TIMEOUT = 5.0

C = TypeVar("C")


class UnknownTarget(LookupError):
    pass


class Targets:
    """Owns one client per target for the daemon's lifetime: `async with Targets(config) as t:`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._clients: dict[tuple[str, str], Any] = {}
        # One lock per client being made: concurrent first uses wait for the one client, never make two.
        self._making: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Targets:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.aclose()
        self._clients.clear()

    def spec(self, kind: str, name: str) -> Any:
        table: dict[str, Any] = getattr(self.config.targets, kind)
        try:
            return table[name]
        except KeyError:
            raise UnknownTarget(
                f"no {kind} target named {name!r} in the config (known: {', '.join(table) or 'none'})"
            ) from None

    async def client(self, kind: str, name: str, factory: Callable[[Any, AsyncExitStack], Awaitable[C]]) -> C:
        """The shared client for a target, made by `factory(spec, stack)` the first time it is needed;
        the factory registers its cleanup on the stack."""
        key = (kind, name)
        if key not in self._clients:
            async with self._making[key]:
                if key not in self._clients:
                    self._clients[key] = await factory(self.spec(kind, name), self._stack)
        client: C = self._clients[key]
        return client

    async def kubernetes(self, name: str) -> k8s.ApiClient:
        """The shared Kubernetes API client for a `targets.kubernetes` entry."""
        return await self.client("kubernetes", name, _kubernetes_client)

    async def redis(self, name: str) -> aioredis.Redis:
        """The shared (pooled) Redis client for a `targets.redis` entry."""
        return await self.client("redis", name, _redis_client)

    def postgres_dsn(self, name: str) -> str:
        return reveal(self.spec("postgres", name).dsn, f"targets.postgres.{name}.dsn")

    async def http(self) -> aiohttp.ClientSession:
        """One HTTP session shared by every HTTP and Prometheus collector and action; callers pass their own
        timeouts, TLS verification and headers per request."""
        key = ("session", "http")
        if key not in self._clients:
            import aiohttp

            session = aiohttp.ClientSession()
            self._stack.push_async_callback(session.close)
            self._clients[key] = session
        session_: aiohttp.ClientSession = self._clients[key]
        return session_


def reveal(ref: SecretRef, key: str) -> str:
    secret = ref.resolve()
    if secret is None:
        raise UnknownTarget(f"{key} is empty (its variable is unset)")
    return secret.reveal()


async def _kubernetes_client(spec: KubernetesTarget, stack: AsyncExitStack) -> k8s.ApiClient:
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as k8s_config

    configuration = k8s.Configuration()
    if spec.url is not None:
        configuration.host = spec.url
        token = spec.token.resolve() if spec.token is not None else None
        if token is not None:
            # kubernetes-asyncio sends api_key["BearerToken"], prefixed, as the Authorization header.
            configuration.api_key = {"BearerToken": token.reveal()}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
    elif spec.in_cluster:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await k8s_config.load_kube_config(config_file=str(spec.kubeconfig) if spec.kubeconfig else None,
                                          context=spec.context, client_configuration=configuration)
    configuration.verify_ssl = spec.verify_tls
    api = k8s.ApiClient(configuration=configuration)
    stack.push_async_callback(api.close)
    return api


async def _redis_client(spec: RedisTarget, stack: AsyncExitStack) -> aioredis.Redis:
    import redis.asyncio as aioredis

    client = aioredis.from_url(reveal(spec.url, "targets.redis.*.url"), socket_timeout=REDIS_SOCKET_TIMEOUT,
                               socket_connect_timeout=REDIS_SOCKET_TIMEOUT)
    stack.push_async_callback(client.aclose)
    return client


def target_names(targets: TargetsConfig, kind: str) -> list[str]:
    return sorted(getattr(targets, kind))


# The client library each target kind needs.
CLIENT_MODULES = {"kubernetes": "kubernetes_asyncio.client", "redis": "redis.asyncio", "postgres": "asyncpg",
                  "prometheus": "aiohttp", "http": "aiohttp"}


def preload_clients(targets: TargetsConfig) -> None:
    """Import the client libraries of the configured target kinds, so the first incident does not wait
    for them (importing the Kubernetes client takes about half a second)."""
    import importlib

    for kind, module in CLIENT_MODULES.items():
        if getattr(targets, kind):
            importlib.import_module(module)


def alertmanager_for(config: Config, source: str, external_url: str, rule_choice: str | None) -> str | None:
    """Which configured Alertmanager sent an incident: the rule's choice, the intake's, or the target whose
    URL is the delivery's externalURL; None when no target fits (then no silence buttons are offered)."""
    if rule_choice is not None:
        return rule_choice
    intake = config.intakes.get(source)
    if intake is not None and intake.alertmanager is not None:
        return intake.alertmanager
    wanted = external_url.rstrip("/")
    for name, spec in config.targets.alertmanager.items():
        if wanted and wanted in (spec.url.rstrip("/"), (spec.external_url or "").rstrip("/")):
            return name
    return None
