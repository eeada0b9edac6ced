"""Request authentication shared by intakes: bearer token and/or HTTP basic auth, as Alertmanager's
`http_config` sends them, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

from responder.config import IntakeAuthConfig, Secret


class Unauthorized(Exception):
    pass


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def constant_time_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def hmac_sha256_hex(secret: Secret, data: bytes) -> str:
    return hmac.new(secret.reveal().encode("utf-8"), data, hashlib.sha256).hexdigest()


def any_signature_matches(given: list[str], secrets: list[Secret], data: bytes) -> bool:
    """True when any given hex signature is the HMAC of `data` under any secret. Every pair is compared,
    in constant time, so the time taken says nothing about which one matched."""
    matched = False
    for secret in secrets:
        expected = hmac_sha256_hex(secret, data)
        for signature in given:
            matched |= constant_time_equal(signature.strip().lower(), expected)
    return matched


class HeaderAuth:
    """Checks the Authorization header against the resolved credentials of one intake."""

    def __init__(self, config: IntakeAuthConfig) -> None:
        self.token: Secret | None = config.bearer_token.resolve() if config.bearer_token else None
        self.basic: tuple[str, Secret] | None = None
        if config.basic is not None:
            password = config.basic.password.resolve()
            if password is not None:
                self.basic = (config.basic.username, password)
        self.unauthenticated = config.unauthenticated

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
        if self.token is not None and scheme.lower() == "bearer" and constant_time_equal(value, self.token.reveal()):
            return
        if self.basic is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthorized("malformed basic credentials") from None
            # Both halves compared, always, so timing says nothing about which one was wrong.
            user_ok = constant_time_equal(user, self.basic[0])
            password_ok = constant_time_equal(password, self.basic[1].reveal())
            if user_ok and password_ok:
                return
        raise Unauthorized("missing or wrong credentials" if header else "missing Authorization header")
