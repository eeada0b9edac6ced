"""Mitigation actions: each module registers actions that change a system, always behind guards."""

from responder.mitigations.base import Action, ActionContext, registry

__all__ = ["Action", "ActionContext", "registry"]
