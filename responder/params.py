"""Parameter types shared by collectors and actions. A value rendered from alert labels must pass
these before it reaches an API call, a query or a command line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, StringConstraints
from pydantic.fields import FieldInfo

# RFC 1123 label: what Kubernetes requires of namespaces and most object names.
K8sName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253)
]
K8sNamespace = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


def _selector(value: str) -> str:
    # Label selectors: keys, values and the few operators Kubernetes accepts; nothing else.
    term = r"!?[A-Za-z0-9./_-]+(\s*(==?|!=)\s*[A-Za-z0-9._-]*|\s+(in|notin)\s+\([A-Za-z0-9._,\s-]*\))?"
    if value and not re.fullmatch(rf"\s*{term}(\s*,\s*{term})*\s*", value):
        raise ValueError(f"not a Kubernetes label selector: {value!r}")
    return value


LabelSelector = Annotated[str, AfterValidator(_selector)]
TargetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


@dataclass(frozen=True, slots=True)
class SafeFilter:
    """Marks a parameter type whose alert-rendered parts must pass through a template filter that makes
    them safe where they land (`promql` inside a PromQL string); `responder check` refuses a template
    that skips it. Use as `Annotated[str, SafeFilter("promql")]`."""

    name: str


def safe_filter(field: FieldInfo) -> str | None:
    """The filter a parameter's templated values must use, if its type names one."""
    return next((m.name for m in field.metadata if isinstance(m, SafeFilter)), None)


# A PromQL expression: label values rendered into it go through `| promql`.
PromQL = Annotated[str, SafeFilter("promql")]
