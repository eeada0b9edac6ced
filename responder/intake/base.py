"""The intake interface: authenticate a request, then parse its body into a Delivery."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from responder.config import IntakeConfig, Secret
from responder.intake.auth import HeaderAuth, Unauthorized
from responder.models import Delivery
from responder.plugins import Registry

__all__ = ["Intake", "IntakeOptions", "PayloadError", "Unauthorized", "registry"]


class PayloadError(ValueError):
    """The body is not a payload we accept; answered 400 with `field` and `message`."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: str = "") -> PayloadError:
        first = exc.errors()[0]
        field = prefix + ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        return cls(f"{first['msg']}{more}", field)


class IntakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Intake(abc.ABC):
    name: ClassVar[str]
    path: ClassVar[str]
    options_model: ClassVar[type[IntakeOptions]] = IntakeOptions

    def __init__(self, config: IntakeConfig) -> None:
        self.config = config
        self.options: Any = self.options_model.model_validate(config.options)
        self.auth = HeaderAuth(config.auth)

    @property
    def signing_secrets(self) -> list[Secret]:
        """Looked up on every request, so a rotated secret applies at once."""
        return [s for ref in self.config.auth.signing_secrets if (s := ref.resolve()) is not None]

    @property
    def body_authenticates(self) -> bool:
        """True when only a signature over the body proves the sender (no header credentials)."""
        return bool(self.signing_secrets) and not self.auth.has_credentials

    def authenticate_headers(self, headers: Mapping[str, str], remote: str | None) -> None:
        """Checked before the body is read, so an unauthenticated sender cannot make us read it.
        With signing secrets and no header credentials, the body's signature decides, but its header
        (and timestamp) must already be present and well-formed."""
        if not self.body_authenticates:
            self.auth.check(headers, remote)
        if self.signing_secrets:
            self.check_signature_headers(headers)

    def check_signature_headers(self, headers: Mapping[str, str]) -> None:
        """Before the body is read: refuse what cannot be a valid signature (intakes that sign override)."""

    def authenticate_body(self, headers: Mapping[str, str], body: bytes) -> None:
        """Checked after the body is read; intakes whose senders sign the body override this."""

    def auth_warnings(self) -> list[str]:
        if self.auth.has_credentials or self.signing_secrets:
            return []
        if self.auth.unauthenticated == "reject":
            return [f"intake {self.name!r} has no credentials configured: it will refuse every request"]
        return [f"intake {self.name!r} accepts {self.auth.describe()}"]

    @abc.abstractmethod
    def parse(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        """Turn a raw body into alerts, or raise PayloadError."""


registry: Registry[type[Intake]] = Registry("intake", "responder.intake")
