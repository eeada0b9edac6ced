"""YAML documents that remember where each key was written, so a problem found after parsing (a bad
value, an unknown key, a rule naming a missing target) can be reported with its line number."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

# libyaml's parser when PyYAML was built with it (about ten times faster: `check` reads every rule file).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(ValueError):
    """Not valid YAML; `line` is where the parser gave up (1-based)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class YamlDocument:
    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def line(self, loc: Sequence[Any]) -> int | None:
        """The line of the deepest part of `loc` that was written in the file (None: not in it at all)."""
        path = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in loc)
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end]) or self.lines.get(tuple(map(str, path[:end])))
            if found is not None:
                return found
        return None


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document, recording the line of every mapping key and sequence item."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(part for part in (exc.context, exc.problem) if part) or "cannot parse"
        raise YamlError(message, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None) from None
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _record(node, (), lines)
    return YamlDocument(data, lines)


def _record(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            lines.setdefault((*path, key), key_node.start_mark.line + 1)
            _record(value_node, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault((*path, index), item.start_mark.line + 1)
            _record(item, (*path, index), lines)


@dataclass(frozen=True, slots=True)
class Located:
    """Where a value was read: its file, the document, and its path in that document."""

    file: str
    document: YamlDocument
    path: tuple[Any, ...] = ()

    def line(self, key: str = "") -> int | None:
        """The line of `key` (dotted, below this value's path), or of the value itself."""
        return self.document.line((*self.path, *(key.split(".") if key else ())))
