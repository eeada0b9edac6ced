"""Fuzzing the edge limits: the check of an alert's strings all at once and the check string by string
refuse the same deliveries with the same field and message, and a shared `extra` checked once refuses
where one copy per alert would."""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from responder.config import IntakeLimits
from responder.intake import PayloadError, limits
from responder.models import Alert, AlertStatus, Delivery

# Small limits, so that sizes at and around them are drawn often.
LIMITS = IntakeLimits(max_labels=3, max_annotations=3, max_name_bytes=12, max_label_value_bytes=12,
                      max_annotation_value_bytes=16, max_text_bytes=16)
# Of 1 to 4 bytes in UTF-8, and printable or not (a no-break space, a private-use character).
PLAIN = [*"ab= .:/-", "é", "€", "😀", "😀", "😀", "\xa0", "\ue000"]
# Every kind of control, bidi and line break the checks tell apart, and a lone surrogate.
NASTY = ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f", "\u200e", "\u200f", "\u202a", "\u202e",
         "\u2066", "\u2069", "\u2028", "\ud800"]


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    """Plain strings within every limit, but for one (if any) with a nasty character and one (if any) of a
    size around its limit: a delivery with several problems is refused for the first whichever way."""
    nasty_at, long_at, drawn = draw(st.integers(-1, 30)), draw(st.integers(-1, 30)), 0

    def text() -> str:
        nonlocal drawn
        drawn += 1
        plain = draw(st.text(alphabet=st.sampled_from(PLAIN), min_size=3 if drawn == long_at else 0,
                             max_size=8 if drawn == long_at else 3))
        if drawn != nasty_at:
            return plain
        cut = draw(st.integers(0, len(plain)))
        return plain[:cut] + draw(st.sampled_from(NASTY)) + plain[cut:]

    def mapping() -> dict[str, str]:
        return {text(): text() for _ in range(draw(st.integers(0, 4)))}

    shared = {"receiver": text(), "group_labels": mapping()}
    group_key = text()
    alerts = [Alert("alertmanager", AlertStatus.FIRING, text(), 1_700_000_000.0, mapping(), mapping(),
                    generator_url=text(), group_key=group_key, extra=shared)
              for _ in range(draw(st.integers(1, 3)))]
    return Delivery("alertmanager", b"", alerts)


def outcome(delivery: Delivery) -> tuple[str, str] | None:
    try:
        limits.check_delivery(delivery, LIMITS, now=1_700_000_000.0)
    except PayloadError as exc:
        return exc.field, exc.message
    return None


def string_by_string(alert: Any, limits: Any) -> bool:
    return False


@settings(max_examples=1500, deadline=None)
@given(deliveries())
def test_checking_all_strings_at_once_agrees_with_one_by_one(delivery: Delivery) -> None:
    one_extra_per_alert = dataclasses.replace(
        delivery, alerts=[dataclasses.replace(a, extra=dict(a.extra)) for a in delivery.alerts])
    with mock.patch.object(limits, "_strings_clear", string_by_string):
        expected = outcome(one_extra_per_alert)
    assert outcome(delivery) == expected


def test_what_the_checks_refuse_is_never_printable() -> None:
    """The all-at-once check passes printable strings without searching them for forbidden characters."""
    for code in range(0x3000):
        if limits._IDENTIFIER_FORBIDDEN.match(chr(code)):
            assert not chr(code).isprintable(), hex(code)
