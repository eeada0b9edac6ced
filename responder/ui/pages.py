"""The console's pages: incidents, one incident, the action audit, explain, and the login form.

Server-rendered with Jinja2, autoescaped everywhere (every label, annotation and evidence line comes from
outside), under a Content-Security-Policy that allows no script at all: even markup that escaped escaping
could not run. Every page is read-only; the only POSTs are logging in and out and explaining a payload,
which runs nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import jinja2
from aiohttp import web

from responder.checks import rendered_target
from responder.daemon import Daemon
from responder.http_body import BodyTooLarge, read_body
from responder.intake import PayloadError
from responder.intake import registry as intake_registry
from responder.preview import AlertPreview, as_incident, conditions_now, preview, step_params, why_not
from responder.replay import parse_payload
from responder.sinks import mrkdwn
from responder.sinks.render import ts
from responder.sinks.slack_blocks import evidence_kind
from responder.store import StoreUnavailable
from responder.store.actions import ActionStore
from responder.store.history import History
from responder.ui.auth import COOKIE, SESSION_SECONDS, UiAuth
from responder.views import decision_row, load_incident_view

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
                               " frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATUSES = ("open", "resolved")
OUTCOMES = ("executed", "dry-run", "pending", "skipped", "denied", "expired", "failed", "executing")
LOGIN_BODY_BYTES = 4096
REFRESH_DEFAULT, REFRESH_MIN, REFRESH_MAX = 15, 2, 3600


def safe_url(value: Any) -> str | None:
    """Only absolute http(s) links from alert data (the same test as for Slack links): a `javascript:`
    runbook URL must not become a clickable script. Jinja escapes what is returned for the attribute."""
    return value.strip() if isinstance(value, str) and mrkdwn.safe_url(value) is not None else None


def local_path(value: str) -> str:
    """Where to go after logging in: a console path on this server, never another site."""
    if (value.startswith("/ui") and not value.startswith("/ui/login") and "\\" not in value
            and "//" not in value):
        return value
    return "/ui/incidents"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("responder.ui", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = ts
    env.filters["safe_url"] = safe_url
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    env.filters["compact"] = lambda v: json.dumps(v, sort_keys=True, default=str)
    env.globals["columns"] = columns
    env.globals["scalar"] = scalar
    env.globals["zip"] = zip
    # Evidence is shown as Slack shows it: a table, fields, text, or a chart.
    env.globals["evidence_kind"] = evidence_kind
    return env


def columns(rows: list[Any]) -> list[str]:
    """The union of the rows' keys, in first-seen order (a table of evidence rows)."""
    return list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))


def scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(value or default)))
    except ValueError:
        return default


class Console:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.auth = UiAuth(daemon.config.server)
        self.env = environment()
        self.css = resources.files("responder.ui").joinpath("static/ui.css").read_bytes()

    # --- plumbing ---------------------------------------------------------------------------------

    def page(self, template: str, status: int = 200, **context: Any) -> web.Response:
        html = self.env.get_template(template).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)

    def login_page(self, request: web.Request, status: int, error: str = "") -> web.Response:
        response = self.page("login.html", status, next=local_path(request.path_qs), error=error,
                             configured=self.auth.configured, authenticated=False)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="responder-ui"'
        return response

    def guarded(self, handler: Handler) -> Handler:
        """Authentication before anything is read from the request or the store."""

        async def check(request: web.Request) -> web.StreamResponse:
            if not self.auth.configured:
                return self.login_page(request, 403)
            if not self.auth.allowed(request.headers, request.cookies):
                return self.login_page(request, 401)
            try:
                return await handler(request)
            except StoreUnavailable as exc:
                log.warning("console: store unavailable: %s", exc)
                return self.page("error.html", 503, message="The store is unavailable; try again shortly.",
                                 authenticated=True)

        return check

    def routes(self) -> list[web.RouteDef]:
        g = self.guarded
        return [
            web.get("/ui", self.home), web.get("/ui/", self.home),
            web.get("/ui/static/ui.css", self.stylesheet),
            web.get("/ui/login", self.login_form), web.post("/ui/login", self.login),
            web.post("/ui/logout", self.logout),
            web.get("/ui/incidents", g(self.incidents)),
            web.get("/ui/incidents/{id:\\d+}", g(self.incident)),
            web.get("/ui/evidence/{id:\\d+}/chart.png", g(self.chart)),
            web.get("/ui/actions", g(self.actions)),
            web.get("/ui/explain", g(self.explain_form)), web.post("/ui/explain", g(self.explain)),
        ]

    # --- session ----------------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/ui/incidents")

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(body=self.css, content_type="text/css",
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"})

    async def login_form(self, request: web.Request) -> web.Response:
        return self.login_page(request, 200 if self.auth.configured else 403)

    async def login(self, request: web.Request) -> web.StreamResponse:
        server = self.daemon.config.server
        try:
            body = await read_body(request, LOGIN_BODY_BYTES, server.read_timeout)
        except (BodyTooLarge, TimeoutError):
            return self.page("login.html", 400, next="/ui/incidents", error="The login form was too large or slow.",
                             configured=self.auth.configured, authenticated=False)
        form = parse_qs(body.decode("utf-8", "replace"))
        next_path = local_path(form.get("next", ["/ui/incidents"])[0])
        token = self.auth.valid_token(form.get("token", [""])[0].strip())
        if token is None:
            log.warning("console: failed login from %s", request.remote)
            return self.page("login.html", 401, next=next_path, error="That token is not valid here.",
                             configured=self.auth.configured, authenticated=False)
        response = web.Response(status=303, headers={"Location": next_path})
        response.set_cookie(COOKIE, self.auth.session_cookie(token), max_age=SESSION_SECONDS, path="/ui",
                            httponly=True, samesite="Strict", secure=request.secure)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(status=303, headers={"Location": "/ui/login"})
        response.del_cookie(COOKIE, path="/ui")
        return response

    # --- pages ------------------------------------------------------------------------------------

    async def incidents(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "") if q.get("status", "") in STATUSES else ""
        rule, source = q.get("rule", ""), q.get("source", "")
        limit = _int(q.get("limit"), 200, 1, 1000)
        refresh = _int(q.get("refresh"), REFRESH_DEFAULT, REFRESH_MIN, REFRESH_MAX)
        incidents = await History(self.daemon.store).incidents(status=status, rule=rule, source=source, limit=limit)
        redact = self.daemon.redactor.tree
        return self.page(
            "incidents.html", incidents=incidents, labels_of=lambda i: redact(i.labels),
            statuses=STATUSES, rules=[r.name for r in self.daemon.ruleset.rules],
            sources=sorted(intake_registry.names()), filters={"status": status, "rule": rule, "source": source},
            refresh=refresh, authenticated=True)

    async def incident(self, request: web.Request) -> web.Response:
        incident_id = int(request.match_info["id"])
        view = await load_incident_view(self.daemon.store, incident_id, self.daemon.redactor,
                                        ruleset=self.daemon.ruleset,
                                        slack_workspace_url=self.daemon.config.sinks.slack.workspace_url)
        if view is None:
            return self.page("error.html", 404, message=f"There is no incident #{incident_id}.", authenticated=True)
        return self.page("incident.html", view=view, authenticated=True)

    async def chart(self, request: web.Request) -> web.Response:
        # matplotlib is imported on the first chart, not when the console (or the CLI) starts.
        from responder.sinks.slack_charts import series_png

        row = await History(self.daemon.store).evidence_item(int(request.match_info["id"]))
        payload = self.daemon.redactor.tree(json.loads(row["payload"])) if row is not None else {}
        series = payload.get("series") if isinstance(payload, dict) else None
        png = await asyncio.to_thread(series_png, row["title"], series) if row is not None and isinstance(
            series, list) else None
        if png is None:
            raise web.HTTPNotFound
        return web.Response(body=png, content_type="image/png",
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})

    async def actions(self, request: web.Request) -> web.Response:
        q = request.query
        incident = _int(q.get("incident"), 0, 0, 2**62)
        outcome = q.get("outcome", "") if q.get("outcome", "") in OUTCOMES else ""
        limit = _int(q.get("limit"), 200, 1, 1000)
        rows = [decision_row(r) for r in await ActionStore(self.daemon.store).recent(incident or None, limit)]
        rows = self.daemon.redactor.tree([r for r in rows if not outcome or r["outcome"] == outcome])
        return self.page("actions.html", rows=rows, outcomes=OUTCOMES,
                         filters={"incident": incident or "", "outcome": outcome}, authenticated=True)

    async def explain_form(self, request: web.Request) -> web.Response:
        return self.page("explain.html", payload="", source="", sources=sorted(intake_registry.names()),
                         previews=None, error="", authenticated=True)

    async def explain(self, request: web.Request) -> web.Response:
        config = self.daemon.config
        sources = sorted(intake_registry.names())
        try:
            body = await read_body(request, config.server.max_body_bytes, config.server.read_timeout)
        except BodyTooLarge:
            return self.page("error.html", 413, message=f"The payload is over {config.server.max_body_bytes} bytes.",
                             authenticated=True)
        except TimeoutError:
            return self.page("error.html", 408, message="The form did not arrive in time.", authenticated=True)
        form = parse_qs(body.decode("utf-8", "replace"))
        payload = form.get("payload", [""])[0]
        source = form.get("source", [""])[0]
        previews: list[AlertPreview] | None = None
        error = ""
        try:
            delivery = parse_payload(config, payload.encode(), source if source in sources else None)
            previews = [await preview(config, self.daemon.ruleset, self.daemon.store, a) for a in delivery.alerts]
        except PayloadError as exc:
            error = str(exc)
        redact = self.daemon.redactor
        return self.page("explain.html", 422 if error else 200, payload=payload, source=source, sources=sources,
                         previews=previews, error=redact.text(error), why_not=why_not, step_params=step_params,
                         redact=redact.tree, target_of=functools.partial(rendered_target, config),
                         conditions_now=conditions_now, as_incident=as_incident, authenticated=True)


def setup_console(app: web.Application, daemon: Daemon) -> None:
    """Mount the console under /ui on the daemon's app."""
    app.router.add_routes(Console(daemon).routes())
