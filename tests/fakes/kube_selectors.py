"""Label selectors read the way the Kubernetes API server reads them (apimachinery's labels parser): the
terms a selector string holds, or SelectorError where the server answers 400. Tests compare these terms
with the ones a rule wrote, so what counts is what the server would select, not how the string looks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_SPECIAL = "=!(),<>"
_OPERATORS = ("==", "!=", "=", "<", ">", "!", "(", ")", ",")
_NAME = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)"
_KEY = re.compile(rf"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?{_NAME}")
_VALUE = re.compile(rf"{_NAME}?")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Term:
    """One requirement: `key`, its operator (`=`, `!=`, `in`, `notin`, `exists`, `!`, `<`, `>`), and its
    values in the order written, each once (`==` is read as `=`)."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator in ("=", "in"):
            return value is not None and value in self.values
        if self.operator in ("!=", "notin"):
            return value is None or value not in self.values
        if self.operator == "exists":
            return value is not None
        if self.operator == "!":
            return value is None
        if value is None or not value.lstrip("-").isdigit():
            return False
        return int(value) < int(self.values[0]) if self.operator == "<" else int(value) > int(self.values[0])


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: kind is the operator itself, `in`/`notin`, or `id` for any other run of characters."""
    tokens = []
    at = 0
    while at < len(text):
        if text[at] in " \t\r\n":
            at += 1
            continue
        operator = next((op for op in _OPERATORS if text.startswith(op, at)), None)
        if operator is not None:
            tokens.append((operator, operator))
            at += len(operator)
            continue
        end = at
        while end < len(text) and text[end] not in _SPECIAL and text[end] not in " \t\r\n":
            end += 1
        word = text[at:end]
        tokens.append((word if word in ("in", "notin") else "id", word))
        at = end
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, values: bool = False) -> tuple[str, str]:
        kind, word = self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")
        # Where a value is expected, `in` and `notin` are values like any other.
        return ("id", word) if values and kind in ("in", "notin") else (kind, word)

    def take(self, values: bool = False) -> tuple[str, str]:
        token = self.peek(values)
        self.at += 1
        return token

    def terms(self) -> list[Term]:
        terms: list[Term] = []
        if self.peek()[0] == "end":
            return terms
        while True:
            terms.append(self.term())
            kind, word = self.take()
            if kind == "end":
                return terms
            if kind != ",":
                raise SelectorError(f"found {word!r}, expected ',' or the end")

    def term(self) -> Term:
        negated = self.peek()[0] == "!"
        if negated:
            self.take()
        kind, key = self.take()
        if kind != "id" or not _KEY.fullmatch(key):
            raise SelectorError(f"{key!r} is not a label key")
        if negated:
            return Term(key, "!")
        operator = self.peek()[0]
        if operator in ("end", ","):
            return Term(key, "exists")
        self.take()
        if operator in ("in", "notin"):
            values = self.value_list()
        elif operator in ("=", "==", "!=", "<", ">"):
            values = self.exact_value()
        else:
            raise SelectorError(f"found {operator!r}, expected an operator")
        for value in values:
            if len(value) > 63 or not _VALUE.fullmatch(value):
                raise SelectorError(f"{value!r} is not a label value")
        if operator in "<>" and not (values[0].lstrip("-").isdigit()):
            raise SelectorError(f"{values[0]!r} is not an integer")
        return Term(key, "=" if operator == "==" else operator, tuple(dict.fromkeys(values)))

    def exact_value(self) -> tuple[str, ...]:
        kind, word = self.peek(values=True)
        if kind in ("end", ","):
            return ("",)
        self.take(values=True)
        if kind != "id":
            raise SelectorError(f"found {word!r}, expected a value")
        return (word,)

    def value_list(self) -> tuple[str, ...]:
        if self.take()[0] != "(":
            raise SelectorError("expected '(' after in/notin")
        values: list[str] = []
        expect_value = True
        while True:
            kind, word = self.take(values=True)
            if kind == ")":
                return tuple([*values, ""] if expect_value else values)
            if kind == ",":
                if expect_value:
                    values.append("")
                expect_value = True
            elif kind == "id" and expect_value:
                values.append(word)
                expect_value = False
            else:
                raise SelectorError(f"found {word!r}, expected a value, ',' or ')'")


def selector_terms(text: str) -> list[Term]:
    """The terms of a label selector, or SelectorError where the API server answers 400."""
    return _Parser(text).terms()
