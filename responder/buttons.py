"""The console's buttons: what the Slack sink draws on a thread and what the console does when one is pressed.

Both sides read this one catalog, so a button is added in one place and neither package imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Button:
    action_id: str
    label: str
    # The `sinks.slack.permissions` entry that decides who may press it.
    permission: str
    # Silences: how long the silence lasts.
    seconds: float = 0.0


BUTTONS = {b.action_id: b for b in (
    Button("approve", "Approve", "approve"),
    Button("deny", "Deny", "approve"),
    Button("acknowledge", "Acknowledge", "acknowledge"),
    Button("rerun", "Re-run diagnostics", "rerun"),
    Button("silence_1h", "Silence 1h", "silence", 3600.0),
    Button("silence_4h", "Silence 4h", "silence", 4 * 3600.0),
    Button("silence_24h", "Silence 24h", "silence", 24 * 3600.0),
    Button("unsilence", "Unsilence", "silence"),
)}
SILENCE_BUTTONS = tuple(b for b in BUTTONS.values() if b.seconds)
