"""One problem found in a config or rule file, as `responder check` reports it: where (file, line,
rule, key), what is wrong, and whether it stops the daemon (error) or only deserves a look (warning).

Also the "did you mean" for a misspelled key: the known keys at that place come from the pydantic model.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    rule: str | None
    key: str
    message: str
    line: int | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.rule:
            where += f": rule {self.rule!r}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def validation_messages(exc: ValidationError, model: type[BaseModel]) -> list[tuple[tuple[Any, ...], str]]:
    """(location, message) for each error of `model.model_validate`, with a suggestion for unknown keys."""
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc:
            message = f"unknown key{suggest(model, loc)}"
        found.append((loc, message))
    return found


def suggest(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """' (did you mean 'x'?)' when the last part of `loc` is close to a key the model accepts there."""
    known = keys_at(model, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(sorted(known))})" if known else ""


def keys_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys the model accepts at `loc` (through nested models, dicts, lists and optionals)."""
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = _field(node, str(part))
            if field is None:
                return []
            node = field.annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        elif typing.get_origin(node) is list:
            node = typing.get_args(node)[0]
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [info.alias or name for name, info in node.model_fields.items()]
    return []


def _field(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _unwrap(node: Any) -> Any:
    """Optional[X] / X | None -> X; Annotated[X, ...] -> X."""
    while True:
        origin = typing.get_origin(node)
        if origin is typing.Annotated:
            node = typing.get_args(node)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(node) if a is not type(None)]
            structured = [a for a in options if typing.get_origin(a) in (dict, list)
                          or (isinstance(a, type) and issubclass(a, BaseModel))]
            node = (structured or options)[0]
        else:
            return node
