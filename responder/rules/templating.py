"""Safe parameter templates: `{{ labels.namespace }}`, `{{ annotations.summary | default("n/a") }}`,
`{{ alerts.labels.pod | regex_escape | join("|") | promql }}`,
`app in ({{ alerts.labels.app | label_value | join(",") }})`.

Deliberately not a general template language: an expression is a lookup in `labels`, `annotations`
or `alert` (name, source, status, fingerprint, group_key), or the same lookup over the group's firing
members (`alerts.labels.pod`: a list, which must be joined), optionally followed by whitelisted filters.
There is no attribute access, no calls and no code, so `{{ ''.__class__ }}` is a syntax error, not an
exploit. What the rendered text is allowed to be is checked afterwards by the parameter's type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from responder.params import RenderAs, label_value, promql_string

_EXPR = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_LOOKUP = re.compile(r"^(?:(alerts)\.)?(labels|annotations|alert)\.([A-Za-z_][A-Za-z0-9_]*)$")
_FILTER = re.compile(r"""^([a-z_]+)(?:\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\))?$""")
# A lookup or a filter: `|` inside a quoted argument (`join("|")`) does not end it.
_PART = re.compile(r"""(?:"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^|"'])*""")
_REGEX_MATCH = re.compile(r"[=!]~\s*$")

# One alert as templates read it: "labels", "annotations" and "alert" (its fields), each name -> value.
Context = Mapping[str, Mapping[str, str]]
Filter = tuple[str, str | None]
M = TypeVar("M")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Members(Generic[M]):
    """The group's firing members as `alerts.*` reads them, in member order, and how many distinct
    values one list may hold (the step's `max_members`): a query over a deployment's pods stays bounded
    however many pods alert. A member is made a context only when a list reaches it, so a storm of
    thousands of members costs a list of twenty values no more than twenty members."""

    items: Sequence[M]
    context: Callable[[M], Context]
    limit: int = 20

    def values(self, expr: Expression) -> list[str]:
        """The distinct non-empty values of the list `expr` after its per-element filters; members lacking
        it are skipped (an empty label is a missing one, as in Prometheus)."""
        distinct: dict[str, None] = {}
        for item in self.items:
            value = self.context(item).get(expr.scope, {}).get(expr.key)
            if not value:
                continue
            for name, _arg in expr.each:
                value = expr.apply(name, value)
            distinct[value] = None
            if len(distinct) == self.limit:
                break
        return list(distinct)


def _itself(context: Context) -> Context:
    return context


NO_MEMBERS: Members[Context] = Members((), _itself)


@dataclass(frozen=True, slots=True)
class Expression:
    """One parsed `{{ ... }}`: a lookup, and for a list (`alerts.`) the filters applied to each value
    and the separator that joins them; `filters` apply to the single value (the joined one for a list)."""

    text: str
    scope: str
    key: str
    each: list[Filter]
    join: str | None
    filters: list[Filter]

    @property
    def over_members(self) -> bool:
        return self.join is not None

    @property
    def name(self) -> str:
        return f"{'alerts.' if self.over_members else ''}{self.scope}.{self.key}"

    def uses(self, filter_name: str) -> bool:
        return any(name == filter_name for name, _arg in (*self.each, *self.filters))

    def apply(self, filter_name: str, value: str) -> str:
        try:
            return _FILTERS[filter_name](value)
        except ValueError as exc:  # a filter that checks (label_value) refused the value
            raise TemplateError(f"{self.name}: {exc}") from None


def _regex_escape(value: str) -> str:
    return re.escape(value)


_FILTERS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "promql": promql_string,
    "regex_escape": _regex_escape,
    "label_value": label_value,
}
_KNOWN = ", ".join(['default("x")', 'join("sep")', *_FILTERS])


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def check_template(text: str) -> None:
    """Raise TemplateError if `text` has an expression we would refuse to render."""
    for m in _EXPR.finditer(text):
        _parse(m.group(1))
    _check_balanced(text)


def _check_balanced(text: str) -> None:
    outside = _EXPR.sub("", text)
    if "{{" in outside or "}}" in outside:
        raise TemplateError(f"unbalanced '{{{{' or '}}}}' in {text!r}")


def _parse(expr: str) -> Expression:
    shown = "{{" + expr + "}}"
    head, *parts = (part.group().strip() for part in _PART.finditer(expr) if part.start() == 0 or
                    expr[part.start() - 1] == "|")
    lookup = _LOOKUP.match(head)
    if not lookup:
        raise TemplateError(f"unsupported template expression {shown}: use labels.NAME, annotations.NAME,"
                            " alert.FIELD, or alerts.labels.NAME (and so on) for the group's members")
    over_members = lookup.group(1) is not None
    each: list[Filter] = []
    join: str | None = None
    filters: list[Filter] = []
    for part in parts:
        fm = _FILTER.match(part)
        name = fm.group(1) if fm else ""
        if not fm or (name not in ("default", "join") and name not in _FILTERS):
            raise TemplateError(f"unknown template filter {part!r} in {shown}: use {_KNOWN}")
        arg = fm.group(2) if fm.group(2) is not None else fm.group(3)
        if name in ("default", "join") and arg is None:
            raise TemplateError(f'{name} needs a quoted value: {name}("x")')
        if name == "join":
            if not over_members or join is not None:
                raise TemplateError(f"{shown}: join applies once, to a list of the group's members (alerts.*)")
            join = arg
        elif over_members and join is None:
            if name == "default":
                raise TemplateError(f"{shown}: default applies to the joined list: put it after join(...)")
            each.append((name, arg))
        else:
            filters.append((name, arg))
    if over_members and join is None:
        raise TemplateError(f"{shown} is a list (one value per firing member): join it into one value,"
                            " e.g. | join(\",\")")
    return Expression(shown, lookup.group(2), lookup.group(3), each, join, filters)


def render(text: str, context: Context, escape: Callable[[str], str] | None = None,
           members: Members[Any] = NO_MEMBERS) -> str:
    """Render one template string; a missing label (for a list: no member has it) without default() is
    a TemplateError. `escape` (from the parameter's type) is applied to each substituted value, a
    joined list or a default included."""

    def substitute(m: re.Match[str]) -> str:
        expr = _parse(m.group(1))
        value: str | None
        if expr.join is not None:
            values = members.values(expr)
            value = expr.join.join(values) if values else None
        else:
            value = context.get(expr.scope, {}).get(expr.key)
        for name, arg in expr.filters:
            if name == "default":
                if not value:
                    value = arg
            elif value is not None:
                value = expr.apply(name, value)
        if value is None:
            where = "any firing member of this group" if expr.over_members else "this alert"
            raise TemplateError(f"{expr.name} is not set on {where} (add | default(\"...\") if optional)")
        return escape(value) if escape is not None else value

    _check_balanced(text)
    return _EXPR.sub(substitute, text)


def render_value(value: Any, context: Context, escape: Callable[[str], str] | None = None,
                 members: Members[Any] = NO_MEMBERS) -> Any:
    """Render every string in a parameter tree (dicts and lists included)."""
    if isinstance(value, str):
        return render(value, context, escape, members) if "{{" in value else value
    if isinstance(value, dict):
        return {k: render_value(v, context, escape, members) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context, escape, members) for v in value]
    return value


def check_typed(text: str, kind: RenderAs) -> list[str]:
    """Problems with the expressions of a template written into a typed parameter (see RenderAs):
    each must end with the type's filter (a list: after join, or with `filter_each` before it) and, for
    a query, sit inside a quoted string literal; inside a regular expression (`=~"..."`, `!~"..."`) its
    values must be escaped with `| regex_escape`."""
    problems = []
    for m, quote, before in _expressions_in_literals(text):
        try:
            expr = _parse(m.group(1))
        except TemplateError:
            continue  # reported by check_template
        names = [name for name, _arg in expr.filters]
        while names and names[-1] == "default":
            names.pop()
        if kind.filter is not None and kind.filter_each and expr.over_members:
            if not expr.each or expr.each[-1][0] != kind.filter or names:
                problems.append(f"{expr.text} in a {kind.kind} must apply '| {kind.filter}' to each value, as the"
                                " last filter before join (and nothing but default after join)")
        elif kind.filter is not None and (not names or names[-1] != kind.filter):
            after = " (after join)" if expr.over_members else ""
            problems.append(f"{expr.text} in a {kind.kind} must end with '| {kind.filter}'{after} (before any default)")
        if kind.in_string_literal and quote not in ('"', "'"):
            where = "a raw `...` string" if quote == "`" else "no string literal"
            problems.append(f"{expr.text} sits in {where}: values from the alert may only appear inside"
                            f" \"...\" or '...' in a {kind.kind}")
        elif kind.in_string_literal and _REGEX_MATCH.search(before) and not expr.uses("regex_escape"):
            each = " on each value, before join" if expr.over_members else ""
            problems.append(f"{expr.text} sits in a regular expression: values from the alert must be matched"
                            f" literally with '| regex_escape'{each}")
    return problems


def _expressions_in_literals(text: str) -> Iterator[tuple[re.Match[str], str | None, str]]:
    """Each expression of `text`, the string literal open where it sits (None: none), and the text
    before that literal opened (where a matcher's operator is)."""
    quote: str | None = None
    opened = 0
    escaped = False
    position = 0
    for m in _EXPR.finditer(text):
        for index in range(position, m.start()):
            char = text[index]
            if escaped:
                escaped = False
            elif quote in ('"', "'") and char == "\\":
                escaped = True
            elif quote is None and char in "\"'`":
                quote, opened = char, index
            elif char == quote:
                quote = None
        position = m.end()
        yield m, quote, text[:opened] if quote is not None else ""


def check_value(value: Any, key: str = "params") -> list[tuple[str, str]]:
    """Template problems anywhere in a parameter tree, each with the dotted key of its value."""
    problems = []
    if isinstance(value, str):
        try:
            check_template(value)
        except TemplateError as exc:
            problems.append((key, str(exc)))
    elif isinstance(value, dict):
        for k, v in value.items():
            problems += check_value(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problems += check_value(v, f"{key}.{i}")
    return problems


def alert_context(labels: Mapping[str, str], annotations: Mapping[str, str],
                  alert: Mapping[str, str]) -> dict[str, Mapping[str, str]]:
    return {"labels": labels, "annotations": annotations, "alert": alert}
