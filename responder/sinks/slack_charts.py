"""PNG charts of Prometheus range-query evidence (`series: [{metric, values: [[t, v], ...]}]`).

Rendered with matplotlib's Agg backend on a Figure of its own (no pyplot global state), so it is safe
to run in a worker thread while the event loop carries on.
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from typing import Any

MAX_SERIES = 10


def _label(metric: dict[str, Any]) -> str:
    name = str(metric.get("__name__", ""))
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return (f"{name}{{{rest}}}" if rest else name or "{}")[:80]


def _points(values: list[Any]) -> tuple[list[Any], list[float]]:
    times: list[Any] = []
    numbers: list[float] = []
    for point in values:
        try:
            t, v = float(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(v):
            times.append(datetime.fromtimestamp(t, UTC))
            numbers.append(v)
    return times, numbers


def series_png(title: str, series: list[dict[str, Any]]) -> bytes | None:
    """The chart as PNG bytes, or None when no series has a plottable point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plotted = 0
    for item in series[:MAX_SERIES]:
        times, numbers = _points(item.get("values") or [])
        if times:
            axes.plot(times, numbers, linewidth=1.4, label=_label(item.get("metric") or {}))
            plotted += 1
    if not plotted:
        return None
    axes.set_title(title[:100], fontsize=10)
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    if len(series) > MAX_SERIES:
        axes.text(0.99, 0.01, f"{MAX_SERIES} of {len(series)} series", transform=axes.transAxes, ha="right",
                  fontsize=7)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
