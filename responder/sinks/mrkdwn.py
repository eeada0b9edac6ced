"""The one way text reaches Slack: every text object, fallback text, code block and link goes through here.

Alert labels, annotations, URLs, evidence and action output are written by whoever can reach an intake
or a target. Slack reads `<...>` as a control sequence (`<!channel>`, `<!here>`, `<@U123>`,
`<https://evil.example|Open Grafana>`), so every `&`, `<` and `>` that did not come from us is sent as an
HTML entity (https://api.slack.com/reference/surfaces/formatting#escaping), and a link is written only
for an `http`/`https` URL, with the characters that end a link (`<`, `>`, `|`) percent-encoded.
Anything rendered from stored or received data must use these functions, never an f-string `<{url}|...>`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

SAFE_SCHEMES = frozenset({"http", "https"})
FENCE = "```"
# What replaces a fence inside a code block, so the text cannot close it early and continue as mrkdwn.
FENCE_STAND_IN = "'''"
# What replaces a backtick inside inline code (it would end it): the modifier letter grave accent.
BACKTICK_STAND_IN = "\u02cb"
# A URL ends at whitespace in most clients and Slack ends a link at `|` or `>`: these never go raw.
_URL_UNSAFE = frozenset('<>|"` ') | {chr(c) for c in range(0x21)} | {"\x7f"}


def escape(text: str) -> str:
    """Mrkdwn (and plain_text) that shows `text` as written and can contain no mention, link or command."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def inline_code(text: str) -> str:
    """`text` as inline code; a backtick inside cannot end it."""
    return f"`{escape(text.replace('`', BACKTICK_STAND_IN)) or ' '}`"


def code_block(body: str) -> str:
    """A fenced code block showing `body` verbatim (escaped: Slack still parses `<...>` inside code)."""
    return f"{FENCE}\n{escape(body.replace(FENCE, FENCE_STAND_IN))}\n{FENCE}"


def safe_url(url: object) -> str | None:
    """`url` ready to go inside `<...|...>`, or None unless it is an absolute http(s) URL with a host."""
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in SAFE_SCHEMES or not parts.hostname:
        return None
    encoded = "".join(_percent(c) if c in _URL_UNSAFE else c for c in url.strip())
    return encoded.replace("&", "&amp;")


def link(url: object, label: str) -> str | None:
    """A mrkdwn link showing `label`, or None when `url` is not a safe http(s) URL (callers leave it out)."""
    target = safe_url(url)
    if target is None:
        return None
    shown = " ".join(label.split()) or target
    return f"<{target}|{escape(shown)}>"


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
