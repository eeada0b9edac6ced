"""PostgreSQL actions: terminate sessions idle too long, cancel queries running too long.

Never touched, unless a step explicitly allows it: the responder's own sessions (its connection and
any session named `alert-responder…`), replication connections and superusers' sessions. At most
`max_sessions` sessions are touched per run, oldest first. All filters are query parameters; no value
from an alert is ever spliced into SQL.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from responder.config import Duration
from responder.mitigations.base import Action, ActionContext, registry
from responder.params import TargetName

APPLICATION_NAME = "alert-responder"
SessionState = Literal["idle", "idle in transaction", "idle in transaction (aborted)"]
IDLE_STATES: tuple[SessionState, ...] = ("idle", "idle in transaction", "idle in transaction (aborted)")


class SessionFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetName
    # Only sessions in this database / of this user / with this application_name (exact match).
    database: str | None = Field(default=None, max_length=63)
    user: str | None = Field(default=None, max_length=63)
    application_name: str | None = Field(default=None, max_length=64)
    max_sessions: int = Field(default=20, ge=1, le=500)
    include_superusers: bool = False
    include_replication: bool = False

    def where(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in (("database", self.database), ("user", self.user),
                                                 ("application_name", self.application_name)) if v)


class IdleParams(SessionFilter):
    idle_for: Duration = Field(default=600.0, ge=1.0)
    states: list[SessionState] = Field(
        default_factory=lambda: list(IDLE_STATES), min_length=1)


class RunawayParams(SessionFilter):
    running_for: Duration = Field(default=300.0, ge=1.0)


_SESSIONS = """
SELECT a.pid, a.usename AS user, a.datname AS database, a.application_name, a.state,
       round(extract(epoch FROM now() - {since})::numeric, 1)::float8 AS seconds, {verb}(a.pid) AS done
FROM (
    SELECT a.* FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
    WHERE a.pid <> pg_backend_pid()
      AND a.application_name NOT LIKE 'alert-responder%'
      AND (a.backend_type = 'client backend' OR ($7 AND a.backend_type = 'walsender'))
      AND ($6 OR NOT coalesce(r.rolsuper, false))
      AND a.state = ANY($1::text[])
      AND {since} < now() - make_interval(secs => $2)
      AND ($3::text IS NULL OR a.datname = $3)
      AND ($4::text IS NULL OR a.usename = $4)
      AND ($5::text IS NULL OR a.application_name = $5)
    ORDER BY {since}
    LIMIT $8
) a
"""


class _SessionAction(Action[Any]):
    verb: ClassVar[str]
    since: ClassVar[str]

    def target(self, params: Any) -> str:
        return f"postgres/{params.target}"

    @abc.abstractmethod
    def states(self, params: Any) -> list[str]:
        """The pg_stat_activity states this action looks at."""

    @abc.abstractmethod
    def age(self, params: Any) -> float:
        """Seconds a session must have been in that state."""

    async def execute(self, params: Any, ctx: ActionContext) -> dict[str, Any]:
        import asyncpg

        spec = ctx.targets.spec("postgres", params.target)
        dsn = spec.dsn.resolve()
        if dsn is None:
            raise RuntimeError(f"targets.postgres.{params.target}.dsn is empty")
        conn = await asyncpg.connect(dsn.reveal(), timeout=10, server_settings={
            "application_name": APPLICATION_NAME, "statement_timeout": str(int(spec.statement_timeout * 1000))})
        try:
            rows = await conn.fetch(
                _SESSIONS.format(verb=self.verb, since=self.since), self.states(params), self.age(params),
                params.database, params.user, params.application_name, params.include_superusers,
                params.include_replication, params.max_sessions,
            )
        finally:
            await conn.close(timeout=5)
        sessions = [dict(r) for r in rows]
        return {"touched": sum(1 for s in sessions if s["done"]), "cap": params.max_sessions,
                "cap_reached": len(sessions) >= params.max_sessions, "sessions": sessions}


@registry.register
class TerminateIdle(_SessionAction):
    name = "postgres.terminate_idle"
    params_model = IdleParams
    verb = "pg_terminate_backend"
    since = "a.state_change"

    def states(self, params: IdleParams) -> list[str]:
        return list(params.states)

    def age(self, params: IdleParams) -> float:
        return params.idle_for

    def describe(self, params: IdleParams) -> str:
        where = params.where()
        # Says which sessions, not how many: the count is only known when it runs (the evidence shows it).
        return (f"terminate the sessions on {params.target} in state {' / '.join(params.states)} for over"
                f" {params.idle_for:g}s{f' ({where})' if where else ''}, if any, at most {params.max_sessions}")


@registry.register
class CancelRunaway(_SessionAction):
    name = "postgres.cancel_runaway"
    params_model = RunawayParams
    verb = "pg_cancel_backend"
    since = "a.query_start"

    def states(self, params: RunawayParams) -> list[str]:
        return ["active"]

    def age(self, params: RunawayParams) -> float:
        return params.running_for

    def describe(self, params: RunawayParams) -> str:
        where = params.where()
        return (f"cancel the queries on {params.target} running for over {params.running_for:g}s"
                f"{f' ({where})' if where else ''}, if any, at most {params.max_sessions}")
