"""Alertmanager's API v2, as far as silences go: create (or extend), expire, look up.

One client per `targets.alertmanager` entry, over the daemon's shared HTTP session; every call is bounded by
the target's `timeout`. Any failure is an `AlertmanagerError` with a sentence for the person who clicked.
"""

from __future__ import annotations

import asyncio
import base64
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import aiohttp

from responder.config import AlertmanagerTarget
from responder.models import Incident
from responder.targets import Targets, reveal


class AlertmanagerError(Exception):
    """Alertmanager could not be reached or refused the request."""


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AlertmanagerAPI:
    def __init__(self, name: str, spec: AlertmanagerTarget, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.spec = spec
        self.session = session
        self.base = spec.url.rstrip("/")

    def _headers(self) -> dict[str, str]:
        auth = self.spec.auth
        if auth is None:
            return {}
        key = f"targets.alertmanager.{self.name}.auth"
        if auth.bearer_token is not None:
            return {"Authorization": f"Bearer {reveal(auth.bearer_token, key + '.bearer_token')}"}
        assert auth.basic is not None
        pair = f"{auth.basic.username}:{reveal(auth.basic.password, key + '.basic.password')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with asyncio.timeout(self.spec.timeout), self.session.request(
                    method, self.base + path, json=body, headers=self._headers(),
                    ssl=self.spec.verify_tls) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise AlertmanagerError(f"Alertmanager {self.name} answered {method} {path} with HTTP"
                                            f" {resp.status}: {text.strip()[:300]}")
                return await resp.json(content_type=None) if text.strip() else None
        except TimeoutError:
            raise AlertmanagerError(f"Alertmanager {self.name} did not answer within {self.spec.timeout:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise AlertmanagerError(f"Alertmanager {self.name} is unreachable: {type(exc).__name__}: {exc}") from None

    async def create_silence(self, matchers: dict[str, str], starts_at: float, ends_at: float, created_by: str,
                             comment: str, silence_id: str | None = None) -> str:
        """A silence of exactly these label values; with `silence_id`, that silence is updated (Alertmanager
        may answer with a new id). Returns the silence's id."""
        body: dict[str, Any] = {
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True}
                         for k, v in sorted(matchers.items())],
            "startsAt": rfc3339(starts_at), "endsAt": rfc3339(ends_at), "createdBy": created_by, "comment": comment,
        }
        if silence_id is not None:
            body["id"] = silence_id
        answer = await self._request("POST", "/api/v2/silences", body)
        if not isinstance(answer, dict) or not answer.get("silenceID"):
            raise AlertmanagerError(f"Alertmanager {self.name} did not return a silence id: {answer!r}"[:300])
        return str(answer["silenceID"])

    async def expire_silence(self, silence_id: str) -> None:
        """Expire a silence; one that already expired (by time or by hand) is fine too."""
        try:
            await self._request("DELETE", f"/api/v2/silence/{silence_id}")
        except AlertmanagerError:
            current = await self.silence(silence_id)
            if current is None or (current.get("status") or {}).get("state") != "expired":
                raise

    async def silence(self, silence_id: str) -> dict[str, Any] | None:
        try:
            answer = await self._request("GET", f"/api/v2/silence/{silence_id}")
        except AlertmanagerError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        return answer if isinstance(answer, dict) else None

    async def find_silence(self, marker: str) -> dict[str, Any] | None:
        """An active or pending silence whose comment carries `marker` (one a crashed attempt created)."""
        answer = await self._request("GET", "/api/v2/silences")
        for item in answer if isinstance(answer, list) else []:
            if marker in str(item.get("comment", "")) and (item.get("status") or {}).get("state") != "expired":
                return dict(item)
        return None


async def alertmanager_api(targets: Targets, name: str) -> AlertmanagerAPI:
    """The shared client of a `targets.alertmanager` entry (UnknownTarget when there is none)."""
    session = await targets.http()

    async def make(spec: AlertmanagerTarget, stack: AsyncExitStack) -> AlertmanagerAPI:
        return AlertmanagerAPI(name, spec, session)

    return await targets.client("alertmanager", name, make)


def silence_matchers(incident: Incident) -> dict[str, str]:
    """The labels a silence of the incident's group matches exactly: the notification's group labels, or
    the alert's own labels when it was not grouped by any (a silence needs at least one matcher)."""
    group = incident.extra.get("group_labels")
    if isinstance(group, dict) and group:
        return {str(k): str(v) for k, v in group.items()}
    return dict(incident.labels)
