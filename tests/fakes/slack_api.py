"""A local fake of the Slack Web API, reached through the real slack-sdk `AsyncWebClient`.

It speaks Slack's wire protocol: methods are `POST /api/<method>` with arguments in the query string, a
form body or a JSON body; API errors are HTTP 200 with `{"ok": false, "error": ...}`; rate limits are
HTTP 429 with `Retry-After`. It keeps channels, messages, threads, metadata and uploaded files, records
every call, validates what Slack validates (token, channels, block limits), and can inject faults:
failures for the next calls or for a time window, delays, per-channel rate limits and API errors.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.test_utils import TestServer

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_MESSAGE_TEXT = 40000


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    args: dict[str, Any]
    status: int
    error: str | None
    time: float


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    metadata: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    edited: int = 0

    def as_api(self, include_metadata: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "message", "user": "UBOT", "bot_id": "BBOT", "ts": self.ts,
                                "text": self.text, "blocks": self.blocks}
        if self.thread_ts is not None:
            data["thread_ts"] = self.thread_ts
        if self.files:
            data["files"] = self.files
        if self.edited:
            data["edited"] = {"user": "UBOT", "ts": self.ts}
        if include_metadata and self.metadata is not None:
            data["metadata"] = self.metadata
        return data


class SlackError(Exception):
    def __init__(self, error: str, status: int = 200, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.retry_after = retry_after


def _check_blocks(blocks: list[dict[str, Any]]) -> None:
    if len(blocks) > MAX_BLOCKS:
        raise SlackError("invalid_blocks")
    for block in blocks:
        if block.get("type") == "section":
            texts = [block.get("text") or {}, *(block.get("fields") or [])]
            if any(len(t.get("text", "")) > MAX_SECTION_TEXT for t in texts):
                raise SlackError("invalid_blocks")
            if len(block.get("fields") or []) > 10:
                raise SlackError("invalid_blocks")
        too_long_header = block.get("type") == "header" and len(block["text"]["text"]) > MAX_HEADER_TEXT
        if too_long_header or (block.get("type") == "actions" and len(block.get("elements") or []) > 25):
            raise SlackError("invalid_blocks")


class FakeSlack:
    """`async with FakeSlack("xoxb-test") as slack:` then `AsyncWebClient(token, base_url=slack.api_url)`."""

    def __init__(self, token: str, channels: dict[str, str] | None = None) -> None:
        self.token = token
        # name -> id; ids are accepted as they are, names with or without '#'
        self.channels: dict[str, str] = channels or {"incidents": "C0INCIDENTS", "alerts": "C0ALERTS",
                                                     "db-oncall": "C0DBONCALL"}
        self.calls: list[Call] = []
        self.messages: dict[str, list[Message]] = {cid: [] for cid in self.channels.values()}
        self.uploads: dict[str, dict[str, Any]] = {}
        # user group id -> member user ids (usergroups.users.list)
        self.usergroups: dict[str, list[str]] = {}
        # ephemeral messages: only their user sees them, and they are not in the channel's history
        self.ephemeral: list[dict[str, Any]] = []
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._fail_next: list[tuple[int, float | None]] = []
        self._fail_until = 0.0
        self._fail_status = 503
        self._delay = 0.0
        self._rate: tuple[float, float] | None = None
        self._last_post: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._server: TestServer | None = None
        self.url = ""

    # --- fault injection ------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None) -> None:
        """The next `n` calls (API methods and uploads) answer `status` (429 carries Retry-After)."""
        self._fail_next += [(status, retry_after)] * n

    def fail_for(self, seconds: float, status: int = 503) -> None:
        """Every call answers `status` for the next `seconds` (an outage)."""
        self._fail_until = time.time() + seconds
        self._fail_status = status

    def recover(self) -> None:
        self._fail_until = 0.0
        self._fail_next.clear()

    def set_delay(self, seconds: float) -> None:
        """Successful calls answer this late (after their effect)."""
        self._delay = seconds

    def rate_limit(self, per_channel_per_second: float | None, retry_after: float = 1.0) -> None:
        """Posting to one channel faster than this answers 429 (None lifts the limit)."""
        self._rate = None if per_channel_per_second is None else (per_channel_per_second, retry_after)

    def set_error(self, method: str, error: str | None) -> None:
        """`method` answers HTTP 200 `{"ok": false, "error": error}` until cleared with None."""
        if error is None:
            self._errors.pop(method, None)
        else:
            self._errors[method] = error

    # --- inspection -----------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def channel_id(self, name_or_id: str) -> str:
        cid = self._resolve(name_or_id)
        if cid is None:
            raise KeyError(name_or_id)
        return cid

    def parents(self, channel: str) -> list[Message]:
        return [m for m in self.messages[self.channel_id(channel)] if m.thread_ts is None]

    def thread(self, channel: str, ts: str) -> list[Message]:
        """The parent then its replies, oldest first."""
        msgs = self.messages[self.channel_id(channel)]
        return [m for m in msgs if m.ts == ts and m.thread_ts is None] + [m for m in msgs if m.thread_ts == ts]

    def calls_to(self, method: str, *, ok: bool | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and (ok is None or (c.error is None) == ok)]

    # --- server ---------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url("")).rstrip("/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.close()

    def _resolve(self, channel: str) -> str | None:
        if channel in self.messages:
            return channel
        return self.channels.get(channel.lstrip("#"))

    def _injected_fault(self) -> SlackError | None:
        if self._fail_next:
            status, retry_after = self._fail_next.pop(0)
            return SlackError("ratelimited" if status == 429 else "service_unavailable", status, retry_after)
        if time.time() < self._fail_until:
            return SlackError("service_unavailable", self._fail_status)
        return None

    @staticmethod
    def _error_response(err: SlackError) -> web.Response:
        headers = {}
        if err.retry_after is not None:
            headers["Retry-After"] = str(int(err.retry_after) if err.retry_after == int(err.retry_after)
                                         else err.retry_after)
        if err.status >= 500:
            # An outage answers like a load balancer in trouble: not Slack's JSON.
            return web.Response(status=err.status, text="upstream connect error", headers=headers)
        return web.json_response({"ok": False, "error": err.error}, status=err.status, headers=headers)

    async def _args(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        body = await request.read()
        ctype = request.content_type
        if body and ctype == "application/json":
            args.update(json.loads(body))
        elif body and ctype == "application/x-www-form-urlencoded":
            args.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        elif body and ctype.startswith("multipart/"):
            form = await request.post()
            args.update({k: v for k, v in form.items() if isinstance(v, str)})
        for key in ("blocks", "metadata", "files"):
            if isinstance(args.get(key), str) and args[key]:
                args[key] = json.loads(args[key])
        return args

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._args(request)
        status, error, response = 200, None, None
        try:
            fault = self._injected_fault()
            if fault is not None:
                raise fault
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.get("token", "")
            if not token:
                raise SlackError("not_authed")
            if token != self.token:
                raise SlackError("invalid_auth")
            if method in self._errors:
                raise SlackError(self._errors[method])
            handler = getattr(self, "m_" + method.replace(".", "_"), None)
            if handler is None:
                raise SlackError("unknown_method", 404)
            response = {"ok": True, **handler(args, request)}
        except SlackError as exc:
            status, error = exc.status, exc.error
            self.calls.append(Call(method, args, status, error, time.time()))
            return self._error_response(exc)
        self.calls.append(Call(method, args, status, error, time.time()))
        if self._delay:
            # Slack did the work but answers late: a client that gives up cannot tell whether it happened.
            await asyncio.sleep(self._delay)
        return web.json_response(response)

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        body = await request.read()
        fault = self._injected_fault()
        if fault is not None:
            self.calls.append(Call("upload", {"file_id": file_id}, fault.status, fault.error, time.time()))
            return web.Response(status=fault.status, text=fault.error)
        if file_id not in self.uploads:
            self.calls.append(Call("upload", {"file_id": file_id}, 404, "not_found", time.time()))
            return web.Response(status=404, text="not found")
        self.uploads[file_id]["content"] = body
        self.calls.append(Call("upload", {"file_id": file_id}, 200, None, time.time()))
        return web.Response(text=f"OK - {len(body)}")

    # --- methods --------------------------------------------------------------------------------

    def _channel(self, args: dict[str, Any], key: str = "channel") -> str:
        cid = self._resolve(str(args.get(key) or ""))
        if cid is None:
            raise SlackError("channel_not_found")
        return cid

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _find(self, channel: str, ts: str) -> Message:
        for msg in self.messages[channel]:
            if msg.ts == ts:
                return msg
        raise SlackError("message_not_found")

    def _check_rate(self, channel: str) -> None:
        if self._rate is None:
            return
        per_second, retry_after = self._rate
        now = time.time()
        if now - self._last_post.get(channel, 0.0) < 1.0 / per_second:
            raise SlackError("ratelimited", 429, retry_after)
        self._last_post[channel] = now

    @staticmethod
    def _content(args: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        text, blocks = str(args.get("text") or ""), list(args.get("blocks") or [])
        if not text and not blocks:
            raise SlackError("no_text")
        if len(text) > MAX_MESSAGE_TEXT:
            raise SlackError("msg_too_long")
        _check_blocks(blocks)
        return text, blocks

    def m_auth_test(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"url": "https://fake.slack.test/", "team": "Fake", "user": "responder", "team_id": "T0FAKE",
                "user_id": "UBOT", "bot_id": "BBOT"}

    def m_chat_postMessage(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(args)
        text, blocks = self._content(args)
        thread_ts = args.get("thread_ts") or None
        if thread_ts is not None:
            self._find(channel, str(thread_ts))
        metadata = args.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and metadata.get("event_type")
                                         and isinstance(metadata.get("event_payload"), dict)):
            raise SlackError("invalid_metadata_format")
        self._check_rate(channel)
        msg = Message(channel, self._next_ts(), text, blocks, None if thread_ts is None else str(thread_ts), metadata)
        self.messages[channel].append(msg)
        return {"channel": channel, "ts": msg.ts, "message": msg.as_api(include_metadata=True)}

    def m_chat_update(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(args)
        msg = self._find(channel, str(args.get("ts") or ""))
        msg.text, msg.blocks = self._content(args)
        msg.edited += 1
        return {"channel": channel, "ts": msg.ts, "text": msg.text, "message": msg.as_api(include_metadata=False)}

    @staticmethod
    def _page(items: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        page = items[start:start + limit]
        more = start + limit < len(items)
        return {"messages": page, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    @staticmethod
    def _flag(args: dict[str, Any], key: str) -> bool:
        return str(args.get(key, "")).lower() in ("1", "true")

    def m_conversations_history(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(args)
        oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or 1e12)
        metadata = self._flag(args, "include_all_metadata")
        top = [m.as_api(metadata) for m in reversed(self.messages[channel])
               if m.thread_ts is None and oldest <= float(m.ts) <= latest]
        return self._page(top, args)

    def m_conversations_replies(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(args)
        ts = str(args.get("ts") or "")
        if not any(m.ts == ts for m in self.messages[channel]):
            raise SlackError("thread_not_found")
        metadata = self._flag(args, "include_all_metadata")
        return self._page([m.as_api(metadata) for m in self.thread(channel, ts)], args)

    def m_usergroups_users_list(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        group = str(args.get("usergroup") or "")
        if not group:
            raise SlackError("invalid_arguments")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def m_chat_postEphemeral(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(args)
        user = str(args.get("user") or "")
        if not user:
            raise SlackError("user_not_in_channel")
        text, blocks = self._content(args)
        ts = self._next_ts()
        self.ephemeral.append({"channel": channel, "user": user, "text": text, "blocks": blocks, "message_ts": ts})
        return {"message_ts": ts}

    def m_conversations_list(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channels = [{"id": cid, "name": name, "is_channel": True} for name, cid in self.channels.items()]
        page = self._page(channels, args)
        return {"channels": page["messages"], "response_metadata": page["response_metadata"]}

    def m_files_getUploadURLExternal(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        filename, length = args.get("filename"), args.get("length")
        if not filename or not str(length or "").isdigit():
            raise SlackError("invalid_arguments")
        file_id = f"F{next(self._file_ids):08d}"
        self.uploads[file_id] = {"filename": filename, "length": int(str(length)), "content": None}
        return {"upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def m_files_completeUploadExternal(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        files = args.get("files")
        if not isinstance(files, list) or not files:
            raise SlackError("invalid_arguments")
        shared = []
        for f in files:
            upload = self.uploads.get(str(f.get("id")))
            if upload is None or upload["content"] is None:
                raise SlackError("file_not_found")
            if len(upload["content"]) != upload["length"]:
                raise SlackError("file_upload_size_mismatch")
            shared.append({"id": f["id"], "name": upload["filename"], "title": f.get("title") or upload["filename"],
                           "size": upload["length"]})
        channel_arg = args.get("channel_id") or args.get("channels")
        if channel_arg:
            channel = self._channel({"channel": channel_arg})
            thread_ts = args.get("thread_ts") or None
            if thread_ts is not None:
                self._find(channel, str(thread_ts))
            self._check_rate(channel)
            msg = Message(channel, self._next_ts(), str(args.get("initial_comment") or ""),
                          thread_ts=None if thread_ts is None else str(thread_ts), files=shared)
            self.messages[channel].append(msg)
        return {"files": shared}
