"""Webhook intakes: each module turns one vendor's payload into normalized alerts."""

from responder.config import Config
from responder.intake.base import Intake, PayloadError, Unauthorized, registry


def build_intakes(config: Config) -> list[Intake]:
    """The enabled intakes, each with its section of the config."""
    return [registry.get(name)(intake_config) for name, intake_config in config.intakes.items()
            if intake_config.enabled]


__all__ = ["Intake", "PayloadError", "Unauthorized", "build_intakes", "registry"]
