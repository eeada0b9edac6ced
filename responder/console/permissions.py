"""Who may press which button: `sinks.slack.permissions`, with user groups resolved through Slack.

A user group's members come from `usergroups.users.list` and are kept for `membership_cache`; a group
whose members cannot be learnt grants nothing (fail closed), and the refusal says why.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from responder.config import SLACK_GROUP, SlackPermissions

# Asks Slack for the members of one user group (raises on any failure).
MembersOf = Callable[[str], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    why: str


class Permissions:
    def __init__(self, settings: SlackPermissions, members_of: MembersOf, cache_seconds: float) -> None:
        self.settings = settings
        self.members_of = members_of
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def check(self, user_id: str, kind: str) -> Verdict:
        allowed = self.settings.allowed(kind)
        if allowed is None:
            return Verdict(True, f"{kind} is open to the channel")
        if not allowed:
            return Verdict(False, f"nobody may {kind} from Slack until sinks.slack.permissions.{kind} lists"
                                  " users or user groups")
        if user_id in allowed:
            return Verdict(True, f"listed in sinks.slack.permissions.{kind}")
        unknown = []
        for group in (p for p in allowed if SLACK_GROUP.match(p)):
            try:
                members = await self._members(group)
            except Exception as exc:  # any failure to learn a group grants nothing
                unknown.append(f"{group} ({type(exc).__name__}: {exc})")
                continue
            if user_id in members:
                return Verdict(True, f"member of user group {group}")
        why = f"not listed in sinks.slack.permissions.{kind}"
        if unknown:
            why += f"; the members of {', '.join(unknown)} could not be checked"
        return Verdict(False, why)

    async def _members(self, group: str) -> frozenset[str]:
        async with self._locks[group]:
            cached = self._cache.get(group)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            members = frozenset(await self.members_of(group))
            self._cache[group] = (time.monotonic() + self.cache_seconds, members)
            return members
