"""The Slack sink: one thread per incident (alert group), its parent kept current, delivered exactly once.

Two kinds of jobs run on its queue (`sink:slack`):
- incident events (`incident.processed`, `incident.members`, `incident.resolved`, ordered per incident)
  are expanded, without calling Slack, into outbox rows: one job per Slack call, ordered per thread
  (`slack-thread:<id>`), committed with the event's completion. The thread itself is decided durably
  first (see responder/store/slack_threads.py), so replicas and re-deliveries agree on it.
- outbox rows (`slack.post_parent`, `slack.reply`, `slack.upload`, `slack.update`, `slack.summary`) each
  make at most one call. Edits of the parent (`slack-parent:<id>`) and member summaries
  (`slack-summary:<id>`) are coalesced: one waits at a time, due no sooner than `min_update_interval`
  after the last edit (`summary_interval` after the last summary), and it renders the newest state when
  it runs; an edit that would change nothing and a summary with nothing new make no call. While the
  thread's channel is saturated (a storm), such a row waits for it to drain, for up to `backlog_max_wait`:
  the thread then gets one edit and one summary showing the final state instead of one per interval, each
  of them stale by the time it got its turn. Edits for a press or new evidence do not wait.
  Messages carry Slack `metadata` naming their row; a row that may already have been sent (a second
  attempt after a crash or a timeout) first looks for itself in the channel or thread, so nothing is
  posted twice. Rate limits wait out Retry-After, outages back off and retry for as long as
  `max_attempts` allows; permanent Slack errors are recorded on the incident and not retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from responder.backoff import backoff_delay
from responder.config import Config
from responder.events import IncidentEvent, Note
from responder.jobs import INCIDENT_MEMBERS, INCIDENT_PROCESSED, INCIDENT_RESOLVED, JobKind, Payload, Postpone
from responder.metrics import Metrics
from responder.models import Job, NewJob
from responder.sinks.base import Delivered, Sink, SinkError, SinkHandler, registry
from responder.sinks.slack_blocks import (
    Attachment,
    GroupCounts,
    Member,
    Message,
    cap_blocks,
    members_message,
    parent_message,
    phase_of,
    refire_message,
    resolved_message,
    section,
    thread_messages,
)
from responder.sinks.slack_charts import series_png
from responder.sinks.slack_console import console_blocks, note_line, note_message
from responder.store import Store
from responder.store.console import ConsoleStore
from responder.store.db import Connection
from responder.store.slack_threads import LEAD, REFIRE, SlackThreads, Thread
from responder.targets import alertmanager_for

if TYPE_CHECKING:
    import aiohttp
    from slack_sdk.web.async_client import AsyncWebClient
    from slack_sdk.web.async_slack_response import AsyncSlackResponse

log = logging.getLogger(__name__)

QUEUE = "sink:slack"
# The outbox rows (one Slack call each) have a queue and workers of their own: a row waiting its channel's
# turn holds a worker, and must not hold up the expansion of incident events into rows.
OUTBOX = "sink:slack:outbox"


class ThreadRow(Payload):
    thread_id: int


class EditRow(ThreadRow):
    # For member changes: may wait while the channel is saturated. For a press or new evidence: goes when due.
    paced: bool = False


class ReplyRow(ThreadRow):
    text: str
    blocks: list[dict[str, Any]]


class UploadRow(ThreadRow):
    filename: str
    title: str
    content_b64: str


POST_PARENT = JobKind("slack.post_parent", ThreadRow, queue=OUTBOX)
UPDATE = JobKind("slack.update", EditRow, queue=OUTBOX)
REPLY = JobKind("slack.reply", ReplyRow, queue=OUTBOX)
UPLOAD = JobKind("slack.upload", UploadRow, queue=OUTBOX)
SUMMARY = JobKind("slack.summary", ThreadRow, queue=OUTBOX)
R = TypeVar("R", bound=ThreadRow)
# The rows that are messages of a thread, in its order (ordering key THREAD_KEY and the thread's id): what
# a channel's backlog is made of. Summaries are messages too, but they are the rows that wait for it.
THREAD_KEY = "slack-thread:"
MESSAGE_KINDS = [POST_PARENT.name, REPLY.name, UPLOAD.name]
# A channel is saturated while its due messages need longer than this to go out at its rate. A few
# messages waiting is not a storm: edits and summaries then keep their intervals.
SATURATED_SECONDS = 5.0
# A paced edit or summary looks at its channel again when the backlog should have drained, within these bounds.
BACKLOG_RECHECK = (1.0, 30.0)
# A parent edit or summary waits for the parent message (behind a channel's backlog) this many attempts,
# 1 s more each time up to 10 s, about 20 minutes in all, then gives up.
PARENT_WAIT_ATTEMPTS = 130
METADATA_EVENT = "responder_message"
# Slack answers these with HTTP 200 and ok=false, yet they pass: retry them like an outage.
TRANSIENT_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
LOOKUP_PAGES = 10


class ChannelPacer:
    """Spaces out calls per key (a channel: Slack allows about one message per second there; chat.update:
    its own limit per workspace) and honours Retry-After. A call starts `interval` after the previous one
    on its key was answered, so no two reach Slack closer than that, whatever the network's jitter."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._next: dict[str, float] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # A channel's id -> the name it was first paced under (its messages share one turn).
        self._same: dict[str, str] = {}

    def same(self, name: str, channel_id: str) -> None:
        """`channel_id` is the channel first paced as `name`."""
        self._same.setdefault(channel_id, self._same.get(name, name))

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        key = self._same.get(key, key)
        async with self._locks[key]:
            wait = self._next.get(key, 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._next[key] = max(self._next.get(key, 0.0), time.monotonic() + self.interval)

    def pause(self, key: str, seconds: float) -> None:
        key = self._same.get(key, key)
        self._next[key] = max(self._next.get(key, 0.0), time.monotonic() + seconds)


@registry.register
class SlackSink(Sink):
    name = "slack"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.settings = config.sinks.slack
        self.pacer = ChannelPacer(self.settings.rate_per_channel)
        # Edits of parent messages do not count against a channel's messages; chat.update has its own limit.
        self.update_pacer = ChannelPacer(self.settings.update_rate)
        self._client: AsyncWebClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._threads: SlackThreads | None = None
        self._metrics: Metrics | None = None
        # channel name -> id, learnt from Slack's answers (ids are what history lookups need)
        self._channel_ids: dict[str, str] = {}

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.sinks.slack.token_value is not None

    async def start(self, store: Store, metrics: Metrics) -> None:
        import aiohttp
        from slack_sdk.web.async_client import AsyncWebClient

        token = self.settings.token_value
        assert token is not None
        self._session = aiohttp.ClientSession()
        self._client = AsyncWebClient(token=token, base_url=self.settings.api_url, session=self._session,
                                      timeout=max(1, round(self.settings.timeout)))
        self._threads = SlackThreads(store)
        self._metrics = metrics

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {"slack-outbox-gauges": self._watch_outbox}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def client(self) -> AsyncWebClient:
        assert self._client is not None, "the Slack sink is not started"
        return self._client

    @property
    def threads(self) -> SlackThreads:
        assert self._threads is not None, "the Slack sink is not started"
        return self._threads

    @property
    def metrics(self) -> Metrics:
        assert self._metrics is not None, "the Slack sink is not started"
        return self._metrics

    def outbox(self) -> list[tuple[JobKind[Any], SinkHandler[Any]]]:
        return [(POST_PARENT, self._on_thread(self._post_parent, parent=False)),
                (UPDATE, self._on_thread(self._update, follow_up=True)),
                (SUMMARY, self._on_thread(self._summary, follow_up=True)),
                (REPLY, self._on_thread(self._reply)),
                (UPLOAD, self._on_thread(self._upload))]

    def _on_thread(self, send: Callable[[Job, Thread, R], Awaitable[Delivered]], *, parent: bool = True,
                   follow_up: bool = False) -> SinkHandler[R]:
        """An outbox row's call with its thread loaded; a permanent failure is recorded on the incident.
        Rows ordered apart from the thread's (`follow_up`: edits, summaries) wait for a saturated channel
        (paced ones) and for the parent message to exist."""

        async def run(job: Job, row: R) -> Delivered:
            thread = await self.threads.get(row.thread_id)
            if thread is None:
                raise SinkError(f"slack thread {row.thread_id} does not exist", permanent=True)
            if follow_up and (wait := await self._backlog_wait(job, thread, row)) is not None:
                if await self._superseded(job):
                    # It would hold up the row queued behind it (an edit for a press, say), which shows
                    # the newest state anyway.
                    return Delivered({"superseded": True})
                raise Postpone(f"slack thread {thread.id}: channel {thread.channel} is saturated", wait)
            if follow_up and thread.ts is None and job.attempts < PARENT_WAIT_ATTEMPTS:
                raise SinkError(f"slack thread {thread.id}: its parent message is not posted yet",
                                retry_after=min(10.0, float(job.attempts)))
            if parent and (thread.ts is None or thread.channel_id is None):
                # Its parent message failed for good (recorded on the incident); nothing to reply to.
                raise SinkError(f"slack thread {thread.id} has no parent message", permanent=True)
            try:
                return await send(job, thread, row)
            except SinkError as exc:
                if exc.permanent and job.incident_id is not None:
                    await self.threads.record_error(job.incident_id, f"slack: {exc}")
                raise

        return run

    async def _backlog_wait(self, job: Job, thread: Thread, row: ThreadRow) -> float | None:
        """How long a paced edit or summary waits for its saturated channel, or None: it goes now."""
        if isinstance(row, EditRow) and not row.paced:
            return None
        left = job.created_at + self.settings.backlog_max_wait - time.time()
        if left <= 0:
            return None
        backlog = await self.threads.backlog(OUTBOX, THREAD_KEY, MESSAGE_KINDS, thread.channel)
        drained_in = backlog / self.settings.rate_per_channel - SATURATED_SECONDS
        if drained_in <= 0:
            return None
        low, high = BACKLOG_RECHECK
        return min(max(drained_in, low), high, left)

    async def _superseded(self, job: Job) -> bool:
        """Whether a later row of this kind waits on the row's key (it renders the newest state when it runs)."""
        async with self.threads.db.read() as conn:
            return await self.threads.store.queue.queued(conn, OUTBOX, job.ordering_key, job.kind)

    # --- expanding an incident event into outbox rows --------------------------------------------

    async def deliver(self, job: Job, event: IncidentEvent) -> Delivered:
        assert job.incident_id is not None
        incident = await self.threads.store.get_incident(job.incident_id)
        if incident is None:
            raise SinkError(f"incident {job.incident_id} does not exist", permanent=True)
        # The message builders (slack_blocks) and the thread's stored facts work on the event's JSON form.
        view: dict[str, Any] = event.incident.model_dump(mode="json")
        bundles: list[dict[str, Any]] = [b.model_dump(mode="json") for b in event.bundles]
        channel = next((b["channel"] for b in bundles if b.get("channel")), None) or self.settings.default_channel
        thread, role = await self.threads.assign(incident, channel, self.settings.refire_window)
        facts: dict[str, Any] | None = None
        replies: list[Message] = []
        leads = thread.lead_incident_id == incident.id
        if job.kind == INCIDENT_PROCESSED.name and role in (LEAD, REFIRE):
            facts = {"incident": view, "phase": phase_of(bundles), "alertmanager": alertmanager_for(
                self.config, incident.source, str(incident.extra.get("external_url") or ""),
                next((b["alertmanager"] for b in bundles if b.get("alertmanager")), None)),
                "actions": [f"{d['action']} on {d['target']}: {d['outcome']}" for b in bundles
                            for d in b.get("decisions", [])]}
            if role == REFIRE:
                replies.append(refire_message(view))
            replies += thread_messages(view, bundles)
            for bundle in bundles:
                replies += await self._charts(incident.id, bundle)
        elif job.kind == INCIDENT_MEMBERS.name and leads and thread.facts:
            facts = {**thread.facts, "incident": {**thread.facts.get("incident", view), **view}}
        elif job.kind == INCIDENT_RESOLVED.name and leads:
            facts = {**thread.facts, "incident": {**thread.facts.get("incident", view), **view}, "phase": "resolved"}
            replies.append(resolved_message(view, GroupCounts(incident.members_firing, incident.members_total)))
        rows = self._rows(job, thread, replies)

        async def writes(conn: Connection) -> None:
            if facts is not None:
                await SlackThreads.set_facts(conn, thread.id, incident.id, facts)
            if facts is not None or thread.facts:
                await self._queue_parent(conn, job, thread, paced=job.kind != INCIDENT_PROCESSED.name)
            if job.kind == INCIDENT_MEMBERS.name and leads:
                await self._queue_summary(conn, job, thread)
            for row in rows:
                await self.threads.store.queue.enqueue(conn, row)

        return Delivered({"thread": thread.id, "role": role, "messages": len(rows)}, writes=writes)

    async def _queue_parent(self, conn: Connection, job: Job, thread: Thread, *, paced: bool = False) -> None:
        """Queue the thread's parent message, or an edit of it unless one is already waiting. A paced edit
        (member changes, the resolution) is due `min_update_interval` after the last one and waits for a
        saturated channel; an edit for a person's press or for new evidence is due now and does not wait."""
        queue = self.threads.store.queue
        key = f"slack-parent:{thread.id}"
        if await SlackThreads.claim_parent(conn, thread.id):
            await queue.enqueue(conn, self._row(job, POST_PARENT, ThreadRow(thread_id=thread.id)))
        elif not paced:
            # A waiting paced edit becomes this one: due now, and not waiting for a saturated channel.
            edit = EditRow(thread_id=thread.id)
            if not await queue.hasten(conn, OUTBOX, key, UPDATE.name, payload=edit.model_dump(mode="json")):
                await queue.enqueue(conn, self._row(job, UPDATE, edit, key=key))
        elif not await queue.queued(conn, OUTBOX, key, UPDATE.name):
            await queue.enqueue(conn, self._row(job, UPDATE, EditRow(thread_id=thread.id, paced=True), key=key),
                                delay=_due_in(thread.parent_updated_at, self.settings.min_update_interval))

    async def _queue_summary(self, conn: Connection, job: Job, thread: Thread) -> None:
        """One waiting member summary per thread."""
        queue = self.threads.store.queue
        key = f"slack-summary:{thread.id}"
        if not await queue.queued(conn, OUTBOX, key, SUMMARY.name):
            # The first summary comes when an edit would; the next ones `summary_interval` after the last.
            delay = _due_in(thread.summary_at, self.settings.summary_interval) if thread.summary_at is not None \
                else _due_in(thread.parent_updated_at, self.settings.min_update_interval)
            await queue.enqueue(conn, self._row(job, SUMMARY, ThreadRow(thread_id=thread.id), key=key), delay=delay)

    async def note(self, job: Job, note: Note) -> Delivered:
        """A console press or a mitigation outcome: a reply in the incident's thread, and the parent edited
        to show it (its phase, the latest outcome, acknowledgement and silence)."""
        assert job.incident_id is not None
        thread = await self.threads.of_incident(job.incident_id)
        if thread is None or not thread.facts:
            return Delivered({"skipped": "the incident has no Slack thread"})
        mention = note.mention
        if note.kind == "not_recovered" and mention is None:
            severity = str(thread.facts.get("incident", {}).get("labels", {}).get("severity", ""))
            mention = self.settings.mentions.get(severity)
        replies = [note_message(note, mention)]
        for bundle in note.bundles:
            as_json = bundle.model_dump(mode="json")
            replies += thread_messages(thread.facts["incident"], [as_json])
            replies += await self._charts(job.incident_id, as_json)
        rows = self._rows(job, thread, replies)
        facts = {**thread.facts, "latest": note_line(note)}
        if note.phase is not None and thread.facts.get("phase") != "resolved":
            facts["phase"] = note.phase

        async def writes(conn: Connection) -> None:
            await SlackThreads.set_facts(conn, thread.id, thread.lead_incident_id or job.incident_id or 0, facts)
            await self._queue_parent(conn, job, thread)
            for row in rows:
                await self.threads.store.queue.enqueue(conn, row)

        return Delivered({"thread": thread.id, "note": note.kind, "messages": len(rows)}, writes=writes)

    async def _charts(self, incident_id: int, bundle: dict[str, Any]) -> list[Message]:
        charts = []
        for ev in bundle.get("evidence", []):
            series = (ev.get("payload") or {}).get("series")
            if not isinstance(series, list) or not series:
                continue
            # Titled by the step's id and its short title: a whole PromQL query does not fit a chart.
            title = f"{ev['step']}: {ev['title']}"
            png = await asyncio.to_thread(series_png, title, series)
            if png is not None:
                name = f"incident-{incident_id}-{ev['step']}.png"
                charts.append(Message("", [], [Attachment(name, title, png)]))
        return charts

    def _row(self, job: Job, kind: JobKind[R], row: R, *, key: str | None = None) -> NewJob:
        return kind.new(key or f"{THREAD_KEY}{row.thread_id}", row, incident_id=job.incident_id,
                        max_attempts=self.settings.max_attempts)

    def _rows(self, job: Job, thread: Thread, messages: list[Message]) -> list[NewJob]:
        rows = []
        for message in messages:
            if message.blocks:
                rows.append(self._row(job, REPLY, ReplyRow(thread_id=thread.id, text=message.text,
                                                           blocks=message.blocks)))
            rows += [self._row(job, UPLOAD, UploadRow(thread_id=thread.id, filename=a.filename, title=a.title,
                                                      content_b64=base64.b64encode(a.content).decode()))
                     for a in message.attachments]
        return rows

    # --- one Slack call per outbox row -----------------------------------------------------------

    async def _parent(self, thread: Thread) -> tuple[Message, GroupCounts, str]:
        """The parent message as it stands now, the group counts it shows, and its digest. The digest leaves
        out the incident's age: an edit that would change nothing else is not worth a call (in a storm every
        thread's edit would otherwise go out, minutes later, only to say so)."""
        severity = str(thread.facts.get("incident", {}).get("labels", {}).get("severity", ""))
        incident_id = int(thread.facts["incident"]["id"])
        store = self.threads.store
        incident = await store.get_incident(incident_id)
        counts = GroupCounts(incident.members_firing, incident.members_total) if incident else GroupCounts(0, 0)
        members = await store.members(incident_id, limit=self.settings.storm_list_lines)
        state = await ConsoleStore(store).state(incident_id)
        # Once somebody acknowledged, the severity's group is not called again.
        mention = None if state.acknowledged_by else self.settings.mentions.get(severity)
        shown = [Member(m.name, m.status.value, m.labels) for m in members]
        console = console_blocks(incident_id, state, silenceable=bool(thread.facts.get("alertmanager")),
                                 resolved=bool(counts.total) and not counts.firing, latest=thread.facts.get("latest"))
        message, ageless = (parent_message(thread.facts, shown, mention, self.settings.storm_list_lines, counts, now)
                            for now in (time.time(), None))
        message.blocks = cap_blocks(message.blocks + console)
        return message, counts, _digest(Message(ageless.text, cap_blocks(ageless.blocks + console)))

    # --- what the console asks of Slack --------------------------------------------------------------

    async def members_of(self, group: str) -> list[str]:
        """The user ids in a Slack user group (usergroups.users.list)."""
        async with asyncio.timeout(self.settings.timeout):
            response = await self.client.usergroups_users_list(usergroup=group)
        return [str(u) for u in response.get("users") or []]

    async def tell(self, channel: str, user: str, text: str) -> None:
        """An ephemeral message only `user` sees in `channel`."""
        async with asyncio.timeout(self.settings.timeout):
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text, blocks=[section(text)])

    def _metadata(self, job: Job) -> dict[str, Any]:
        return {"event_type": METADATA_EVENT, "event_payload": {"outbox_id": job.id, "incident_id": job.incident_id}}

    @staticmethod
    def _is_row(job: Job) -> Callable[[dict[str, Any]], bool]:
        def match(message: dict[str, Any]) -> bool:
            metadata = message.get("metadata") or {}
            return (metadata.get("event_type") == METADATA_EVENT
                    and (metadata.get("event_payload") or {}).get("outbox_id") == job.id)
        return match

    async def _post_parent(self, job: Job, thread: Thread, _: ThreadRow) -> Delivered:
        if thread.ts is not None and thread.channel_id is not None:
            return Delivered({"ts": thread.ts, "channel": thread.channel_id, "already": True})
        message, counts, digest = await self._parent(thread)
        found = None
        if job.attempts > 1:
            channel_id = await self._channel_id(job, thread.channel)
            found = await self._lookup(job, "conversations.history", self._is_row(job), channel=channel_id,
                                       oldest=f"{job.created_at - 60:.6f}")
            if found is not None:
                found = {**found, "channel": channel_id}
        if found is None:
            posted = await self._call("chat.postMessage", thread.channel, lambda: self.client.chat_postMessage(
                channel=thread.channel, text=message.text, blocks=message.blocks, metadata=self._metadata(job),
                unfurl_links=False, unfurl_media=False), job.attempts)
            found = {"channel": posted["channel"], "ts": posted["ts"]}
        channel_id, ts = str(found["channel"]), str(found["ts"])
        self._channel_ids[thread.channel] = channel_id
        self.pacer.same(thread.channel, channel_id)

        async def writes(conn: Connection) -> None:
            await SlackThreads.set_parent(conn, thread.id, channel_id, ts)
            # The members the parent shows are told: summaries count from here.
            await SlackThreads.set_shown(conn, thread.id, digest, _told(counts))

        return Delivered({"ts": ts, "channel": channel_id}, writes=writes)

    async def _update(self, job: Job, thread: Thread, _: ThreadRow) -> Delivered:
        assert thread.channel_id is not None and thread.ts is not None
        channel_id, ts = thread.channel_id, thread.ts
        message, _counts, digest = await self._parent(thread)
        if digest == thread.parent_digest:
            return Delivered({"ts": ts, "channel": channel_id, "unchanged": True})
        await self._call("chat.update", channel_id, lambda: self.client.chat_update(
            channel=channel_id, ts=ts, text=message.text, blocks=message.blocks), job.attempts)

        async def writes(conn: Connection) -> None:
            await SlackThreads.set_shown(conn, thread.id, digest, None)

        return Delivered({"ts": ts, "channel": channel_id}, writes=writes)

    async def _summary(self, job: Job, thread: Thread, row: ThreadRow) -> Delivered:
        """The member changes since the thread last told them, in one reply, or nothing if none."""
        incident = await self.threads.store.get_incident(thread.lead_incident_id or 0)
        if incident is None:
            return Delivered({"skipped": "no incident leads the thread"})
        counts = GroupCounts(incident.members_firing, incident.members_total)
        told = thread.announced or {}
        joined = counts.total - int(told.get("total", 0))
        resolved = (counts.total - counts.firing) - int(told.get("resolved", 0))
        if joined <= 0 and resolved <= 0:
            return Delivered({"unchanged": True})
        message = members_message(max(joined, 0), max(resolved, 0), counts)
        delivered = await self._reply(job, thread, ReplyRow(thread_id=row.thread_id, text=message.text,
                                                            blocks=message.blocks))

        async def writes(conn: Connection) -> None:
            await SlackThreads.set_announced(conn, thread.id, _told(counts))

        return Delivered({**delivered.result, "joined": joined, "resolved": resolved}, writes=writes)

    async def _reply(self, job: Job, thread: Thread, row: ReplyRow) -> Delivered:
        assert thread.channel_id is not None and thread.ts is not None
        channel_id, thread_ts = thread.channel_id, thread.ts
        if job.attempts > 1:
            found = await self._lookup(job, "conversations.replies", self._is_row(job), channel=channel_id,
                                       ts=thread_ts)
            if found is not None:
                return Delivered({"ts": found["ts"], "channel": channel_id, "found": True})
        response = await self._call("chat.postMessage", channel_id, lambda: self.client.chat_postMessage(
            channel=channel_id, thread_ts=thread_ts, text=row.text, blocks=row.blocks,
            metadata=self._metadata(job), unfurl_links=False, unfurl_media=False), job.attempts)
        return Delivered({"ts": response["ts"], "channel": channel_id})

    async def _upload(self, job: Job, thread: Thread, row: UploadRow) -> Delivered:
        assert thread.channel_id is not None and thread.ts is not None
        channel_id, thread_ts = thread.channel_id, thread.ts
        stem, dot, ext = row.filename.rpartition(".")
        # The row id in the file name is how a second attempt recognises an upload that already landed.
        filename = f"{stem}-{job.id}{dot}{ext}" if dot else f"{ext}-{job.id}"
        if job.attempts > 1:
            found = await self._lookup(
                job, "conversations.replies",
                lambda m: any(f.get("name") == filename for f in m.get("files") or []),
                channel=channel_id, ts=thread_ts)
            if found is not None:
                return Delivered({"ts": found["ts"], "channel": channel_id, "found": True})
        content = base64.b64decode(row.content_b64)
        response = await self._call("files.upload_v2", channel_id, lambda: self.client.files_upload_v2(
            channel=channel_id, thread_ts=thread_ts, content=content, filename=filename,
            title=row.title), job.attempts)
        return Delivered({"file": (response.get("file") or {}).get("id"), "channel": channel_id})

    async def _lookup(self, job: Job, method: str, match: Callable[[dict[str, Any]], bool],
                      **args: Any) -> dict[str, Any] | None:
        """The message a previous attempt of this row already posted, if any."""
        api = self.client.conversations_history if method == "conversations.history" else \
            self.client.conversations_replies
        cursor = None
        for _ in range(LOOKUP_PAGES):
            page = await self._call(method, None, lambda c=cursor: api(  # type: ignore[misc]
                include_all_metadata=True, limit=200, cursor=c, **args), job.attempts)
            for message in page.get("messages") or []:
                if match(message):
                    return dict(message)
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    async def _channel_id(self, job: Job, channel: str) -> str:
        if CHANNEL_ID.match(channel):
            return channel
        name = channel.lstrip("#")
        if channel in self._channel_ids:
            return self._channel_ids[channel]
        cursor = None
        for _ in range(LOOKUP_PAGES):
            page = await self._call("conversations.list", None, self._list_channels(cursor), job.attempts)
            for item in page.get("channels") or []:
                if item.get("name") == name:
                    self._channel_ids[channel] = str(item["id"])
                    self.pacer.same(channel, str(item["id"]))
                    return str(item["id"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        raise SinkError(f"conversations.list: channel_not_found ({channel})", permanent=True)

    def _list_channels(self, cursor: str | None) -> Callable[[], Awaitable[AsyncSlackResponse]]:
        return lambda: self.client.conversations_list(types="public_channel,private_channel", exclude_archived=True,
                                                      limit=1000, cursor=cursor)

    async def _call(self, method: str, channel: str | None, request: Callable[[], Awaitable[AsyncSlackResponse]],
                    attempts: int) -> AsyncSlackResponse:
        """One Slack call, paced per channel, with its failure sorted into wait, retry or give up."""
        import aiohttp
        from slack_sdk.errors import SlackApiError, SlackRequestError

        pacer, pace_key = self._pacing(method, channel)
        async with pacer.slot(pace_key) if pace_key is not None else contextlib.nullcontext():
            try:
                async with asyncio.timeout(self.settings.timeout * 4):  # an upload is three requests
                    response = await request()
            except SlackApiError as exc:
                status = exc.response.status_code
                error = exc.response.data.get("error", "") if isinstance(exc.response.data, dict) else ""
                if status == 429 or error == "ratelimited":
                    retry_after = _retry_after(exc.response.headers)
                    if pace_key is not None:
                        pacer.pause(pace_key, retry_after)
                    self._count(method, "ratelimited")
                    raise SinkError(f"{method}: rate limited, retry after {retry_after:g}s",
                                    retry_after=retry_after) from None
                if status >= 500 or error in TRANSIENT_ERRORS:
                    self._count(method, "transient")
                    raise SinkError(f"{method}: HTTP {status} {error}".rstrip(),
                                    retry_after=self._backoff(attempts)) from None
                self._count(method, "permanent")
                raise SinkError(f"{method}: {error or f'HTTP {status}'}", permanent=True) from None
            except (aiohttp.ClientError, SlackRequestError, TimeoutError, OSError) as exc:
                self._count(method, "transient")
                raise SinkError(f"{method}: {type(exc).__name__}: {exc}",
                                retry_after=self._backoff(attempts)) from None
        self._count(method, "ok")
        return response

    def _pacing(self, method: str, channel: str | None) -> tuple[ChannelPacer, str | None]:
        """Which pacer and key a call waits its turn on: edits on the workspace's chat.update limit, messages
        and uploads on their channel's; lookups are not paced."""
        if method == "chat.update":
            return self.update_pacer, method
        return self.pacer, channel

    def _backoff(self, attempts: int) -> float:
        pipeline = self.config.pipeline
        return backoff_delay(attempts, pipeline.retry_initial, pipeline.retry_max)

    def _count(self, method: str, outcome: str) -> None:
        self.metrics.slack_calls.labels(method, outcome).inc()

    async def _watch_outbox(self) -> None:
        while True:
            try:
                depth, oldest = await self.threads.outbox(OUTBOX, "slack.")
                self.metrics.slack_outbox_depth.set(depth)
                self.metrics.slack_oldest_pending.set(time.time() - oldest if oldest is not None else 0)
            except Exception as exc:  # the gauges must never take the daemon down
                log.debug("slack outbox gauges unavailable: %s", exc)
            await asyncio.sleep(2)


def _due_in(last: float | None, interval: float) -> float:
    """Seconds until `interval` has passed since `last`, or from now when there is no `last` (the parent is
    not posted yet: what it shows when posted counts as told, and the row then finds little or nothing new)."""
    return max(0.0, (time.time() if last is None else last) + interval - time.time())


def _digest(message: Message) -> str:
    return hashlib.sha256(json.dumps([message.text, message.blocks], sort_keys=True).encode()).hexdigest()[:32]


def _told(counts: GroupCounts) -> dict[str, int]:
    return {"total": counts.total, "resolved": counts.total - counts.firing}


def _retry_after(headers: Any) -> float:
    value = None
    for key, raw in dict(headers or {}).items():
        if str(key).lower() == "retry-after":
            value = raw[0] if isinstance(raw, list) else raw
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0
