"""alert-responder: turns alerts into evidence, guarded first-line fixes and one Slack thread per incident."""

__version__ = "0.1.0"
