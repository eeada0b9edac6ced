"""Malformed and hostile requests at the HTTP edge: never a 500, never a traceback, always counted.

Raw bytes go over a loopback socket (an HTTP client library would refuse to send most of them) to the
real app, served from a thread so hypothesis can drive it synchronously.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.daemon import Daemon
from responder.rules.engine import RuleSet
from responder.server import build_app
from tests.conftest import make_config, write_rules
from tests.support.alerts import am_payload
from tests.support.services import free_port
from tests.support.vendors import grafana_payload, grafana_signature, pd_event, pd_signature

SECRETS = {"AM_TOKEN": "am-token-0123456789", "AM_PASSWORD": "am-password-0123", "PD_SECRET": "pd-secret-0123456",
           "GRAFANA_SECRET": "grafana-secret-0123", "SLACK_SECRET": "slack-secret-0123", "API_TOKEN": "api-token-01234"}
# Every header the daemon reads, anywhere.
HEADERS = ["Authorization", "X-PagerDuty-Signature", "X-Webhook-Id", "X-Grafana-Alerting-Signature",
           "X-Grafana-Alerting-Timestamp", "X-Slack-Signature", "X-Slack-Request-Timestamp", "Content-Type",
           "Content-Length", "Content-Encoding", "Transfer-Encoding", "User-Agent", "X-Request-Id", "Cookie", "Host",
           "Connection", "Expect"]


class Live:
    """The app on a loopback port, served by an event loop in a thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hostile-requests-server", daemon=True)
        self.runner = web.AppRunner(build_app(daemon), access_log=None)

    def __enter__(self) -> Live:
        self.thread.start()
        self.call(self.runner.setup())
        self.call(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> int:
        """Send one raw request; the status code, or 0 when the server closed without an answer."""
        head = f"{method} {path} HTTP/1.1\r\n".encode()
        names = {name.lower() for name, _ in headers}
        default = [(b"Host", b"127.0.0.1"), (b"Connection", b"close"), (b"Content-Length", str(len(body)).encode())]
        for name, value in [*headers, *(d for d in default if d[0].lower() not in names)]:
            head += name + b": " + value + b"\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(head + b"\r\n" + body)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        status = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
        return int(status.group(1)) if status else 0

    def metric(self, name: str) -> dict[str, float]:
        samples: dict[str, float] = {}
        for family in self.daemon.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    samples[",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))] = sample.value
        return samples


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    tmp = tmp_path_factory.mktemp("hostile")
    config = make_config(
        f"sqlite:///{tmp / 'hostile.db'}", write_rules(tmp / "rules", "rules: []\n"),
        intakes={
            "alertmanager": {"auth": {"bearer_token": {"env": "AM_TOKEN"},
                                      "basic": {"username": "am", "password": {"env": "AM_PASSWORD"}}}},
            "pagerduty": {"auth": {"signing_secrets": [{"env": "PD_SECRET"}]}},
            "grafana": {"auth": {"signing_secrets": [{"env": "GRAFANA_SECRET"}]},
                        "options": {"timestamp_header": "X-Grafana-Alerting-Timestamp"}},
        },
        **{"server.api_token": {"env": "API_TOKEN"}, "sinks.console.enabled": False,
           "mitigations.approvals.slack_signing_secret": {"env": "SLACK_SECRET"}})
    try:
        with Live(Daemon(config, RuleSet([], None))) as server:
            yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def slack_body(user: Any = None, value: Any = "1") -> bytes:
    payload = {"type": "block_actions", "user": {"id": "U1"} if user is None else user,
               "actions": [{"action_id": "approve", "value": value}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed_requests() -> list[tuple[str, list[tuple[bytes, bytes]], bytes]]:
    """A valid request for every endpoint, so a fuzzed header is the only thing wrong with it."""
    now = str(int(time.time()))
    am = json.dumps(am_payload()).encode()
    pd = json.dumps(pd_event()).encode()
    grafana = json.dumps(grafana_payload()).encode()
    slack = slack_body()
    slack_sig = "v0=" + hmac.new(SECRETS["SLACK_SECRET"].encode(), f"v0:{now}:".encode() + slack,
                                 hashlib.sha256).hexdigest()
    return [
        ("/webhooks/alertmanager", [(b"Authorization", f"Bearer {SECRETS['AM_TOKEN']}".encode())], am),
        ("/webhooks/pagerduty", [(b"X-PagerDuty-Signature", pd_signature(pd, SECRETS["PD_SECRET"]).encode())], pd),
        ("/webhooks/grafana", [(b"X-Grafana-Alerting-Signature",
                                grafana_signature(grafana, SECRETS["GRAFANA_SECRET"], now).encode()),
                               (b"X-Grafana-Alerting-Timestamp", now.encode())], grafana),
        ("/slack/interactions", [(b"X-Slack-Signature", slack_sig.encode()),
                                 (b"X-Slack-Request-Timestamp", now.encode())], slack),
        ("/api/replay", [(b"Authorization", f"Bearer {SECRETS['API_TOKEN']}".encode())], b'{"alert_id": 1}'),
        ("/api/kill-switch", [(b"Authorization", f"Bearer {SECRETS['API_TOKEN']}".encode())], b""),
        ("/ui/incidents", [(b"Cookie", b"responder_session=1.abc")], b""),
    ]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.integers(0, 6), name=st.sampled_from(HEADERS), value=st.binary(max_size=80))
def test_any_bytes_in_any_header_never_give_a_500(live: Live, target: int, name: str, value: bytes) -> None:
    path, headers, body = signed_requests()[target]
    headers = [h for h in headers if h[0].lower() != name.lower().encode()] + [(name.encode(), value)]
    status = live.request("GET" if path in ("/api/kill-switch", "/ui/incidents") else "POST", path, headers, body)
    assert status < 500, (path, name, value, status)


@pytest.mark.parametrize(("path", "name", "value"), [
    ("/webhooks/alertmanager", b"Authorization", b"Bearer \xff\xfe"),
    ("/webhooks/alertmanager", b"Authorization", b"Basic \xc3\xa9\xff"),
    ("/webhooks/alertmanager", b"Authorization", b"Basic ###"),
    ("/webhooks/pagerduty", b"X-PagerDuty-Signature", b"v1=\xff" + b"0" * 63),
    ("/webhooks/pagerduty", b"X-PagerDuty-Signature", "v1=" + "é" * 64),
    ("/webhooks/grafana", b"X-Grafana-Alerting-Timestamp", b"nan"),
    ("/webhooks/grafana", b"X-Grafana-Alerting-Timestamp", "²".encode()),
    ("/webhooks/grafana", b"X-Grafana-Alerting-Timestamp", b"1e30"),
    ("/slack/interactions", b"X-Slack-Signature", "v0=" + "é" * 64),
    ("/slack/interactions", b"X-Slack-Request-Timestamp", "²".encode()),
    ("/slack/interactions", b"X-Slack-Request-Timestamp", b"99999999999999999999999"),
])
def test_malformed_credentials_are_401_and_counted(live: Live, path: str, name: bytes, value: bytes | str) -> None:
    raw = value.encode() if isinstance(value, str) else value
    target = next(t for t in signed_requests() if t[0] == path)
    before = sum(live.metric("responder_webhook_requests_total").values())
    headers = [h for h in target[1] if h[0].lower() != name.lower()] + [(name, raw)]
    assert live.request("POST", path, headers, target[2]) == 401
    if path.startswith("/webhooks/"):
        assert sum(live.metric("responder_webhook_requests_total").values()) == before + 1


def test_signed_slack_payloads_of_the_wrong_shape_are_400(live: Live) -> None:
    now = str(int(time.time()))
    for body in (slack_body(user="U1"), slack_body(user=["U1"]), slack_body(value=7), slack_body(value="1" * 40),
                 slack_body(value="²"), b"payload=%7B%7D", b"payload=[]"):
        signature = "v0=" + hmac.new(SECRETS["SLACK_SECRET"].encode(), f"v0:{now}:".encode() + body,
                                     hashlib.sha256).hexdigest()
        headers = [(b"X-Slack-Signature", signature.encode()), (b"X-Slack-Request-Timestamp", now.encode())]
        assert live.request("POST", "/slack/interactions", headers, body) == 400, body


def test_a_client_leaving_mid_body_leaves_no_traceback(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps(am_payload()).encode()
    head = (f"POST /webhooks/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRETS['AM_TOKEN']}\r\n"
            f"Content-Length: {len(body) + 1000}\r\n\r\n").encode()
    before = sum(live.metric("responder_webhook_requests_total").values())
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.sendall(head + body)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while sum(live.metric("responder_webhook_requests_total").values()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(live.metric("responder_webhook_requests_total").values()) == before + 1
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_loopback_means_this_host_only() -> None:
    from responder.intake.auth import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    for proxy in ("127.0.0.6", "127.1.2.3", "::ffff:127.0.0.6", "10.0.0.1", "", "nonsense", None):
        assert not is_loopback(proxy), proxy
