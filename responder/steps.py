"""Rule steps as plugins see them: a step rendered for one alert, and the registries of the step types
rules may name. Rules (which validate and render steps) and the plugin packages (which register and run
them) both import this module, never each other.

A registry imports its plugin package by name the first time it is asked for a type, so nothing here
imports `responder.collectors` or `responder.mitigations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from pydantic import BaseModel

from responder.plugins import Registry


class StepType(Protocol):
    """What rules need of a collector or action class: its name and its parameters' model."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]


# The machinery modules of each package hold no plugins: loading the plugins does not import them.
collector_types: Registry[type[StepType]] = Registry("collector", "responder.collectors",
                                                     machinery=("base", "common", "runner"))
action_types: Registry[type[StepType]] = Registry(
    "action", "responder.mitigations", machinery=("base", "approvals", "budgets", "guard", "jobs", "locks"))


@dataclass(frozen=True, slots=True)
class RenderedStep:
    """One step of a rule, its parameters rendered for an alert and validated by the type's model."""

    id: str
    type: str
    # The rule's own step (responder.rules.model.StepSpec or MitigationSpec): its options for the guard.
    spec: object
    params: BaseModel
    # Seconds this step may take, when the rule sets it; else the configured default.
    timeout: float | None = None
