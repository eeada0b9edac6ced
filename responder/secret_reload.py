"""Rotated secrets: `{file: ...}` secrets re-read on SIGHUP and every `secrets.reload_interval`.

Kubernetes updates a mounted Secret in place; the daemon picks up the new value without a restart.
Requests resolve their credentials from the config's secret references each time (intake auth, the API
token, per-request headers), so a new value applies at once; clients made once from a secret (a Redis
URL, a Kubernetes token, the Slack token) keep the value they were made with until the next start.
The redactor is given every new value and keeps the old ones: evidence may still quote either.
"""

from __future__ import annotations

import asyncio
import logging

from responder.config import MIN_REDACTED, Config, iter_secret_refs
from responder.redaction import Redactor

log = logging.getLogger(__name__)


class SecretReloader:
    def __init__(self, config: Config, redactor: Redactor) -> None:
        self.interval = config.secrets.reload_interval
        self.redactor = redactor
        self.refs = [(key, ref) for key, ref in iter_secret_refs(config) if ref.file is not None]

    def reload(self) -> int:
        """Re-read every file secret; the number whose value changed."""
        changed = 0
        for key, ref in self.refs:
            try:
                if not ref.reload():
                    continue
            except ValueError as exc:  # mid-rotation, or removed: keep the value read before
                log.warning("%s: %s; keeping the value read before", key, exc)
                continue
            changed += 1
            secret = ref.resolve()
            if secret is not None and len(secret.reveal()) >= MIN_REDACTED:
                self.redactor.add([secret.reveal()])
            log.info("%s: a new value was read from %s", key, ref.describe())
        return changed

    async def run(self) -> None:
        """Supervised task: reload on the interval."""
        while True:
            await asyncio.sleep(self.interval)
            self.reload()
