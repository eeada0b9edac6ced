"""From a stored incident to evidence, decisions and sink events."""
