"""The action interface: typed parameters, a target to lock and budget, a description for dry-run."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel

from responder.models import Incident
from responder.plugins import Registry
from responder.steps import action_types
from responder.targets import Targets

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ActionContext:
    incident: Incident
    targets: Targets


class Action(abc.ABC, Generic[P]):
    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]

    @abc.abstractmethod
    def target(self, params: P) -> str:
        """A stable key for what this changes (e.g. `kubernetes/prod/deployment/api`): locks, cooldowns
        and budgets are kept per target."""

    def namespace(self, params: P) -> str | None:
        """The namespace the target lives in, for `mitigations.allow_namespaces` (None: not namespaced)."""
        return None

    @abc.abstractmethod
    def describe(self, params: P) -> str:
        """One line saying exactly what `execute` would do; dry-run records this."""

    @abc.abstractmethod
    async def execute(self, params: P, ctx: ActionContext) -> dict[str, Any]:
        """Do it; returns what happened, for the audit."""


# The one action registry (responder.steps), seen with the action interface it holds.
registry = cast("Registry[type[Action[Any]]]", action_types)
