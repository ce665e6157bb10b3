"""Vehicle identification numbers (ISO 3779), with the check digit of 49 CFR 565.15.

The ninth character is a check digit computed from the other sixteen; North American and Chinese
VINs must carry it (GB 16735), European ones usually do. ``I``, ``O`` and ``Q`` never appear.
"""

from __future__ import annotations

import random
import re
from typing import Final

__all__ = ["MODEL_YEAR_CODES", "check_digit", "is_valid_vin", "is_vin_form", "make_vin"]

_TRANSLIT: Final = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS: Final = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_ALPHABET: Final = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
_VIN_RE: Final = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")

MODEL_YEAR_CODES: Final = {2022: "N", 2023: "P", 2024: "R", 2025: "S", 2026: "T", 2027: "V"}
"""The tenth character for recent model years."""


def check_digit(vin: str) -> str:
    """The check digit (``0``-``9`` or ``X``) that position 9 of ``vin`` must hold.

    Raises ``ValueError`` when ``vin`` is not 17 characters of the VIN alphabet.
    """
    if not _VIN_RE.match(vin):
        raise ValueError(f"not a VIN (17 characters, no I, O or Q): {vin!r}")
    total = sum(_TRANSLIT[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
    remainder = total % 11
    return "X" if remainder == 10 else str(remainder)


def is_vin_form(vin: str) -> bool:
    """Whether ``vin`` has a VIN's form (17 characters, no I, O or Q), whatever its check
    digit: European VINs need not carry one."""
    return bool(_VIN_RE.match(vin))


def is_valid_vin(vin: str) -> bool:
    """Whether ``vin`` is well formed and its check digit is right."""
    return bool(_VIN_RE.match(vin)) and vin[8] == check_digit(vin)


def make_vin(rng: random.Random, wmi: str, vds: str, model_year: int, plant: str) -> str:
    """A realistic VIN: manufacturer ``wmi`` (3), descriptor ``vds`` (5), check digit, model
    year, ``plant`` (1) and a six-digit serial drawn from ``rng``."""
    serial = f"{rng.randrange(1_000_000):06d}"
    body = f"{wmi}{vds}0{MODEL_YEAR_CODES[model_year]}{plant}{serial}"
    if len(body) != 17 or any(c not in _ALPHABET for c in body):
        raise ValueError(f"cannot build a VIN from {wmi!r}, {vds!r}, {plant!r}")
    return body[:8] + check_digit(body) + body[9:]
