"""Who may read the console: a holder of `server.ui_token` or `server.api_token`.

A request proves it with `Authorization: Bearer <token>` (scripts, tests) or with the session cookie the
login form sets: `<expiry>.<HMAC-SHA256(token, expiry)>`, HttpOnly, SameSite=Strict and scoped to /ui. The
cookie never carries the token itself, expires on its own, and stops working when the token is rotated.
No token configured means no console: it fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from responder.config import ServerConfig
from responder.intake.auth import constant_time_equal

COOKIE = "responder_ui"
SESSION_SECONDS = 12 * 3600


def _sign(token: str, expires: int) -> str:
    return hmac.new(token.encode(), f"responder-ui-session:{expires}".encode(), hashlib.sha256).hexdigest()


class UiAuth:
    def __init__(self, server: ServerConfig) -> None:
        self._server = server

    def tokens(self) -> list[str]:
        """Looked up per request: a token rotated in its file (re-read on SIGHUP and every
        secrets.reload_interval) applies at once, and ends the sessions the old one signed."""
        refs = [r for r in (self._server.ui_token, self._server.api_token) if r is not None]
        return [secret.reveal() for ref in refs if (secret := ref.resolve()) is not None]

    @property
    def configured(self) -> bool:
        return bool(self.tokens())

    def valid_token(self, given: str) -> str | None:
        """The configured token equal to `given` (compared in constant time), or None."""
        found = None
        for token in self.tokens():
            if given and constant_time_equal(given, token):
                found = token
        return found

    def session_cookie(self, token: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        return f"{expires}.{_sign(token, expires)}"

    def valid_session(self, value: str, now: float | None = None) -> bool:
        expires_text, _, signature = value.partition(".")
        # ASCII digits only: a cookie is whatever the client sent ('²'.isdigit() is true, int('²') fails).
        if not (expires_text.isascii() and expires_text.isdigit()) or int(expires_text) < (now or time.time()):
            return False
        expires = int(expires_text)
        return any(constant_time_equal(signature, _sign(t, expires)) for t in self.tokens())

    def allowed(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        header = headers.get("Authorization", "")
        if header:
            return header.startswith("Bearer ") and self.valid_token(header.removeprefix("Bearer ").strip()) is not None
        return self.valid_session(cookies.get(COOKIE, ""))
