"""Approvals from Slack: verify the request really comes from Slack, then approve or deny once.

Slack signs every interaction: `X-Slack-Signature: v0=HMAC_SHA256(secret, "v0:{timestamp}:{body}")` with
`X-Slack-Request-Timestamp`. A request is refused (401) when the signature is wrong, the timestamp is
outside the allowed window, or the same signed request was already accepted (a replay).
The buttons are `action_id` `approve` / `deny` with `value` the approval id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from responder.config import ApprovalsConfig, Secret
from responder.intake.auth import constant_time_equal, is_hex_sha256
from responder.store.actions import ActionStore


class Rejected(Exception):
    """The request is not a genuine, fresh Slack request."""


class BadInteraction(ValueError):
    """Genuine, but not an approval we understand."""


@dataclass(frozen=True, slots=True)
class Answer:
    approval_id: int
    approve: bool
    actor: str


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


def parse_interaction(body: bytes) -> Answer:
    try:
        payload = json.loads(parse_qs(body.decode("utf-8"), strict_parsing=True)["payload"][0])
        action = payload["actions"][0]
        user = payload["user"]
        action_id, value = action["action_id"], action["value"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BadInteraction(f"not a Slack block action payload: {type(exc).__name__}: {exc}") from None
    if action_id not in ("approve", "deny"):
        raise BadInteraction(f"unknown action_id {action_id!r}: expected 'approve' or 'deny'")
    if not isinstance(value, str) or not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise BadInteraction(f"the button value must be an approval id, got {str(value)[:40]!r}")
    if not isinstance(user, dict):
        raise BadInteraction("the payload's user is not an object")
    actor = f"slack:{str(user.get('id', '?'))[:64]}"
    if user.get("username"):
        actor += f" ({str(user['username'])[:64]})"
    return Answer(int(value), action_id == "approve", actor)


async def handle_interaction(config: ApprovalsConfig, actions: ActionStore, headers: Mapping[str, str],
                             body: bytes) -> tuple[Answer, str, bool, str]:
    """Verify, parse and apply one interaction: (the answer, the approval's state afterwards, whether
    this answer changed it, the action's name)."""
    signature = verify_signature(config, headers, body, time.time())
    # Kept twice the window: a replay older than that fails the timestamp check anyway.
    if not await actions.remember_signature(signature, keep_seconds=2 * config.max_clock_skew):
        raise Rejected("this request was already received (replay)")
    answer = parse_interaction(body)
    state, changed, action = await actions.decide(answer.approval_id, answer.approve, answer.actor)
    return answer, state, changed, action
