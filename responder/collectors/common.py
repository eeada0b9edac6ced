"""Pieces every collector family shares: the target parameter, ages and small text tables."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from responder.params import TargetName


class TargetParams(BaseModel):
    """Parameters of a collector that reads one configured target (`targets.<kind>.<name>`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetName = "default"


def age_seconds(moment: datetime.datetime | None, now: datetime.datetime | None = None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return round(((now or datetime.datetime.now(datetime.UTC)) - moment).total_seconds(), 1)


def iso(moment: datetime.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str], *, empty: str = "(none)") -> str:
    """A fixed-width text table of the given columns; what a person reads in the incident."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    if not cells:
        return empty
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(w) for column, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
