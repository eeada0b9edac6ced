"""The collector interface: typed parameters in, one piece of structured evidence out."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel

from responder.evidence import EvidenceStatus
from responder.models import Incident
from responder.plugins import Registry
from responder.steps import collector_types
from responder.targets import Targets

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Finding:
    """What a collector returns: a payload for machines (rows/fields) and text for people."""

    title: str
    payload: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    status: EvidenceStatus = EvidenceStatus.OK


@dataclass(frozen=True, slots=True)
class CollectorContext:
    incident: Incident
    targets: Targets


class Collector(abc.ABC, Generic[P]):
    """Read-only: a collector never changes the systems it looks at."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]

    @abc.abstractmethod
    async def collect(self, params: P, ctx: CollectorContext) -> Finding: ...


# The one collector registry (responder.steps), seen with the collector interface it holds.
registry = cast("Registry[type[Collector[Any]]]", collector_types)
