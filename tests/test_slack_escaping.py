"""Slack mrkdwn injection: whatever a sender or a target puts in a label, annotation, URL, evidence or action
output, the rendered messages carry no mention or command (`<!everyone>`) and no link but http(s)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from responder.sinks.mrkdwn import code_block, escape, inline_code, link, safe_url
from responder.sinks.slack_blocks import Member, Message, parent_message, thread_messages

MENTION = "S0ONCALL"
# The only control sequences a message may hold: http(s) links we wrote, and the configured mention.
ALLOWED = re.compile(r"<(https?://[^\s<>|]+)\|[^<>|\n]*>|<!subteam\^" + MENTION + ">", re.IGNORECASE)
ATTACKS = ["<!everyone>", "<!channel>", "<!here>", "<!subteam^S999>", "<@U123>", "<#C123>",
           "<https://evil.example|Open Grafana>", "&lt;!channel&gt;", "<javascript:alert(1)|x>", "```<!here>```",
           "`<!here>`", "\n```\n<!channel>", "<<!here>>", "<https://a|b|c>"]
URLS = ["javascript:alert(1)", "data:text/html,x", "file:///etc/passwd", "slack://open", "//evil.example",
        "https://ok.example/<!here>", "https://ok.example/a|Click>", "https://x.example/?a=1&b=<2>",
        "HTTPS://EVIL.EXAMPLE", "http:///nohost", " https://spaces.example", "https://e.example/\n<!here>",
        "https://ok.example/runbook"]


def texts(node: Any) -> list[str]:
    """Every text Slack renders in a message: text objects of any type, fields, and elements."""
    if isinstance(node, dict):
        found = [node["text"]] if isinstance(node.get("text"), str) else []
        return found + [t for key, value in node.items() for t in texts(value) if key != "text" or
                        not isinstance(value, str)]
    if isinstance(node, list):
        return [t for item in node for t in texts(item)]
    return []


def assert_safe(messages: list[Message]) -> None:
    for message in messages:
        for text in [message.text, *texts(message.blocks)]:
            rest = ALLOWED.sub("", text)
            assert "<" not in rest and ">" not in rest, text
            for url in re.findall(r"<([^|>]*)\|", text):
                assert urlsplit(url).scheme.lower() in ("http", "https") and urlsplit(url).hostname, url


def render(labels: dict[str, str], annotations: dict[str, str], urls: dict[str, str], evidence_text: str,
           title: str, output: Any, reason: str, rule: str = "api-errors") -> list[Message]:
    incident = {"id": 1, "alertname": labels.get("alertname", ""), "labels": labels, "annotations": annotations,
                "rule": rule, "starts_at": 1_767_225_600.0, "resolved_at": 1_767_229_200.0,
                "extra": {"generator_url": urls.get("generator"), "external_url": urls.get("external")}}
    evidence = [{"step": "s", "collector": title, "title": title, "status": "ok", "duration_ms": 1.0,
                 "payload": payload, "text": evidence_text, "full_text": None, "truncated": False}
                for payload in ({}, {"rows": [{title: evidence_text}]}, {"fields": {title: evidence_text}})]
    decision = {"step": "d", "action": title, "target": evidence_text, "mode": title, "outcome": "pending",
                "description": evidence_text, "reason": reason, "output": output, "verification": reason,
                "approval_id": 3}
    bundles = [{"rule": rule, "evidence": evidence, "decisions": [decision], "errors": [reason],
                "checklist": [evidence_text], "channel": None}]
    members = [Member(labels.get("alertname", ""), "firing", labels), Member(title, "resolved", labels)]
    messages = [parent_message({"incident": incident, "phase": phase}, members, MENTION, 20)
                for phase in ("firing", "resolved")]
    return messages + thread_messages(incident, bundles)


def test_every_attack_is_shown_as_text() -> None:
    for attack in ATTACKS:
        messages = render({"alertname": attack, "service": attack}, {"summary": attack, "description": attack,
                          "runbook_url": attack}, {"generator": attack, "external": attack}, attack, attack,
                          {"body": attack}, attack, rule=attack)
        assert_safe(messages)
        # Shown, not dropped: the reader still sees what the sender wrote.
        assert escape(attack) in messages[0].blocks[1]["text"]["text"]


def test_links_only_http_and_https_with_breaking_characters_encoded() -> None:
    for url in URLS:
        messages = render({"alertname": "A"}, {"runbook_url": url}, {"generator": url, "external": url}, "", "t",
                          {}, "r")
        assert_safe(messages)
    assert link("javascript:alert(1)", "Runbook") is None
    assert link("https://ok.example/a|Click>", "Runbook") == "<https://ok.example/a%7CClick%3E|Runbook>"
    assert safe_url("https://x.example/?a=1&b=<2>") == "https://x.example/?a=1&amp;b=%3C2%3E"
    assert link("https://ok.example/", "<!here> | x") == "<https://ok.example/|&lt;!here&gt; | x>"


def test_code_stays_code() -> None:
    assert code_block("a\n```\n<!channel>") == "```\na\n'''\n&lt;!channel&gt;\n```"
    assert inline_code("a`<!here>`") == "`a\u02cb&lt;!here&gt;\u02cb`"


def test_parent_links_the_real_runbook() -> None:
    [firing, *_] = render({"alertname": "A"}, {"runbook_url": "https://runbooks.example/a?x=1&y=2"},
                          {"generator": "http://prometheus.example/graph?g0.expr=up"}, "", "t", {}, "r")
    links = " ".join(texts(firing.blocks))
    assert "<https://runbooks.example/a?x=1&amp;y=2|Runbook>" in links
    assert "<http://prometheus.example/graph?g0.expr=up|Source>" in links


# Pieces of control sequences glued together: the nastiest inputs are nearly valid mrkdwn.
hostile = (st.lists(st.sampled_from([*"<>!|&`*_~:/\\ \n@#^aht.", "<!", "https://", "```", "&lt;", "http:"]),
                    max_size=25).map("".join)
           | st.sampled_from(ATTACKS + URLS) | st.text(max_size=40))


@settings(max_examples=300, deadline=None)
@given(labels=st.dictionaries(hostile, hostile, max_size=5), annotations=st.dictionaries(
       st.sampled_from(["summary", "description", "runbook_url"]) | hostile, hostile, max_size=4),
       generator=hostile, external=hostile, evidence_text=hostile, title=hostile, reason=hostile,
       output=st.dictionaries(hostile, hostile, max_size=3), rule=hostile)
def test_fuzzed_rendering_has_no_mention_and_no_foreign_link(
        labels: dict[str, str], annotations: dict[str, str], generator: str, external: str, evidence_text: str,
        title: str, reason: str, output: dict[str, str], rule: str) -> None:
    assert_safe(render(labels, annotations, {"generator": generator, "external": external}, evidence_text, title,
                       output, reason, rule))
