"""Chapter 4: privacy scrubbing — the Luhn checksum, finding personal data, typed placeholders.

Oracles: the Luhn check digits of published test card numbers and a check digit computed by
brute force; character spans written by hand; the planted set of `reference.data.samples`
(ground-truth spans, decoys, and personal data written so that no pattern catches it).

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 4`):
- 4.6 the wrong digits doubled; 9 not subtracted; counted from the left; non-ASCII digits accepted.
- 4.7 cards not Luhn-checked; overlapping spans kept; spans unsorted; a URL keeping its full stop;
  the bare "::" taken for IPv6; `kinds` ignored.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.data import samples

# ----------------------------------------------------------------------------------------------
# 4.6 Luhn
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.6")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("79927398713", True),  # the textbook example
        ("79927398710", False),
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1112", False),
        ("5500000000000004", True),
        ("340000000000009", True),
        ("0", True),
        ("18", True),  # 1 doubled = 2, + 8 = 10
        ("", False),
        ("4111a111", False),
        ("١٢٣", False),  # Arabic-Indic digits are not ASCII digits
        ("١٨", False),  # not even when their values (1, 8) would pass
    ],
)
def test_luhn_known_numbers(impl, number, valid):
    assert impl.data.privacy.luhn_valid(number) is valid


@pytest.mark.exercise("4.6")
@pytest.mark.points(1)
@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=18))
def test_exactly_one_check_digit_makes_a_number_valid(impl, payload):
    valid = [d for d in "0123456789" if impl.data.privacy.luhn_valid(payload + d)]
    assert len(valid) == 1


# ----------------------------------------------------------------------------------------------
# 4.7 find_pii, scrub
# ----------------------------------------------------------------------------------------------


def _spans(impl, text):
    return [(s.start, s.end, s.kind) for s in impl.data.privacy.find_pii(text)]


@pytest.mark.exercise("4.7")
@pytest.mark.points(2)
@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        ("Write to ines.smith@uni.example.edu today.", "ines.smith@uni.example.edu", "EMAIL"),
        ("Call (555) 123-4567 now.", "(555) 123-4567", "PHONE"),
        ("Call +44 20 7946 0958 now.", "+44 20 7946 0958", "PHONE"),
        ("The host 192.168.0.17 is down.", "192.168.0.17", "IP"),
        ("The host 2001:db8::8a2e:370:7334 is down.", "2001:db8::8a2e:370:7334", "IP"),
        ("Pay with 5500-0000-0000-0004 please.", "5500-0000-0000-0004", "CREDIT_CARD"),
        ("See https://example.org/a/b?x=1.", "https://example.org/a/b?x=1", "URL"),
    ],
)
def test_find_pii_each_kind(impl, text, secret, kind):
    start = text.index(secret)
    assert _spans(impl, text) == [(start, start + len(secret), kind)]


@pytest.mark.exercise("4.7")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    "text",
    [
        "Python 3.11.7 is out.",
        "Order 4111 1111 1111 1112 was cancelled.",  # fails Luhn
        "We met at 10:30:00 on 2024-03-15.",
        "Octets 999.300.1.7 are out of range.",
        "It costs 1200 euros for 250 people.",
        "Use the @decorator syntax.",
        "assignment_stmt ::= (target_list \"=\")+ expression; s[::-1]; (?::x)",  # bare "::" is no IPv6 address
    ],
)
def test_find_pii_leaves_decoys_alone(impl, text):
    assert impl.data.privacy.find_pii(text) == []


@pytest.mark.exercise("4.7")
@pytest.mark.points(1)
def test_overlaps_go_to_the_earlier_kind_and_spans_are_sorted(impl):
    text = "Mail a@example.com, or open http://10.0.0.1/admin, or call 555-123-4567."
    assert [s.kind for s in impl.data.privacy.find_pii(text)] == ["EMAIL", "URL", "PHONE"]
    assert [s.kind for s in impl.data.privacy.find_pii(text, kinds=["IP"])] == ["IP"]
    assert impl.data.privacy.scrub(text) == "Mail <EMAIL>, or open <URL>, or call <PHONE>."
    assert impl.data.privacy.scrub(text, kinds=["PHONE"]) == "Mail a@example.com, or open http://10.0.0.1/admin, or call <PHONE>."


@pytest.mark.exercise("4.7")
@pytest.mark.points(1)
def test_find_pii_bad_input(impl):
    with pytest.raises(ValueError, match="UTF-8"):
        impl.data.privacy.find_pii(b"call \xff 555-123-4567")
    with pytest.raises(ValueError, match="kinds"):
        impl.data.privacy.find_pii("text", kinds=["SSN"])
    assert impl.data.privacy.scrub("") == ""


@pytest.mark.exercise("4.7")
@pytest.mark.points(2)
def test_planted_set_precision_and_recall(impl):
    """The set's design is the specification: every item planted from a template is found exactly, with
    nothing else in its sentence; among the decoys only a four-part version number may pass for an IPv4
    address (a pattern cannot tell); the items written to defeat patterns are the misses."""
    items = samples.planted_pii(200, seed=0)
    missed = {sentence for _, sentence, _ in samples._MISSED}
    decoys = set(samples._DECOYS)
    for text, truth in items:
        found = [tuple(s) for s in impl.data.privacy.find_pii(text)]
        if text in decoys:
            assert all(kind == "IP" and text[a:b] == "10.0.0.1" for a, b, kind in found), (text, found)
        elif text in missed:
            assert found == [], (text, found)
        else:
            assert found == [tuple(s) for s in truth], text
    scores = impl.data.privacy.pii_precision_recall(items)
    assert scores["CREDIT_CARD"]["recall"] == 1.0 and scores["URL"]["recall"] == 1.0
    assert impl.data.privacy.find_pii("Mail alice at example dot com if you can.") == []  # what it misses
