"""HTTP action: call an application's admin endpoint (enable a fallback mode, open a circuit breaker).

The base URL and headers (tokens from secrets) come from a `targets.http` entry; a step only chooses
the method, the path under that URL and a JSON body. Success is an expected status code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from responder.mitigations.base import Action, ActionContext, registry
from responder.params import TargetName, UrlPath, under_base


class HttpParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    target: TargetName
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: UrlPath
    json_body: dict[str, Any] | list[Any] | None = Field(default=None, alias="json")
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204], min_length=1)
    timeout: float = Field(default=10.0, gt=0, le=120)


@registry.register
class HttpRequest(Action[HttpParams]):
    name = "http.request"
    params_model = HttpParams

    def target(self, params: HttpParams) -> str:
        return f"http/{params.target}{params.path.split('?', 1)[0]}"

    def describe(self, params: HttpParams) -> str:
        body = " with a JSON body" if params.json_body is not None else ""
        return f"{params.method} {params.path} on {params.target}{body}, expecting {params.expect_status}"

    async def execute(self, params: HttpParams, ctx: ActionContext) -> dict[str, Any]:
        import aiohttp

        spec = ctx.targets.spec("http", params.target)
        headers = {name: s.reveal() for name, ref in spec.headers.items() if (s := ref.resolve()) is not None}
        url = under_base(spec.url, params.path)
        session = await ctx.targets.http()
        async with session.request(params.method, url, json=params.json_body, headers=headers, allow_redirects=False,
                                   ssl=spec.verify_tls, timeout=aiohttp.ClientTimeout(total=params.timeout)) as resp:
            text = (await resp.text(errors="replace"))[:2000]
        if resp.status not in params.expect_status:
            raise RuntimeError(f"{params.method} {params.path} answered {resp.status}: {text[:300]}")
        return {"status": resp.status, "body": text}
