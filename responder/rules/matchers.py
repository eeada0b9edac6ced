"""Alertmanager label matchers: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.

Semantics follow Alertmanager: regexes are fully anchored, and a missing label is the empty string,
so `team=""` matches alerts without a team and `team!=""` requires one.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_MATCHER = re.compile(
    r"""^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*
        (?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^"\s,{}]*))\s*$""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


class MatcherError(ValueError):
    pass


class MatchOp(enum.StrEnum):
    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True)
class Matcher:
    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        m = _MATCHER.match(text)
        if not m:
            raise MatcherError(f"bad matcher {text!r}: expected name=\"value\", name!=\"value\", "
                               "name=~\"regex\" or name!~\"regex\"")
        quoted = m.group("quoted")
        value = _unescape(quoted) if quoted is not None else m.group("bare")
        op = MatchOp(m.group("op"))
        regex = None
        if op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            try:
                regex = re.compile(f"^(?:{value})$", re.DOTALL)
            except re.error as exc:
                raise MatcherError(f"bad regular expression in {text!r}: {exc}") from exc
        return cls(m.group("name"), op, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op is MatchOp.EQUAL:
            return actual == self.value
        if self.op is MatchOp.NOT_EQUAL:
            return actual != self.value
        assert self._regex is not None
        found = self._regex.match(actual) is not None
        return found if self.op is MatchOp.REGEX else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op.value}"{escaped}"'


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text)


def parse_matchers(items: list[str] | str) -> list[Matcher]:
    """A list of matchers, or one Alertmanager-style string `{a="b", c=~"d"}`."""
    if isinstance(items, str):
        body = items.strip()
        if body.startswith("{") and body.endswith("}"):
            body = body[1:-1]
        items = [part for part in _split_top_level(body) if part.strip()]
    return [Matcher.parse(item) for item in items]


def _split_top_level(body: str) -> list[str]:
    """Split on commas outside quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in body:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts
