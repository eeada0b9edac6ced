"""Prometheus collectors: instant and range PromQL queries through the HTTP API, shown as a small table.
Range results keep their samples (`series: [{metric, values: [[t, v], ...]}]`) for charts."""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import Field, model_validator

from responder.collectors.base import Collector, CollectorContext, Finding, registry
from responder.collectors.common import TargetParams, human_seconds, table
from responder.config import Duration, PrometheusTarget
from responder.evidence import EvidenceStatus
from responder.params import PromQLQuery

TITLE_CHARS = 60
MAX_POINTS = 11_000  # Prometheus' own limit per series for a range query


class QueryParams(TargetParams):
    query: PromQLQuery
    # What the query measures ("5xx ratio"), for titles; without it the title shows the query's start. The
    # whole query is always the first line of the evidence text.
    title: str | None = Field(default=None, max_length=120)
    timeout: Duration = Field(default=10.0, gt=0, le=120)
    # At most this many series are kept in the evidence (the rest are counted).
    max_series: int = Field(default=20, ge=1, le=500)


class RangeQueryParams(QueryParams):
    # How far back from now, and the resolution (default: about 60 points).
    range: Duration = Field(default=3600.0, gt=0, le=32 * 86400)
    step: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounded_points(self) -> RangeQueryParams:
        if self.step is not None and self.range / self.step > MAX_POINTS:
            raise ValueError(f"range/step gives more than {MAX_POINTS} points; use a larger step")
        return self


class PrometheusError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def _number(value: str) -> float | None:
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def _labels(metric: dict[str, str]) -> str:
    name = metric.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


async def _api(ctx: CollectorContext, params: QueryParams, path: str, query: dict[str, str]) -> dict[str, Any]:
    import aiohttp

    spec: PrometheusTarget = ctx.targets.spec("prometheus", params.target)
    headers = {}
    token = spec.bearer_token.resolve() if spec.bearer_token is not None else None
    if token is not None:
        headers["Authorization"] = f"Bearer {token.reveal()}"
    session = await ctx.targets.http()
    async with session.post(f"{spec.url.rstrip('/')}{path}", data={**query, "timeout": f"{params.timeout:g}s"},
                            headers=headers, timeout=aiohttp.ClientTimeout(total=params.timeout + 1)) as resp:
        try:
            body: dict[str, Any] = await resp.json(content_type=None)
        except ValueError:
            raise PrometheusError(f"HTTP {resp.status}", (await resp.text())[:300]) from None
    if body.get("status") != "success":
        raise PrometheusError(str(body.get("errorType", f"HTTP {resp.status}")), str(body.get("error", "")))
    data: dict[str, Any] = body["data"]
    return data


def heading(params: QueryParams) -> str:
    """A short title: the step's own words, else the start of the query (a whole query is unreadable there)."""
    if params.title:
        return params.title
    query = " ".join(params.query.split())
    return query if len(query) <= TITLE_CHARS else query[:TITLE_CHARS - 1] + "…"


def _error(params: QueryParams, exc: PrometheusError) -> Finding:
    return Finding(f"prometheus query failed: {exc.kind}", {"query": params.query, "error_type": exc.kind,
                                                            "error": str(exc)}, str(exc), EvidenceStatus.ERROR)


@registry.register
class Query(Collector[QueryParams]):
    """An instant PromQL query (what the Prometheus UI's table tab shows)."""

    name = "prometheus.query"
    params_model = QueryParams

    async def collect(self, params: QueryParams, ctx: CollectorContext) -> Finding:
        try:
            data = await _api(ctx, params, "/api/v1/query", {"query": params.query, "time": f"{time.time():.3f}"})
        except PrometheusError as exc:
            return _error(params, exc)
        kind, result = data["resultType"], data["result"]
        series: list[dict[str, Any]]
        if kind in ("scalar", "string"):
            series = [{"metric": {}, "value": _number(result[1]) if kind == "scalar" else result[1]}]
        else:
            series = [{"metric": s["metric"], "value": _number(s["value"][1])} for s in result]
        series.sort(key=lambda s: s["value"] if isinstance(s["value"], float) else -math.inf, reverse=True)
        numbers = [s["value"] for s in series if isinstance(s["value"], float)]
        payload = {"query": params.query, "result_type": kind, "series_count": len(series),
                   "value": series[0]["value"] if series else None,
                   "max_value": max(numbers, default=None), "min_value": min(numbers, default=None),
                   "series": series[: params.max_series]}
        rows = [{"series": _labels(s["metric"]) or "(scalar)", "value": s["value"]} for s in payload["series"]]
        more = f"\n… {len(series) - params.max_series} more series" if len(series) > params.max_series else ""
        maximum = f", max {payload['max_value']:g}" if numbers else ""
        return Finding(f"{heading(params)}: {len(series)} series{maximum}", payload,
                       f"query: {params.query}\n" + table(rows, ["series", "value"], empty="empty result") + more)


@registry.register
class RangeQuery(Collector[RangeQueryParams]):
    """A PromQL range query over the last `range`, summarised per series; the samples are kept."""

    name = "prometheus.range_query"
    params_model = RangeQueryParams

    async def collect(self, params: RangeQueryParams, ctx: CollectorContext) -> Finding:
        end = time.time()
        step = params.step or max(1.0, params.range / 60)
        try:
            data = await _api(ctx, params, "/api/v1/query_range", {
                "query": params.query, "start": f"{end - params.range:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        except PrometheusError as exc:
            return _error(params, exc)
        series = [{"metric": s["metric"], "values": [[float(t), _number(v)] for t, v in s["values"]]}
                  for s in data["result"]]
        rows = []
        for s in series:
            numbers = [v for _, v in s["values"] if v is not None]
            s.update(last=numbers[-1] if numbers else None, min=min(numbers, default=None),
                     max=max(numbers, default=None))
            rows.append({"series": _labels(s["metric"]), "points": len(s["values"]), "min": s["min"],
                         "max": s["max"], "last": s["last"]})
        maxima = [s["max"] for s in series if s["max"] is not None]
        payload = {"query": params.query, "start": end - params.range, "end": end, "step": step,
                   "series_count": len(series), "max_value": max(maxima, default=None),
                   "last_value": series[0]["last"] if series else None, "series": series[: params.max_series]}
        more = f"\n… {len(series) - params.max_series} more series" if len(series) > params.max_series else ""
        return Finding(f"{heading(params)} over {human_seconds(params.range)}: {len(series)} series"
                       + (f", max {payload['max_value']:g}" if maxima else ""), payload,
                       f"query: {params.query}\n" + table(rows[: params.max_series],
                                                           ["series", "points", "min", "max", "last"],
                                                           empty="empty result") + more)
