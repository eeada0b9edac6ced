"""Slack as the incident console: the buttons of an incident's thread, who may press them, and what a press
does (approve or deny an action, silence the group in Alertmanager, acknowledge, re-run diagnostics)."""
