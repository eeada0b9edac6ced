"""`when:` conditions: a small comparison language over the incident and the gathered evidence.

    when:
      - evidence.history.payload.revisions.0.created_at age < 30m
      - count(evidence.sessions.payload.rows) > 5
      - labels.severity == "critical"

One condition is `LEFT OP RIGHT`. A side is a reference, `count(reference)` (length of a list or
mapping), `age(reference)` (seconds since an epoch or ISO-8601 time) or a literal: a number, a duration
(`30m`), a quoted string, `true`, `false` or `null`. OP is one of `== != < <= > >= =~` (`=~` is a full
regular-expression match). References are `labels.NAME`, `annotations.NAME`, `incident.FIELD` and
`evidence.STEP.status` / `evidence.STEP.payload.PATH` (keys and list indexes separated by dots).

There is no evaluation of code: a condition is parsed into a comparison once, when rules load, so a
typo is reported by `responder check`. A reference that is missing (no such label, a collector that
failed) makes its condition false, so a mitigation never runs on evidence nobody saw.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator

from responder.config import parse_duration
from responder.evidence import Evidence, EvidenceStatus
from responder.models import Incident

_OPERATORS = ("==", "!=", "<=", ">=", "=~", "<", ">")
_REFERENCE = re.compile(r"^(labels|annotations)\.[A-Za-z_][A-Za-z0-9_]*$"
                        r"|^incident\.(status|alertname|source|fingerprint|deliveries|starts_at|opened_at|rule)$"
                        r"|^evidence\.[A-Za-z0-9_.#-]+?\.(status|payload(\.[A-Za-z0-9_-]+)*)$")
_FUNCTION = re.compile(r"^(count|age)\((.+)\)$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_TOKEN = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|==|!=|<=|>=|=~|<|>|[^\s"'<>=!]+)""")


class ConditionError(ValueError):
    pass


class Missing(LookupError):
    """A reference with no value for this incident: the condition is false."""


@dataclass(frozen=True, slots=True)
class Operand:
    function: str | None = None
    reference: str | None = None
    literal: Any = None

    def describe(self) -> str:
        if self.reference is None:
            return repr(self.literal)
        return f"{self.function}({self.reference})" if self.function else self.reference


@dataclass(frozen=True, slots=True)
class Comparison:
    text: str
    left: Operand
    op: str
    right: Operand


def _operand(token: str, text: str) -> Operand:
    if token[:1] in ("'", '"'):
        return Operand(literal=re.sub(r"\\(.)", r"\1", token[1:-1]))
    if token in ("true", "false"):
        return Operand(literal=token == "true")
    if token == "null":
        return Operand(literal=None)
    if _NUMBER.match(token):
        return Operand(literal=float(token))
    function = None
    if m := _FUNCTION.match(token):
        function, token = m.group(1), m.group(2).strip()
    if _REFERENCE.match(token):
        return Operand(function=function, reference=token)
    if function is None:
        try:
            return Operand(literal=parse_duration(token))
        except ValueError:
            pass
    raise ConditionError(
        f"in {text!r}: {token!r} is not a reference (labels.X, annotations.X, incident.FIELD,"
        " evidence.STEP.status, evidence.STEP.payload.PATH), count(...)/age(...) or a literal"
    )


@functools.lru_cache(maxsize=1024)
def parse_condition(text: str) -> Comparison:
    tokens = []
    position = 0
    while position < len(text.rstrip()):
        m = _TOKEN.match(text, position)
        if not m:
            raise ConditionError(f"cannot read {text!r} at position {position}")
        tokens.append(m.group(1))
        position = m.end()
    # `REF age` reads better in rules than `age(REF)`; both mean the same.
    if len(tokens) == 4 and tokens[1] == "age":
        tokens = [f"age({tokens[0]})", *tokens[2:]]
    if len(tokens) != 3 or tokens[1] not in _OPERATORS:
        raise ConditionError(f"{text!r} must be LEFT OP RIGHT with OP one of {' '.join(_OPERATORS)}")
    comparison = Comparison(text, _operand(tokens[0], text), tokens[1], _operand(tokens[2], text))
    if comparison.op == "=~":
        if comparison.right.reference is not None or not isinstance(comparison.right.literal, str):
            raise ConditionError(f"in {text!r}: the right side of =~ must be a quoted regular expression")
        try:
            re.compile(comparison.right.literal)
        except re.error as exc:
            raise ConditionError(f"in {text!r}: bad regular expression: {exc}") from None
    return comparison


def _checked(text: str) -> str:
    parse_condition(text)
    return text


ConditionText = Annotated[str, AfterValidator(_checked)]


def _path(value: Any, parts: Sequence[str], reference: str) -> Any:
    for part in parts:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise Missing(f"{reference} is not in the evidence")
    return value


def _lookup(reference: str, incident: Incident, evidence: Mapping[str, Evidence]) -> Any:
    scope, _, rest = reference.partition(".")
    if scope in ("labels", "annotations"):
        values = incident.labels if scope == "labels" else incident.annotations
        if rest not in values:
            raise Missing(f"{reference} is not set on this alert")
        return values[rest]
    if scope == "incident":
        value = getattr(incident, rest)
        return value.value if hasattr(value, "value") else value
    # evidence.STEP.status | evidence.STEP.payload...; step ids may contain dots, so match the longest known id.
    for step in sorted(evidence, key=len, reverse=True):
        if rest.startswith(step + "."):
            item, tail = evidence[step], rest[len(step) + 1:].split(".")
            if tail[0] == "status":
                return item.status.value
            if item.status is not EvidenceStatus.OK:
                raise Missing(f"evidence {step!r} is {item.status.value}, not ok")
            return _path(item.payload, tail[1:], reference)
    raise Missing(f"no evidence from a step named like {reference!r}")


def _age(value: Any, reference: str) -> float:
    if isinstance(value, bool):
        raise Missing(f"{reference} is not a time")
    if isinstance(value, int | float):
        return time.time() - float(value)
    if isinstance(value, str):
        try:
            return time.time() - datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise Missing(f"{reference} is not a time: {value!r}")


def _value(operand: Operand, incident: Incident, evidence: Mapping[str, Evidence]) -> Any:
    if operand.reference is None:
        return operand.literal
    value = _lookup(operand.reference, incident, evidence)
    if operand.function == "count":
        if not isinstance(value, list | dict):
            raise Missing(f"{operand.reference} is not a list")
        return float(len(value))
    if operand.function == "age":
        return _age(value, operand.reference)
    return value


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "=~":
        return isinstance(left, str) and re.fullmatch(str(right), left) is not None
    if op in ("==", "!="):
        if isinstance(left, int | float) and isinstance(right, str) and _NUMBER.match(right):
            right = float(right)
        if isinstance(right, int | float) and isinstance(left, str) and _NUMBER.match(left):
            left = float(left)
        return bool(left == right) if op == "==" else bool(left != right)
    try:
        a, b = float(left), float(right)
    except (TypeError, ValueError):
        raise Missing(f"cannot compare {left!r} {op} {right!r} as numbers") from None
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def evaluate(conditions: Sequence[str], incident: Incident, evidence: Sequence[Evidence]) -> tuple[bool, str]:
    """(True, '') when every condition holds, else (False, which condition failed and why)."""
    by_step = {e.step: e for e in evidence}
    for text in conditions:
        comparison = parse_condition(text)
        try:
            left = _value(comparison.left, incident, by_step)
            right = _value(comparison.right, incident, by_step)
            holds = _compare(left, comparison.op, right)
        except Missing as exc:
            return False, f"condition {text!r} is false: {exc}"
        if not holds:
            return False, f"condition {text!r} is false: {comparison.left.describe()} is {_show(left)}"
    return True, ""


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)
