"""Remove secrets from evidence before it is stored, rendered or posted.

Known shapes (passwords in URLs and DSNs, bearer tokens, Slack/AWS/GitHub-style tokens,
`password=`-style pairs), every secret value the config resolved, and extra patterns from the config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "[REDACTED]"

_BUILTIN = [
    # scheme://user:password@host -> keep the user, hide the password
    (re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)"), r"\g<keep>" + MASK),
    (re.compile(r"(?i)(?P<keep>\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\g<keep>" + MASK),
    (re.compile(r"(?i)(?P<keep>\bauthorization\s*[:=]\s*(?:basic|token)?\s*)[A-Za-z0-9._~+/=-]{8,}"),
     r"\g<keep>" + MASK),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),
    (re.compile(r"\bxapp-[A-Za-z0-9-]{10,}"), MASK),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
    (re.compile(r"(?i)(?P<keep>aws_secret_access_key\s*[:=]\s*)\S+"), r"\g<keep>" + MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), MASK),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"), MASK),
    (re.compile(r"(?i)(?P<keep>\b(?:password|passwd|pwd|secret|api[_-]?key|token)\b\s*[:=]\s*[\"']?)[^\s\"'&,;]+"),
     r"\g<keep>" + MASK),
]


class Redactor:
    def __init__(self, secret_values: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        self._patterns = [(re.compile(p), MASK) for p in patterns]
        self.add(secret_values)

    def add(self, secret_values: Iterable[str]) -> None:
        """Redact these values too. Values are never dropped: evidence may still quote a rotated secret."""
        known = set(self._values) | {v for v in secret_values if v}
        # Longest first, so a value containing another is masked whole.
        self._values = sorted(known, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._values:
            value = value.replace(secret, MASK)
        for pattern, replacement in (*_BUILTIN, *self._patterns):
            value = pattern.sub(replacement, value)
        return value

    def tree(self, value: Any) -> Any:
        """Redact every string in a JSON-like structure."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(v) for v in value]
        return value
