"""The `console` queue: one job per button press, handled once.

The press's row in `slack_clicks` is the fence: the transaction that changes anything (an approval, an
acknowledgement, a re-run slot, a silence's record) also moves the row out of `queued` and queues the
`incident.note` events that tell the thread, so a job run twice, a double click or a Slack retry does one
thing. The person who pressed is answered with an ephemeral message after that commit; a refusal (no
permission, too soon, Alertmanager down) is recorded on the row with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from responder.buttons import BUTTONS
from responder.config import Config
from responder.console.alertmanager import (
    AlertmanagerError,
    alertmanager_api,
    silence_matchers,
)
from responder.console.clicks import permalink
from responder.console.permissions import Permissions
from responder.events import Note
from responder.jobs import (
    CLICK,
    INCIDENT_NOTE,
    MITIGATIONS_QUEUE,
    PIPELINE_QUEUE,
    REFRESH,
    ClickRef,
    JobTable,
    RefreshJob,
)
from responder.metrics import Metrics
from responder.models import Incident, Job
from responder.rules.engine import RuleSet
from responder.sinks.mrkdwn import escape
from responder.sinks.slack_blocks import duration, when
from responder.store import Store
from responder.store.actions import ActionStore
from responder.store.console import Click, ConsoleStore
from responder.store.db import Connection
from responder.targets import Targets, UnknownTarget, alertmanager_for

log = logging.getLogger(__name__)

# Sends an ephemeral message: (channel id, user id, mrkdwn text).
Tell = Callable[[str, str, str], Awaitable[None]]


@dataclass(slots=True)
class Outcome:
    """How a press ended: the audit's outcome and detail, what the presser is told, what the thread is told."""

    outcome: str
    detail: str
    reply: str | None = None
    notes: list[Note] = field(default_factory=list)
    # Queues to wake once committed.
    wake: tuple[str, ...] = ()
    # What the press changes in the store, in the transaction that records it; it decides the outcome.
    change: Callable[[Connection], Awaitable[Outcome]] | None = None


def actor(click: Click) -> str:
    return f"slack:{click.user_id}" + (f" ({click.user_name})" if click.user_name else "")


@dataclass
class ConsoleJobs:
    config: Config
    store: Store
    ruleset: RuleSet
    targets: Targets
    permissions: Permissions
    sink_queues: Sequence[str]
    wake: Callable[[str], None]
    tell: Tell | None = None
    metrics: Metrics | None = None

    @property
    def console(self) -> ConsoleStore:
        return ConsoleStore(self.store)

    def register(self, table: JobTable) -> None:
        table.add(CLICK, self.handle)

    async def handle(self, job: Job, ref: ClickRef) -> None:
        click = await self.console.click(ref.click_id)
        if click is None or click.outcome != "queued":
            await self.store.queue.finish(job, {"already": True})
            return
        verdict = await self.permissions.check(click.user_id, click.permission)
        if click.incident_id is None:
            outcome = Outcome("declined", f"no incident or approval {click.value}",
                              "This message is about an incident this responder does not know (any more).")
        elif not verdict.allowed:
            label = BUTTONS[click.button].label
            outcome = Outcome("refused", verdict.why, f":no_entry: You may not press *{label}*: {escape(verdict.why)}.")
        else:
            outcome = await HANDLERS[click.button](self, click, job)
        outcome = await self._commit(click, outcome)
        if self.metrics is not None and outcome.outcome != "already":
            self.metrics.slack_clicks.labels(click.button, outcome.outcome).inc()
        await self.store.queue.finish(job, {"outcome": outcome.outcome, "detail": outcome.detail})
        for queue in outcome.wake:
            self.wake(queue)
        if outcome.reply is not None and self.tell is not None and click.channel_id is not None:
            try:
                await self.tell(click.channel_id, click.user_id, outcome.reply)
            except Exception as exc:  # the press is handled and recorded; only the private answer is lost
                log.warning("could not answer %s privately: %s", click.user_id, exc)

    async def _commit(self, click: Click, outcome: Outcome) -> Outcome:
        """Record the press's outcome (and what it changed, and the notes for the thread) once."""
        async with self.store.db.transaction() as conn:
            if not await ConsoleStore.claim_click(conn, click.id):
                return Outcome("already", "handled by an earlier run of this job")
            if outcome.change is not None:
                outcome = await outcome.change(conn)
            await ConsoleStore.finish_click(conn, click.id, outcome.outcome, outcome.detail)
            if click.incident_id is not None:
                for note in outcome.notes:
                    for queue in self.sink_queues:
                        await self.store.queue.enqueue(conn, INCIDENT_NOTE.new(
                            f"incident:{click.incident_id}", note, incident_id=click.incident_id, queue=queue))
        return outcome

    async def _incident(self, click: Click) -> Incident | None:
        return await self.store.get_incident(click.incident_id) if click.incident_id is not None else None

    # --- the buttons ----------------------------------------------------------------------------

    async def decide(self, click: Click, job: Job) -> Outcome:
        approve = click.button == "approve"
        actions = ActionStore(self.store)

        async def change(conn: Connection) -> Outcome:
            state, changed, action = await actions.decide_in(conn, click.value, approve, actor(click))
            if not changed:
                return Outcome("unchanged", f"approval {click.value} is {state}",
                               f"Nothing changed: approval {click.value} is already {state}.")
            if self.metrics is not None:
                self.metrics.actions.labels(action, state, "approval").inc()
            note = Note(kind=state, text=f"{action} {state}", by=click.user_id,
                        phase="mitigating" if approve else "firing")
            return Outcome("done", f"approval {click.value} {state}", None, [note],
                           (MITIGATIONS_QUEUE,) if approve else ())

        return Outcome("unchanged", "", change=change)

    async def acknowledge(self, click: Click, job: Job) -> Outcome:
        assert click.incident_id is not None
        incident_id = click.incident_id

        async def change(conn: Connection) -> Outcome:
            counted, by, at = await ConsoleStore.acknowledge(conn, incident_id, click.user_id)
            if not counted:
                return Outcome("unchanged", f"already acknowledged by {by}",
                               f"Already acknowledged by <@{by}> at {when(at)}.")
            return Outcome("done", "acknowledged", None,
                           [Note(kind="acknowledged", text="Acknowledged", by=click.user_id)])

        return Outcome("unchanged", "", change=change)

    async def rerun(self, click: Click, job: Job) -> Outcome:
        assert click.incident_id is not None
        incident_id = click.incident_id
        interval = self.config.sinks.slack.rerun_min_interval

        async def change(conn: Connection) -> Outcome:
            taken, last_by, last_at = await ConsoleStore.claim_rerun(conn, incident_id, click.user_id, interval)
            if not taken:
                ago = time.time() - float(last_at or 0)
                return Outcome("declined", f"re-run {ago:.0f}s ago (min interval {interval:g}s)",
                               f"Diagnostics were re-run {duration(ago)} ago by <@{last_by}>; they run at most once"
                               f" every {duration(interval)}. Try again in {duration(interval - ago)}.")
            await self.store.queue.enqueue(conn, REFRESH.new(
                f"incident:{incident_id}", RefreshJob(requested_by=click.user_id), incident_id=incident_id))
            return Outcome("done", "diagnostics queued",
                           "Re-running diagnostics: the new evidence will appear in the thread.", [],
                           (PIPELINE_QUEUE,))

        return Outcome("unchanged", "", change=change)

    async def silence(self, click: Click, job: Job) -> Outcome:
        incident = await self._incident(click)
        if incident is None:
            return Outcome("declined", "no incident", "This incident no longer exists.")
        rule_choice = next((r.alertmanager for r in self.ruleset.rules
                            if r.name in (incident.rule or "").split(",") and r.alertmanager), None)
        name = alertmanager_for(self.config, incident.source, str(incident.extra.get("external_url") or ""),
                                rule_choice)
        if name is None:
            return Outcome("declined", "no alertmanager target for this incident",
                           "No Alertmanager is configured for this incident (targets.alertmanager).")
        seconds = BUTTONS[click.button].seconds
        now = time.time()
        active = await self.console.active_silence(incident.id)
        if active is not None and active.ends_at >= now + seconds - 60:
            return Outcome("unchanged", f"already silenced until {when(active.ends_at)}",
                           f"Already silenced until {when(active.ends_at)} by {escape(active.created_by)}.")
        matchers = silence_matchers(incident)
        marker = f"[responder click {click.id}]"
        link = permalink(click.team_domain, click.channel_id, click.message_ts)
        comment = f"Silenced from Slack for {duration(seconds)}: {link or f'incident #{incident.id}'} {marker}"
        try:
            api = await alertmanager_api(self.targets, name)
            found = await api.find_silence(marker) if job.attempts > 1 else None
            silence_id = str(found["id"]) if found is not None else await api.create_silence(
                matchers, now, now + seconds, actor(click), comment,
                silence_id=active.silence_id if active is not None else None)
        except (AlertmanagerError, UnknownTarget) as exc:
            return Outcome("failed", str(exc), f":warning: Could not silence: {escape(str(exc))}")
        incident_id = incident.id

        async def change(conn: Connection) -> Outcome:
            await ConsoleStore.save_silence(conn, incident_id, name, silence_id, matchers, actor(click), now,
                                            now + seconds, click.id)
            text = (f"Silenced in Alertmanager {name} for {duration(seconds)}, until {when(now + seconds)}"
                    f" ({', '.join(f'{k}={v}' for k, v in sorted(matchers.items()))})")
            return Outcome("done", f"silence {silence_id} in {name}", None,
                           [Note(kind="silenced", text=text, by=click.user_id)])

        return Outcome("unchanged", "", change=change)

    async def unsilence(self, click: Click, job: Job) -> Outcome:
        assert click.incident_id is not None
        active = await self.console.active_silence(click.incident_id)
        if active is None:
            return Outcome("unchanged", "no active silence", "There is no active silence to end.")
        try:
            api = await alertmanager_api(self.targets, active.alertmanager)
            await api.expire_silence(active.silence_id)
        except (AlertmanagerError, UnknownTarget) as exc:
            return Outcome("failed", str(exc), f":warning: Could not end the silence: {escape(str(exc))}")

        async def change(conn: Connection) -> Outcome:
            await ConsoleStore.end_silence(conn, active.id, click.user_id)
            return Outcome("done", f"silence {active.silence_id} expired", None,
                           [Note(kind="unsilenced", text=f"Silence in Alertmanager {active.alertmanager} ended",
                                 by=click.user_id)])

        return Outcome("unchanged", "", change=change)


ButtonHandler = Callable[[ConsoleJobs, Click, Job], Awaitable[Outcome]]
HANDLERS: dict[str, ButtonHandler] = {
    "approve": ConsoleJobs.decide, "deny": ConsoleJobs.decide, "acknowledge": ConsoleJobs.acknowledge,
    "rerun": ConsoleJobs.rerun, "unsilence": ConsoleJobs.unsilence,
    **{b.action_id: ConsoleJobs.silence for b in BUTTONS.values() if b.seconds},
}
