"""Safe parameter templates: `{{ labels.namespace }}`, `{{ annotations.summary | default("n/a") }}`.

Deliberately not a general template language: an expression is a lookup in `labels`, `annotations`
or `alert` (name, source, status, fingerprint), optionally followed by whitelisted filters. There is
no attribute access, no calls and no code, so `{{ ''.__class__ }}` is a syntax error, not an exploit.
What the rendered text is allowed to be is checked afterwards by the parameter's type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from responder.params import RenderAs, promql_string

_EXPR = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_LOOKUP = re.compile(r"^(labels|annotations|alert)\.([A-Za-z_][A-Za-z0-9_]*)$")
_FILTER = re.compile(r"""^([a-z_]+)(?:\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\))?$""")


class TemplateError(ValueError):
    pass


def _regex_escape(value: str) -> str:
    return re.escape(value)


_FILTERS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "promql": promql_string,
    "regex_escape": _regex_escape,
}


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def check_template(text: str) -> None:
    """Raise TemplateError if `text` has an expression we would refuse to render."""
    for m in _EXPR.finditer(text):
        _parse(m.group(1))
    if "{{" in _EXPR.sub("", text) or "}}" in _EXPR.sub("", text):
        raise TemplateError(f"unbalanced '{{{{' or '}}}}' in {text!r}")


def _parse(expr: str) -> tuple[str, str, list[tuple[str, str | None]]]:
    head, *filters = (part.strip() for part in expr.split("|"))
    lookup = _LOOKUP.match(head)
    if not lookup:
        raise TemplateError(
            f"unsupported template expression {{{{{expr}}}}}: use labels.NAME, annotations.NAME or alert.FIELD"
        )
    parsed: list[tuple[str, str | None]] = []
    for f in filters:
        fm = _FILTER.match(f)
        if not fm or (fm.group(1) != "default" and fm.group(1) not in _FILTERS):
            raise TemplateError(f"unknown template filter {f!r}: use default(\"x\"), {', '.join(_FILTERS)}")
        arg = fm.group(2) if fm.group(2) is not None else fm.group(3)
        if fm.group(1) == "default" and arg is None:
            raise TemplateError('default needs a quoted value: default("x")')
        parsed.append((fm.group(1), arg))
    return lookup.group(1), lookup.group(2), parsed


def render(text: str, context: Mapping[str, Mapping[str, str]], escape: Callable[[str], str] | None = None) -> str:
    """Render one template string; a missing label without default() is a TemplateError. `escape`
    (from the parameter's type) is applied to each substituted value, defaults included."""

    def substitute(m: re.Match[str]) -> str:
        scope, key, filters = _parse(m.group(1))
        value = context.get(scope, {}).get(key)
        for name, arg in filters:
            if name == "default":
                if not value:
                    value = arg
            elif value is not None:
                value = _FILTERS[name](value)
        if value is None:
            raise TemplateError(f"{scope}.{key} is not set on this alert (add | default(\"...\") if optional)")
        return escape(value) if escape is not None else value

    return _EXPR.sub(substitute, text)


def render_value(value: Any, context: Mapping[str, Mapping[str, str]],
                 escape: Callable[[str], str] | None = None) -> Any:
    """Render every string in a parameter tree (dicts and lists included)."""
    if isinstance(value, str):
        return render(value, context, escape) if "{{" in value else value
    if isinstance(value, dict):
        return {k: render_value(v, context, escape) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context, escape) for v in value]
    return value


def check_typed(text: str, kind: RenderAs) -> list[str]:
    """Problems with the expressions of a template written into a typed parameter (see RenderAs):
    each must end with the type's filter and, for a query, sit inside a quoted string literal."""
    problems = []
    quote: str | None = None
    position = 0
    for m in _EXPR.finditer(text):
        quote = _quote_after(text[position:m.start()], quote)
        position = m.end()
        try:
            _scope, _key, filters = _parse(m.group(1))
        except TemplateError:
            continue  # reported by check_template
        names = [name for name, _arg in filters]
        while names and names[-1] == "default":
            names.pop()
        expression = "{{" + m.group(1) + "}}"
        if kind.filter is not None and (not names or names[-1] != kind.filter):
            problems.append(f"{expression} in a {kind.kind} must end with '| {kind.filter}' (before any default)")
        if kind.in_string_literal and quote not in ('"', "'"):
            where = "a raw `...` string" if quote == "`" else "no string literal"
            problems.append(f"{expression} sits in {where}: values from the alert may only appear inside"
                            f" \"...\" or '...' in a {kind.kind}")
    return problems


def _quote_after(segment: str, quote: str | None) -> str | None:
    """The string literal open at the end of `segment`, given the one open at its start."""
    escaped = False
    for char in segment:
        if escaped:
            escaped = False
        elif quote in ('"', "'") and char == "\\":
            escaped = True
        elif quote is None and char in "\"'`":
            quote = char
        elif char == quote:
            quote = None
    return quote


def check_value(value: Any) -> list[str]:
    """Template problems anywhere in a parameter tree."""
    problems = []
    if isinstance(value, str):
        try:
            check_template(value)
        except TemplateError as exc:
            problems.append(str(exc))
    elif isinstance(value, dict):
        for v in value.values():
            problems += check_value(v)
    elif isinstance(value, list):
        for v in value:
            problems += check_value(v)
    return problems


def alert_context(labels: Mapping[str, str], annotations: Mapping[str, str],
                  alert: Mapping[str, str]) -> dict[str, Mapping[str, str]]:
    return {"labels": labels, "annotations": annotations, "alert": alert}
