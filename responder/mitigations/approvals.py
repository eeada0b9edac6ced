"""Requests from Slack's buttons (approvals and the rest of the console): verify they really come from Slack.

Slack signs every interaction: `X-Slack-Signature: v0=HMAC_SHA256(secret, "v0:{timestamp}:{body}")` with
`X-Slack-Request-Timestamp`. A request is refused (401) when the signature is wrong, the timestamp is
outside the allowed window, or the same signed request was already accepted (a replay). What a button
does is responder/console's business.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from responder.config import ApprovalsConfig, Secret
from responder.intake.auth import constant_time_equal, is_hex_sha256
from responder.store.actions import ActionStore


class Rejected(Exception):
    """The request is not a genuine, fresh Slack request."""


def check_headers(config: ApprovalsConfig, headers: Mapping[str, str], now: float) -> Secret:
    """Everything that can be checked before the body is read: a secret to verify with, a well-formed
    signature and a fresh timestamp. Returns the secret; raises Rejected otherwise."""
    secret = config.slack_signing_secret.resolve() if config.slack_signing_secret is not None else None
    if secret is None:
        raise Rejected("no Slack signing secret is configured (mitigations.approvals.slack_signing_secret)")
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    # ASCII digits only: str.isdigit() alone accepts '²', which int() refuses.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) \
            or not (signature.startswith("v0=") and is_hex_sha256(signature[3:])):
        raise Rejected("missing or malformed X-Slack-Request-Timestamp / X-Slack-Signature")
    if abs(now - int(timestamp)) > config.max_clock_skew:
        raise Rejected(f"the request timestamp is more than {config.max_clock_skew:g}s away from now")
    return secret


def verify_signature(config: ApprovalsConfig, headers: Mapping[str, str], body: bytes, now: float) -> str:
    """The request's signature when it is valid and fresh; raises Rejected otherwise."""
    secret = check_headers(config, headers, now)
    timestamp = headers["X-Slack-Request-Timestamp"]
    signature = headers["X-Slack-Signature"]
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.reveal().encode(), base, hashlib.sha256).hexdigest()
    if not constant_time_equal(signature, expected):
        raise Rejected("the signature does not match")
    return signature


async def verify_fresh(config: ApprovalsConfig, actions: ActionStore, headers: Mapping[str, str],
                       body: bytes) -> None:
    """Raises Rejected unless the request is signed by Slack, fresh, and not seen before."""
    signature = verify_signature(config, headers, body, time.time())
    # Kept twice the window: a replay older than that fails the timestamp check anyway.
    if not await actions.remember_signature(signature, keep_seconds=2 * config.max_clock_skew):
        raise Rejected("this request was already received (replay)")
