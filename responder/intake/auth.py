"""Request authentication shared by intakes: bearer token and/or HTTP basic auth, as Alertmanager's
`http_config` sends them, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping

from responder.config import IntakeAuthConfig, Secret


class Unauthorized(Exception):
    pass


# Only the host's own loopback addresses: the rest of 127.0.0.0/8 is used as a source address by
# proxies in the same network namespace (127.0.0.6 is Istio's sidecar), which forward remote clients.
LOOPBACK = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in LOOPBACK


def constant_time_equal(given: str, expected: str) -> bool:
    """Compared as bytes: a header is whatever the client sent (aiohttp keeps undecodable bytes as
    surrogates), so this never raises on hostile input, and never matches it either."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def is_hex_sha256(value: str) -> bool:
    return HEX_SHA256.fullmatch(value) is not None


def hmac_sha256_hex(secret: Secret, data: bytes) -> str:
    return hmac.new(secret.reveal().encode("utf-8"), data, hashlib.sha256).hexdigest()


def any_signature_matches(given: list[str], secrets: list[Secret], data: bytes) -> bool:
    """True when any given hex signature is the HMAC of `data` under any secret. Every pair is compared,
    in constant time, so the time taken says nothing about which one matched."""
    matched = False
    for secret in secrets:
        expected = hmac_sha256_hex(secret, data)
        for signature in given:
            matched |= constant_time_equal(signature.strip().lower(), expected) and is_hex_sha256(signature.strip())
    return matched


class HeaderAuth:
    """Checks the Authorization header against the resolved credentials of one intake."""

    def __init__(self, config: IntakeAuthConfig) -> None:
        self.config = config
        self.unauthenticated = config.unauthenticated

    # Looked up on every request: a rotated secret (re-read on SIGHUP or its interval) applies at once.

    @property
    def token(self) -> Secret | None:
        return self.config.bearer_token.resolve() if self.config.bearer_token else None

    @property
    def basic(self) -> tuple[str, Secret] | None:
        basic = self.config.basic
        password = basic.password.resolve() if basic is not None else None
        return (basic.username, password) if basic is not None and password is not None else None

    @property
    def has_credentials(self) -> bool:
        return self.token is not None or self.basic is not None

    def describe(self) -> str:
        if self.has_credentials:
            kinds = [k for k, v in (("bearer token", self.token), ("basic auth", self.basic)) if v]
            return " or ".join(kinds)
        return {"reject": "no credentials: every request is refused",
                "loopback": "UNAUTHENTICATED from loopback addresses",
                "any": "UNAUTHENTICATED from anywhere"}[self.unauthenticated]

    def check(self, headers: Mapping[str, str], remote: str | None) -> None:
        if not self.has_credentials:
            if self.unauthenticated == "any" or (self.unauthenticated == "loopback" and is_loopback(remote)):
                return
            raise Unauthorized("this intake accepts no unauthenticated requests")
        header = headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        token, basic = self.token, self.basic
        if token is not None and scheme.lower() == "bearer" and constant_time_equal(value, token.reveal()):
            return
        if basic is not None and scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
                user, _, password = decoded.partition(":")
            except (binascii.Error, UnicodeError):
                raise Unauthorized("malformed basic credentials") from None
            # Both halves compared, always, so timing says nothing about which one was wrong.
            user_ok = constant_time_equal(user, basic[0])
            password_ok = constant_time_equal(password, basic[1].reveal())
            if user_ok and password_ok:
                return
        raise Unauthorized("missing or wrong credentials" if header else "missing Authorization header")
