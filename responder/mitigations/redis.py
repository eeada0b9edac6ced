"""Redis action: delete keys matching a pattern, found with SCAN (never KEYS), with a hard cap."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from responder.mitigations.base import Action, ActionContext, registry
from responder.params import RedisGlob, TargetName

_BATCH = 500


class DeleteKeysParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetName
    # A glob pattern with a literal prefix of at least 3 characters: `cache:old:*`, never `*`.
    pattern: RedisGlob
    max_keys: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("pattern")
    @classmethod
    def _has_prefix(cls, value: str) -> str:
        prefix = value
        for special in "*?[\\":
            prefix = prefix.split(special, 1)[0]
        if len(prefix) < 3 or any(c.isspace() for c in value):
            raise ValueError("the pattern needs a literal prefix of 3+ characters before any wildcard, and no spaces")
        return value


@registry.register
class DeleteKeys(Action[DeleteKeysParams]):
    name = "redis.delete_keys"
    params_model = DeleteKeysParams

    def target(self, params: DeleteKeysParams) -> str:
        return f"redis/{params.target}"

    def describe(self, params: DeleteKeysParams) -> str:
        return f"delete up to {params.max_keys} key(s) matching {params.pattern!r} on redis {params.target}"

    async def execute(self, params: DeleteKeysParams, ctx: ActionContext) -> dict[str, Any]:
        client = await ctx.targets.redis(params.target)
        deleted = 0
        batch: list[bytes] = []
        async for key in client.scan_iter(match=params.pattern, count=_BATCH):
            batch.append(key)
            if len(batch) >= min(_BATCH, params.max_keys - deleted):
                deleted += int(await client.unlink(*batch))
                batch.clear()
                if deleted >= params.max_keys:
                    break
        if batch:
            deleted += int(await client.unlink(*batch))
        return {"deleted": deleted, "cap": params.max_keys, "cap_reached": deleted >= params.max_keys}
