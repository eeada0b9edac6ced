"""Edge validation of a parsed delivery: sizes, counts, control characters and time bounds.

Whatever passes here is stored, indexed, templated into rules and rendered in Slack and terminals, so the
checks are about what those layers can take, not about any one vendor: a NUL that PostgreSQL refuses, a
control or bidi character that rewrites a terminal line, a label too long for an index, a time no
later step can format. Each refusal is a PayloadError (a 400) naming the field and the limit's key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from responder.config import IntakeLimits
from responder.intake.base import PayloadError
from responder.models import Alert, Delivery

# Identifiers (label names and values, fingerprints, URLs, ids): no control character at all (C0, DEL,
# C1) and none of the bidi controls that make text display in another order than it is stored.
_IDENTIFIER_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Free text (annotations) may keep tabs and line breaks, and the left-to-right / right-to-left marks.
_TEXT_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Earliest accepted alert time: the epoch (anything earlier is a zero value or a mistake).
EARLIEST = 0.0
# Latest time anything may carry: 9999-12-31T23:59:59Z, the last one Python (and Slack) can format.
LATEST = 253402300799.0


def check_delivery(delivery: Delivery, limits: IntakeLimits, now: float | None = None) -> None:
    """Raise PayloadError for the first field of `delivery` outside `limits`."""
    if len(delivery.alerts) > limits.max_alerts:
        raise PayloadError(f"{len(delivery.alerts)} alerts in one delivery; the limit is {limits.max_alerts}"
                           " (server.limits.max_alerts)", "alerts")
    if delivery.dedup_key is not None:
        _check_string(delivery.dedup_key, "id", limits.max_name_bytes, "max_name_bytes")
    latest = (time.time() if now is None else now) + limits.max_future
    # Alertmanager's alerts share one `extra` (group labels, receiver, URL): checked once, where the first
    # alert carrying it stands in the loop, so a refusal names the same alert as before.
    checked_extra: Mapping[str, Any] | None = None
    for index, alert in enumerate(delivery.alerts):
        if not _strings_clear(alert, limits):
            _check_strings(alert, f"alerts.{index}", limits)
        if alert.extra is not checked_extra:
            _check_extra(alert.extra, f"alerts.{index}", limits)
            checked_extra = alert.extra
        # Written so that NaN fails too. A firing alert's endsAt may lie far ahead (when it would
        # expire unless resent); it only has to stay a time every later step can format.
        if not EARLIEST <= alert.starts_at <= latest:
            raise PayloadError(f"time out of bounds: it must lie between 1970 and now plus {limits.max_future:g}s"
                               " (server.limits.max_future)", f"alerts.{index}.startsAt")
        if alert.ends_at is not None and not EARLIEST <= alert.ends_at <= LATEST:
            raise PayloadError("time out of bounds: it must lie between 1970 and 9999", f"alerts.{index}.endsAt")


def _strings_clear(alert: Alert, limits: IntakeLimits) -> bool:
    """True only if `_check_strings` would pass: the usual alert in a few C-level calls instead of a check
    per string. A test of the strings joined finds what a test of each would (the patterns match single
    characters; a printable string has neither control nor bidi characters, which are not printable);
    sizes are bounded by 4 bytes a character, and each string is within its limit when their sum is.
    False says nothing: the string-by-string check decides, and names the field."""
    labels, annotations = alert.labels, alert.annotations
    if len(labels) > limits.max_labels or len(annotations) > limits.max_annotations:
        return False
    label_names, annotation_names = "".join(labels), "".join(annotations)
    label_values, text = "".join(labels.values()), "".join(annotations.values())
    name_chars = limits.max_name_bytes // 4
    if not (_within(label_names, labels, name_chars) and _within(annotation_names, annotations, name_chars)
            and _within(label_values, labels.values(), limits.max_label_value_bytes // 4)
            and _within(text, annotations.values(), limits.max_annotation_value_bytes // 4)
            and len(alert.fingerprint) <= name_chars
            and max(len(alert.generator_url), len(alert.group_key)) <= limits.max_text_bytes // 4):
        return False
    identifiers = label_names + label_values + annotation_names + alert.fingerprint + alert.generator_url \
        + alert.group_key
    return ((identifiers.isprintable() or not _IDENTIFIER_FORBIDDEN.search(identifiers))
            and (text.isprintable() or not _TEXT_FORBIDDEN.search(text)))


def _within(joined: str, strings: Iterable[str], max_chars: int) -> bool:
    """Every one of `strings` (joined: `joined`) has at most `max_chars` characters."""
    return len(joined) <= max_chars or max(map(len, strings)) <= max_chars


def _check_strings(alert: Alert, where: str, limits: IntakeLimits) -> None:
    _check_mapping(alert.labels, f"{where}.labels", limits.max_labels, "max_labels",
                   limits.max_label_value_bytes, "max_label_value_bytes", limits)
    _check_mapping(alert.annotations, f"{where}.annotations", limits.max_annotations, "max_annotations",
                   limits.max_annotation_value_bytes, "max_annotation_value_bytes", limits, free_text=True)
    _check_string(alert.fingerprint, f"{where}.fingerprint", limits.max_name_bytes, "max_name_bytes")
    _check_string(alert.generator_url, f"{where}.generatorURL", limits.max_text_bytes, "max_text_bytes")
    _check_string(alert.group_key, "groupKey", limits.max_text_bytes, "max_text_bytes")


# Field paths are built only for a refusal: every label of every alert passes through here on the webhook path.

def _check_mapping(values: Mapping[str, str], field: str, max_items: int, items_key: str, max_value: int,
                   value_key: str, limits: IntakeLimits, *, free_text: bool = False) -> None:
    if len(values) > max_items:
        raise PayloadError(f"{len(values)} entries; the limit is {max_items} (server.limits.{items_key})", field)
    for name, value in values.items():
        problem = (_problem(name, limits.max_name_bytes, "max_name_bytes", what="name")
                   or _problem(value, max_value, value_key, free_text=free_text))
        if problem:
            raise PayloadError(problem, f"{field}.{_shown(name)}")


def _check_extra(extra: Mapping[str, Any], where: str, limits: IntakeLimits) -> None:
    """Vendor extras kept with the alert (external URL, dashboard links, receiver ...): every string in them."""
    for key, value in extra.items():
        problem = _problem(str(key), limits.max_name_bytes, "max_name_bytes", what="name")
        if not problem and isinstance(value, str):
            problem = _problem(value, limits.max_text_bytes, "max_text_bytes")
        if problem:
            raise PayloadError(problem, f"{where}.{_shown(str(key))}")
        if isinstance(value, Mapping):
            _check_extra(value, f"{where}.{_shown(str(key))}", limits)


def _check_string(value: str, field: str, max_bytes: int, limit_key: str, *, what: str = "value",
                  free_text: bool = False) -> None:
    problem = _problem(value, max_bytes, limit_key, what=what, free_text=free_text)
    if problem:
        raise PayloadError(problem, field)


def _problem(value: str, max_bytes: int, limit_key: str, *, what: str = "value", free_text: bool = False
             ) -> str | None:
    """What is wrong with one string, or None."""
    # UTF-8 takes at most 4 bytes a character, so most strings fit without being encoded to count.
    if len(value) * 4 > max_bytes:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return f"{what} is {size} bytes; the limit is {max_bytes} (server.limits.{limit_key})"
    forbidden = (_TEXT_FORBIDDEN if free_text else _IDENTIFIER_FORBIDDEN).search(value)
    if forbidden:
        return f"{what} contains the control character U+{ord(forbidden.group()):04X}"
    return None


def _shown(name: str) -> str:
    """A key as it can be printed in a field path, whatever it contains."""
    return name if name.isprintable() and len(name) <= 64 else ascii(name[:64])
