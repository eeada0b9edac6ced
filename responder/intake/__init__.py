"""Webhook intakes: each module turns one vendor's payload into normalized alerts."""

from responder.intake.base import Intake, PayloadError, Unauthorized, registry

__all__ = ["Intake", "PayloadError", "Unauthorized", "registry"]
