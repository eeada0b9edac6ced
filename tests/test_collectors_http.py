"""HTTP, TLS and Prometheus collectors against servers the tests run on loopback."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from responder.evidence import EvidenceStatus
from tests.support.collectors import collect, config_with
from tests.support.prometheus import Prometheus

# The test servers listen on loopback, which tls.certificate refuses unless it is listed.
LOOPBACK_ALLOWED = config_with(collectors={"network": {"allow_hosts": ["127.0.0.1", "localhost"],
                                                       "allow_private": ["127.0.0.0/8", "::1/128"]}})


def self_signed(directory: Path, days: int) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("svc.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


async def test_tls_days_left_of_a_self_signed_certificate(tmp_path: Path) -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=self_signed(tmp_path, days=12))
    port = server.sockets[0].getsockname()[1]
    try:
        cert = await collect(LOOPBACK_ALLOWED, "tls.certificate", host="127.0.0.1", port=port, server_name="svc.test")
    finally:
        server.close()
        await server.wait_closed()
    assert cert.status is EvidenceStatus.OK, cert.text
    assert 11.9 < cert.payload["days_left"] <= 12 and cert.payload["expired"] is False
    assert cert.payload["subject"] == "svc.test" and cert.payload["self_signed"] is True
    assert cert.payload["verified"] is False and cert.payload["dns_names"] == ["svc.test"]


async def test_http_check_status_latency_headers_body_and_secret_header(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Api-Key", ""))
        await asyncio.sleep(0.05)
        return web.json_response({"db": "down", "echo": request.headers.get("X-Api-Key")}, status=503,
                                 headers={"Retry-After": "30"})

    app = web.Application()
    app.router.add_get("/health", health)
    async with TestServer(app, host="127.0.0.1") as server:
        monkeypatch.setenv("TEST_API_KEY", "key-7f3e9a")
        config = config_with(**{"targets.http": {"api": {"url": str(server.make_url("")).rstrip("/"),
                                                         "headers": {"X-Api-Key": {"env": "TEST_API_KEY"}}}}})
        check = await collect(config, "http.check", target="api", path="/health")
        closed = await collect(config_with(**{"targets.http": {"gone": {"url": "http://127.0.0.1:1"}}}),
                               "http.check", target="gone")
    assert seen == ["key-7f3e9a"]
    assert check.payload["status_code"] == 503 and check.payload["healthy"] is False
    assert check.payload["latency_ms"] >= 50 and check.payload["headers"]["retry-after"] == "30"
    assert '"db": "down"' in check.payload["body_snippet"] and "key-7f3e9a" not in repr(check.as_dict())
    assert closed.status is EvidenceStatus.ERROR and closed.payload["reachable"] is False


async def test_prometheus_instant_range_and_error(tmp_path: Path) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text='queue_depth{queue="celery"} 42\nqueue_depth{queue="emails"} 3\n',
                            content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    async with TestServer(app, host="127.0.0.1") as target, \
            Prometheus(tmp_path / "prom", scrape=[f"127.0.0.1:{target.port}"]) as prom:
        config = config_with(**{"targets.prometheus": {"main": {"url": prom.url}}})
        deadline = time.monotonic() + 20
        while True:
            instant = await collect(config, "prometheus.query", target="main", query="queue_depth")
            if instant.payload.get("series_count") == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.5)
        ranged = await collect(config, "prometheus.range_query", target="main", query="queue_depth", range=60,
                               step=1)
        bad = await collect(config, "prometheus.query", target="main", query="sum(")
    assert instant.payload["max_value"] == 42 and instant.payload["series"][0]["metric"]["queue"] == "celery"
    assert "celery" in instant.text
    celery = next(s for s in ranged.payload["series"] if s["metric"]["queue"] == "celery")
    assert len(celery["values"]) >= 2 and all(v == 42 for _, v in celery["values"])
    assert bad.status is EvidenceStatus.ERROR and bad.payload["error_type"] == "bad_data"


@pytest.mark.parametrize(("host", "network", "why"), [
    ("169.254.169.254", {"allow_hosts": ["*"]}, "non-public address"),        # the cloud metadata service
    ("127.0.0.1", {"allow_hosts": ["*"]}, "non-public address"),              # the daemon's own host
    ("localhost", {"allow_hosts": ["*"]}, "non-public address"),              # a name for loopback
    ("10.0.0.7", {"allow_hosts": ["*"]}, "non-public address"),               # the cluster's network
    ("127.0.0.1", {"allow_hosts": ["*.example.com"]}, "not in collectors.network.allow_hosts"),
    ("127.0.0.1", {}, "not in collectors.network.allow_hosts"),                # the default: nothing
    ("127.0.0.1", {"allow_hosts": ["127.0.0.1:443"], "allow_private": ["127.0.0.0/8"]}, "allow_hosts"),
    ("127.0.0.1", {"allow_hosts": ["127.0.0.1"], "allow_private": ["10.0.0.0/8"]}, "non-public address"),
])
async def test_tls_certificate_contacts_only_allowed_public_hosts(host: str, network: dict[str, Any], why: str
                                                                  ) -> None:
    """A label names the host: without an allow-list entry (and a listed network for non-public addresses)
    nothing is contacted, so the collector is neither an SSRF nor a port scanner."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        evidence = await collect(config_with(collectors={"network": network}), "tls.certificate", host=host,
                                 port=port, timeout=2)
    finally:
        server.close()
        await server.wait_closed()
    assert evidence.status is EvidenceStatus.ERROR and evidence.payload.get("refused"), evidence.text
    assert why in evidence.text and connections == 0
