"""The incident view's queries on both stores, and the console's session cookie (the browser tests in
test_ui_browser.py cover the pages themselves)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from responder.config import ServerConfig, load_config
from responder.redaction import Redactor
from responder.replay import parse_payload
from responder.store import Store
from responder.store.history import History
from responder.ui.auth import SESSION_SECONDS, UiAuth
from responder.views import load_incident_view
from tests.conftest import DaemonClient, make_config, write_rules
from tests.support.alerts import am_alert, am_payload


async def open_incident(store: Store, name: str, source_labels: dict[str, str] | None = None) -> int:
    body = json.dumps(am_payload(am_alert(name, labels=source_labels), group_key=f"{{}}:{{alertname={name}}}")).encode()
    await store.record_delivery(parse_payload(load_config(None), body, "alertmanager"))
    (incident,) = [i for i in await store.list_incidents() if i.alertname == name]
    return incident.id


async def test_incidents_filter_by_one_of_their_rules_literally(store: Store) -> None:
    first = await open_incident(store, "First")
    second = await open_incident(store, "Second")
    third = await open_incident(store, "Third")
    async with store.db.transaction() as conn:
        # Incidents of the previous release name every rule that matched; a group names one.
        for incident_id, rule in ((first, "db_errors,latency"), (second, "dbXerrors"), (third, "latency-p99")):
            await conn.execute("UPDATE incidents SET rule = $2 WHERE id = $1", incident_id, rule)
    history = History(store)

    async def names(**filters: str) -> list[str]:
        return [i.alertname for i in await history.incidents(**filters)]

    # `_` is a LIKE wildcard: it must not match `dbXerrors`; `latency` must not match `latency-p99`.
    assert await names(rule="db_errors") == ["First"]
    assert await names(rule="latency") == ["First"]
    assert await names(rule="%") == []
    assert await names() == ["Third", "Second", "First"]
    assert await names(status="resolved") == []
    assert await names(source="grafana") == []
    assert await names(source="alertmanager", status="open", rule="dbXerrors") == ["Second"]


async def test_incident_view_is_redacted_and_tells_its_story(store: Store) -> None:
    incident_id = await open_incident(store, "Leaky", {"dsn": "postgres://app:hunter2@db/app"})
    incident = await store.get_incident(incident_id)
    assert incident is not None
    async with store.db.transaction() as conn:
        await store.save_processing(conn, incident_id, incident.labels, None, [])
    view = await load_incident_view(store, incident_id, Redactor())
    assert view is not None
    assert view.incident.labels["dsn"] == "postgres://app:[REDACTED]@db/app"
    assert [e.what for e in view.timeline()][-1] == "processed: no rule matched, 0 evidence item(s)"
    assert json.dumps(view.as_json())  # the JSON form is plain JSON
    assert await load_incident_view(store, incident_id + 1000, Redactor()) is None


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch) -> UiAuth:
    monkeypatch.setenv("T_UI_TOKEN", "the-ui-token")
    monkeypatch.setenv("T_API_TOKEN", "the-api-token")
    return UiAuth(ServerConfig.model_validate({"ui_token": {"env": "T_UI_TOKEN"},
                                               "api_token": {"env": "T_API_TOKEN"}}))


def test_either_token_logs_in_and_sessions_expire(auth: UiAuth) -> None:
    assert auth.valid_token("the-ui-token") == "the-ui-token"
    assert auth.valid_token("the-api-token") == "the-api-token"
    assert auth.valid_token("") is None and auth.valid_token("the-ui-token ") is None
    cookie = auth.session_cookie("the-ui-token", now=1000.0)
    assert "the-ui-token" not in cookie
    assert auth.valid_session(cookie, now=1000.0 + SESSION_SECONDS - 1)
    assert not auth.valid_session(cookie, now=1000.0 + SESSION_SECONDS + 1)
    expires, _, signature = cookie.partition(".")
    assert not auth.valid_session(f"{int(expires) + 3600}.{signature}", now=1000.0)
    assert not auth.valid_session("garbage", now=1000.0)
    assert auth.allowed({"Authorization": "Bearer the-api-token"}, {})
    assert not auth.allowed({"Authorization": "Bearer nope"}, {"responder_ui": cookie})


def test_rotating_the_token_ends_its_sessions(tmp_path: Path) -> None:
    token_file = tmp_path / "ui-token"
    token_file.write_text("the-ui-token\n")
    server = ServerConfig.model_validate({"ui_token": {"file": str(token_file)}})
    auth = UiAuth(server)
    cookie = auth.session_cookie("the-ui-token")
    assert auth.valid_session(cookie)
    token_file.write_text("a-new-ui-token\n")
    assert server.ui_token is not None and server.ui_token.reload()  # what SIGHUP or the reload interval does
    assert not auth.valid_session(cookie)
    assert auth.valid_token("a-new-ui-token") and not auth.valid_token("the-ui-token")


def test_no_token_configured_means_no_console() -> None:
    auth = UiAuth(ServerConfig())
    assert not auth.configured
    assert not auth.allowed({}, {}) and not auth.allowed({"Authorization": "Bearer "}, {})


async def test_console_http_edges(daemon_client: DaemonClient, store_url: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What the browser tests do not look at: headers, the login form's limits and where it may redirect."""
    monkeypatch.setenv("T_UI_TOKEN", "the-ui-token")
    config = make_config(store_url, write_rules(tmp_path / "rules", "rules: []\n"),
                         **{"server.ui_token": {"env": "T_UI_TOKEN"}})
    client, _ = await daemon_client(config)
    bearer = {"Authorization": "Bearer the-ui-token"}

    page = await client.get("/ui/incidents", headers=bearer)
    assert page.status == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-store"
    assert (await client.get("/ui/incidents/999", headers=bearer)).status == 404

    login = await client.post("/ui/login", data={"token": "the-ui-token", "next": "//evil.example/x"},
                              allow_redirects=False)
    assert login.status == 303 and login.headers["Location"] == "/ui/incidents"
    login = await client.post("/ui/login", data={"token": "the-ui-token", "next": "/ui/actions?outcome=failed"},
                              allow_redirects=False)
    assert login.headers["Location"] == "/ui/actions?outcome=failed"
    too_big = await client.post("/ui/login", data={"token": "x" * 10_000})
    assert too_big.status == 400
    home = await client.get("/", allow_redirects=False)
    assert home.status == 303 and home.headers["Location"] == "/ui/incidents"
    css = await client.get("/ui/static/ui.css")
    assert css.status == 200 and css.content_type == "text/css"


async def test_console_without_a_token_is_closed(daemon_client: DaemonClient, store_url: str,
                                                 tmp_path: Path) -> None:
    config = make_config(store_url, write_rules(tmp_path / "rules", "rules: []\n"))
    client, _ = await daemon_client(config)
    page = await client.get("/ui/incidents")
    assert page.status == 403 and "server.ui_token" in await page.text()
    login = await client.post("/ui/login", data={"token": ""})
    assert login.status == 401 and "Set-Cookie" not in login.headers
