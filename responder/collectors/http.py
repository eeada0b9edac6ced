"""HTTP health checks (`curl -i`) and TLS certificate expiry (`openssl s_client | openssl x509 -enddate`)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from responder.collectors.base import Collector, CollectorContext, Finding, registry
from responder.collectors.common import TargetParams
from responder.config import Duration, HttpTarget
from responder.evidence import EvidenceStatus
from responder.params import HostRefused, UrlPath, allowed_addresses, under_base

if TYPE_CHECKING:
    from cryptography import x509

Hostname = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$",
                                            max_length=253)]
SHOWN_HEADERS = ["content-type", "server", "location", "retry-after", "cache-control", "x-request-id"]


class HttpCheckParams(TargetParams):
    path: UrlPath = ""
    method: str = Field(default="GET", pattern=r"^(GET|HEAD)$")
    # Statuses that count as healthy; empty: any 2xx or 3xx.
    expect_status: list[int] = Field(default_factory=list)
    # The response must contain this text to count as healthy.
    expect_text: str | None = Field(default=None, max_length=200)
    headers: list[str] = Field(default_factory=lambda: list(SHOWN_HEADERS))
    body_bytes: int = Field(default=500, ge=0, le=64 * 1024)
    timeout: Duration = Field(default=10.0, gt=0, le=120)


@registry.register
class HttpCheck(Collector[HttpCheckParams]):
    """One request to a configured endpoint: status, latency, selected headers and the start of the body."""

    name = "http.check"
    params_model = HttpCheckParams

    async def collect(self, params: HttpCheckParams, ctx: CollectorContext) -> Finding:
        import aiohttp

        spec: HttpTarget = ctx.targets.spec("http", params.target)
        url = under_base(spec.url, params.path)
        headers = {name: value.reveal() for name, ref in spec.headers.items() if (value := ref.resolve()) is not None}
        session = await ctx.targets.http()
        started = time.monotonic()
        try:
            # Redirects are reported, not followed: the check never leaves the configured host.
            async with session.request(params.method, url, headers=headers, allow_redirects=False,
                                       ssl=spec.verify_tls,
                                       timeout=aiohttp.ClientTimeout(total=params.timeout)) as resp:
                first_byte = time.monotonic()
                body = await resp.content.read(params.body_bytes) if params.body_bytes else b""
                status = resp.status
                shown = {name: resp.headers[name] for name in params.headers if name in resp.headers}
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Finding(f"{params.method} {url} failed: {type(exc).__name__}", {
                "url": str(url), "reachable": False, "healthy": False, "error": type(exc).__name__,
                "latency_ms": round((time.monotonic() - started) * 1000, 1)},
                f"{type(exc).__name__}: {exc}", EvidenceStatus.ERROR)
        snippet = body.decode("utf-8", errors="replace")
        expected = status in params.expect_status if params.expect_status else 200 <= status < 400
        healthy = expected and (params.expect_text is None or params.expect_text in snippet)
        payload = {"url": str(url), "reachable": True, "status_code": status, "healthy": healthy,
                   "latency_ms": round((first_byte - started) * 1000, 1), "headers": shown, "body_snippet": snippet}
        lines = [f"HTTP {status} in {payload['latency_ms']:g} ms", *(f"{k}: {v}" for k, v in shown.items()), "",
                 snippet]
        return Finding(f"{params.method} {url}: HTTP {status} in {payload['latency_ms']:g} ms"
                       + ("" if healthy else " (unhealthy)"), payload, "\n".join(lines).rstrip())


class TlsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: Hostname
    port: int = Field(default=443, ge=1, le=65535)
    # The name sent in SNI and checked against the certificate (default: host).
    server_name: Hostname | None = None
    timeout: Duration = Field(default=10.0, gt=0, le=60)


def _name(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


async def _handshake(host: str, port: int, server_name: str, context: ssl.SSLContext) -> bytes:
    _reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_name)
    try:
        der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return der
    finally:
        writer.close()
        await writer.wait_closed()


@registry.register
class TlsCertificate(Collector[TlsParams]):
    """Days until the certificate served at host:port expires; read without trusting it, then checked."""

    name = "tls.certificate"
    params_model = TlsParams

    async def collect(self, params: TlsParams, ctx: CollectorContext) -> Finding:
        from cryptography import x509

        server_name = params.server_name or params.host
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        network = ctx.targets.config.collectors.network
        async with asyncio.timeout(params.timeout):
            # The host comes from the alert: only allowed names, and only their public (or listed) addresses.
            try:
                [address, *_] = await allowed_addresses(params.host, params.port, network.allow_hosts,
                                                        network.allow_private, params.timeout)
            except HostRefused as exc:
                return Finding(f"not contacting {params.host}:{params.port}", {"reachable": False, "refused": True},
                               str(exc), EvidenceStatus.ERROR)
            try:
                der = await _handshake(address, params.port, server_name, unverified)
            except (OSError, ssl.SSLError) as exc:
                # Only the kind of failure: the text of a connection error says nothing an on-call needs
                # and would make this collector a way to probe the network.
                return Finding(f"no TLS handshake with {params.host}:{params.port}", {
                    "reachable": False, "error": type(exc).__name__}, type(exc).__name__, EvidenceStatus.ERROR)
            verify_error = None
            try:
                await _handshake(address, params.port, server_name, ssl.create_default_context())
            except ssl.SSLCertVerificationError as exc:
                verify_error = exc.verify_message or str(exc)
            except (OSError, ssl.SSLError) as exc:
                verify_error = f"{type(exc).__name__}: {exc}"
        cert = x509.load_der_x509_certificate(der)
        now = datetime.datetime.now(datetime.UTC)
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns_names = [str(n) for n in names.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            dns_names = []
        days_left = round((cert.not_valid_after_utc - now).total_seconds() / 86400, 2)
        payload: dict[str, Any] = {
                   "host": params.host, "port": params.port, "server_name": server_name, "reachable": True,
                   "days_left": days_left, "expired": days_left < 0,
                   "not_before": cert.not_valid_before_utc.isoformat(),
                   "not_after": cert.not_valid_after_utc.isoformat(),
                   "subject": _name(cert.subject), "issuer": _name(cert.issuer), "dns_names": dns_names,
                   "self_signed": cert.issuer == cert.subject, "verified": verify_error is None,
                   "verify_error": verify_error, "serial": format(cert.serial_number, "x")}
        state = "EXPIRED" if days_left < 0 else f"expires in {days_left:.1f} day(s)"
        text = "\n".join(f"{k}: {v}" for k, v in payload.items() if k not in ("host", "port"))
        return Finding(f"certificate of {params.host}:{params.port} {state} ({payload['not_after'][:10]})",
                       payload, text)
