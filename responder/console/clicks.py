"""The buttons of the console and the Slack `block_actions` payload a press arrives in.

Slack posts `payload=<json>` form-encoded; the parts read here are validated strictly, the rest ignored.
A button's `action_id` says what it does, its `value` which approval or incident it is about.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from responder.buttons import BUTTONS, Button


class BadInteraction(ValueError):
    """A genuine Slack request, but not a press of one of our buttons."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WireUser(_Wire):
    id: str = Field(pattern=r"^[UW][A-Z0-9]{2,}$")
    username: str = ""
    name: str = ""


class WireAction(_Wire):
    action_id: str
    value: str = Field(pattern=r"^[0-9]{1,18}$")
    block_id: str = ""
    action_ts: str = ""


class WireContainer(_Wire):
    message_ts: str | None = None
    channel_id: str | None = None


class WireTeam(_Wire):
    domain: str | None = None


class WireChannel(_Wire):
    id: str


class BlockActions(_Wire):
    type: str
    user: WireUser
    actions: list[WireAction] = Field(min_length=1)
    container: WireContainer = WireContainer()
    channel: WireChannel | None = None
    team: WireTeam | None = None


@dataclass(frozen=True, slots=True)
class Press:
    """One press of a console button, as stored in `slack_clicks`."""

    key: str
    button: Button
    value: int
    user_id: str
    user_name: str
    channel_id: str | None
    message_ts: str | None
    team_domain: str | None

    def row(self) -> dict[str, Any]:
        """The `slack_clicks` fields of this press (the store finds the incident of an approval)."""
        return {"click_key": self.key, "button": self.button.action_id, "permission": self.button.permission,
                "value": self.value, "user_id": self.user_id, "user_name": self.user_name,
                "channel_id": self.channel_id, "message_ts": self.message_ts, "team_domain": self.team_domain}


def parse_press(body: bytes) -> Press:
    try:
        raw = json.loads(parse_qs(body.decode("utf-8"), strict_parsing=True)["payload"][0])
        payload = BlockActions.model_validate(raw)
    except (ValueError, KeyError, IndexError) as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) \
            if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        raise BadInteraction(f"not a Slack block action payload: {detail}") from None
    if payload.type != "block_actions":
        raise BadInteraction(f"unsupported interaction type {payload.type!r}: expected 'block_actions'")
    action = payload.actions[0]
    button = BUTTONS.get(action.action_id)
    if button is None:
        raise BadInteraction(f"unknown action_id {action.action_id!r}: expected one of {', '.join(BUTTONS)}")
    channel_id = payload.container.channel_id or (payload.channel.id if payload.channel else None)
    # Slack sends a retried request with the same action_ts; a second press has its own.
    identity = [payload.user.id, action.action_id, action.value, action.action_ts, channel_id or "",
                payload.container.message_ts or ""]
    key = hashlib.sha256("\0".join(identity).encode()).hexdigest()
    return Press(key, button, int(action.value), payload.user.id, payload.user.username or payload.user.name,
                 channel_id, payload.container.message_ts, payload.team.domain if payload.team else None)


def permalink(domain: str | None, channel_id: str | None, ts: str | None) -> str | None:
    """The web link of a Slack message (the thread's parent), for the silence's comment."""
    if not channel_id or not ts:
        return None
    host = f"{domain}.slack.com" if domain else "slack.com"
    return f"https://{host}/archives/{channel_id}/p{ts.replace('.', '')}"
