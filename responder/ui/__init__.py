"""The read-only web console under /ui: incidents, evidence, decisions, the action audit and explain."""

from responder.ui.pages import setup_console

__all__ = ["setup_console"]
