"""Durations and Kubernetes quantities as plain numbers: the two string formats manifests are full of."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from .api.common import DURATION_PATTERN

# The API's pattern is the single source of truth for what a duration may look like; this only splits it.
_DURATION = re.compile(DURATION_PATTERN)
# "ms" before "m" so that "500ms" is not read as 500 minutes followed by garbage.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}

# Kubernetes' quantity grammar (resource.Quantity): a signed decimal, then a binary or decimal SI suffix or an
# integer exponent. The CRD pattern also admits fractional exponents, which Kubernetes' own parser refuses.
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_QUANTITY_SUFFIX = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "90s", "1h30m" or "500ms" (the API's subset of Go's time.ParseDuration)."""
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise ValueError(
            f"not a duration: {text!r}; write a number and a unit (ms, s, m, h), repeated, e.g. 90s, 1h30m, 500ms"
        )
    # Decimal so that "0.1s" and "1m0.2s" come out as the numbers people wrote, not binary approximations.
    total = sum(
        (Decimal(number) * _DURATION_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)), Decimal(0)
    )
    return float(total)


def parse_quantity(value: int | float | str) -> float:
    """The number a Kubernetes quantity stands for: "500m" is 0.5, "4Gi" is 4 * 2**30, 3 is 3."""
    # bool is an int to Python, but `cpu: true` in a manifest is a mistake, not one CPU.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a quantity: {value!r}; expected a number or a string such as 500m, 2 or 4Gi")
    if isinstance(value, int | float):
        return _finite(value, value)
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(
            f"not a quantity: {value!r}; expected a number with an optional suffix "
            "(n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei) or exponent, e.g. 500m, 2, 4Gi, 1e3"
        )
    number = Decimal(match["number"])
    try:
        if match["exponent"] is not None:
            return _finite(number.scaleb(int(match["exponent"])), value)
        return _finite(number * _QUANTITY_SUFFIX[match["suffix"] or ""], value)
    except ArithmeticError as err:  # an exponent beyond what Decimal can hold
        raise ValueError(f"quantity out of range: {value!r}") from err


def _finite(number: int | float | Decimal, written: object) -> float:
    """The number as a float, refusing what a float cannot hold (the error names what was written)."""
    try:
        result = float(number)
    except OverflowError as err:  # an int too large for a float
        raise ValueError(f"quantity out of range: {written!r}") from err
    if not math.isfinite(result):
        raise ValueError(f"quantity out of range: {written!r}; a quantity is a finite number")
    return result
