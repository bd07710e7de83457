"""Durations and quantities as manifests write them, and the mistakes people make with them."""

from __future__ import annotations

import re

import pytest

from mlcycle_operator.api.common import DURATION_PATTERN, QUANTITY_PATTERN
from mlcycle_operator.units import parse_duration, parse_quantity


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0),
    ("5m", 300.0),
    ("1h", 3600.0),
    ("1h30m", 5400.0),
    ("500ms", 0.5),
    ("1m500ms", 60.5),
    ("1.5h", 5400.0),
    ("0.1s", 0.1),
    ("1h1m1s1ms", 3661.001),
    ("0s", 0.0),
    ("30s1m", 90.0),  # Go accepts units in any order, and so does the API's pattern
    ("2m2m", 240.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", [
    "", "90", "s", "1d", "1 m", " 1m", "1m ", "-1s", "+1s", "1.s", ".5s", "1us", "1ns", "1M", "1H", "1m\n",
    "1e3s", "one minute",
])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match=r"not a duration: .*e\.g\. 90s"):
        parse_duration(text)


@pytest.mark.parametrize("value", [None, 90, 1.5])
def test_parse_duration_refuses_non_strings(value):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("text", ["90s", "1h30m", "500ms", "", "1d", "1m\n", "1.s"])
def test_parse_duration_agrees_with_the_api_pattern(text):
    """What the API server admits is exactly what the operator can read."""
    admitted = re.fullmatch(DURATION_PATTERN, text) is not None
    try:
        parse_duration(text)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == admitted


@pytest.mark.parametrize(("value", "number"), [
    (3, 3.0),
    (0, 0.0),
    (1.5, 1.5),
    ("2", 2.0),
    ("500m", 0.5),
    ("100m", 0.1),
    ("1k", 1000.0),
    ("1M", 1e6),
    ("1G", 1e9),
    ("2T", 2e12),
    ("1P", 1e15),
    ("1E", 1e18),
    ("4Gi", 4 * 2**30),
    ("512Mi", 512 * 2**20),
    ("1Ki", 1024.0),
    ("1Ti", 2.0**40),
    ("1Pi", 2.0**50),
    ("1Ei", 2.0**60),
    ("1.5Gi", 1.5 * 2**30),
    ("250u", 250e-6),
    ("10n", 10e-9),
    ("0.1k", 100.0),
    (".5", 0.5),
    ("1.", 1.0),
    ("1e3", 1000.0),
    ("1E3", 1000.0),  # an exponent, not exa followed by a stray 3
    ("1.5e-3", 0.0015),
    ("-1", -1.0),
    ("+2k", 2000.0),
])
def test_parse_quantity(value, number):
    assert parse_quantity(value) == pytest.approx(number, rel=1e-15)


@pytest.mark.parametrize("value", [
    "", "Gi", "4GB", "4gi", "4 Gi", " 4Gi", "1K", "1Ki ", "1e", "1e1.5", "1.2.3", "--1", "m", "4G i", "abc",
    "1e99999999", "1e400", True, None, 1e400, float("nan"), 10**400, [1],
])
def test_parse_quantity_refuses(value):
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(value)


@pytest.mark.parametrize("text", ["2", "500m", "4Gi", "1e3", "1E", ".5", "4GB", "1K", "Gi", ""])
def test_parse_quantity_agrees_with_the_api_pattern(text):
    """Everything the operator reads, the API server admits; the pattern's fractional exponents are the only gap."""
    admitted = re.fullmatch(QUANTITY_PATTERN, text) is not None
    try:
        parse_quantity(text)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == admitted
