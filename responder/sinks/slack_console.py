"""The console's part of an incident thread: the parent's buttons and state lines (who acknowledged, the
active silence, the latest outcome), and the replies that tell what was done (`incident.note` events).

Pure functions of their inputs, kept apart from the parent's own layout in slack_blocks.py, which calls
`console_blocks` at its end.
"""

from __future__ import annotations

import json
from typing import Any

from responder.buttons import BUTTONS, SILENCE_BUTTONS
from responder.events import Note
from responder.sinks.mrkdwn import escape
from responder.sinks.slack_blocks import SECTION_CHARS, Message, code_section, context, fit, section, when
from responder.store.console import ConsoleState

NOTE_ICON = {
    "acknowledged": ":eyes:", "silenced": ":no_bell:", "unsilenced": ":bell:", "rerun": ":arrows_counterclockwise:",
    "approved": ":white_check_mark:", "denied": ":no_entry_sign:", "expired": ":hourglass:",
    "executed": ":white_check_mark:", "failed": ":x:", "skipped": ":no_entry_sign:",
    "recovered": ":white_check_mark:", "not_recovered": ":rotating_light:",
}


def _button(action_id: str, value: int, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "action_id": action_id, "value": str(value),
                              "text": {"type": "plain_text", "text": BUTTONS[action_id].label}}
    if style:
        button["style"] = style
    return button


def console_blocks(incident_id: int, state: ConsoleState, *, silenceable: bool, resolved: bool,
                   latest: str | None = None) -> list[dict[str, Any]]:
    """State lines and buttons for the parent of an incident's thread."""
    lines = []
    if latest:
        lines.append(latest)
    if state.acknowledged_by:
        lines.append(f":eyes: Acknowledged by <@{state.acknowledged_by}> at {when(state.acknowledged_at)}")
    if state.silence is not None:
        lines.append(f":no_bell: Silenced in Alertmanager {escape(state.silence.alertmanager)} until"
                     f" {when(state.silence.ends_at)} by {escape(state.silence.created_by)}")
    blocks: list[dict[str, Any]] = [context(*lines)] if lines else []
    buttons = []
    if not resolved:
        if not state.acknowledged_by:
            buttons.append(_button("acknowledge", incident_id, "primary"))
        buttons.append(_button("rerun", incident_id))
        if silenceable:
            buttons += [_button(b.action_id, incident_id) for b in SILENCE_BUTTONS]
    if state.silence is not None:
        buttons.append(_button("unsilence", incident_id))
    if buttons:
        blocks.append({"type": "actions", "block_id": f"console:{incident_id}", "elements": buttons})
    return blocks


def note_line(note: Note) -> str:
    """One mrkdwn line: what happened, and who did it."""
    line = f"{NOTE_ICON.get(note.kind, ':information_source:')} {escape(note.text)}"
    return line + (f" by <@{note.by}>" if note.by else "")


def note_message(note: Note, mention: str | None) -> Message:
    blocks: list[dict[str, Any]] = [section(note_line(note))]
    if note.detail:
        blocks.append(section(escape(note.detail)))
    if note.output:
        blocks.append(code_section(json.dumps(note.output, indent=2, sort_keys=True, default=str))[0])
    text = escape(note.text)
    if mention:
        blocks.append(context(f"cc <!subteam^{mention}>"))
        text += f" <!subteam^{mention}>"
    return Message(fit(text, SECTION_CHARS)[0], blocks)
