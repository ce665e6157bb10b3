"""A VIN as a driver's request gives it, checked, and the keyed hash the ledger names it by."""

from __future__ import annotations

import hashlib
import hmac

from onshore.clips.vin import is_vin_form
from onshore.errors import InvalidVin

__all__ = ["check_vin", "vehicle_key"]


def check_vin(text: str, *, option: str = "--vin") -> str:
    """``text`` as a VIN (spaces around it dropped, letters upper-cased). Raises
    :class:`InvalidVin`, naming ``option``, for anything that cannot be one (ISO 3779: 17
    digits and capital letters but I, O and Q; the check digit is North American and Chinese
    practice, not European, so it is not required)."""
    vin = text.strip().upper()
    if is_vin_form(vin):
        return vin
    if len(vin) != 17:
        why = f"{len(vin)} characters, not 17"
    else:
        bad = sorted({c for c in vin if not is_vin_form(c * 17)})
        why = f"it holds {', '.join(repr(c) for c in bad)}, which no VIN does"
    raise InvalidVin(
        f"{option} {text!r} is not a VIN: {why}",
        hint="a VIN is 17 letters and digits, without I, O or Q (ISO 3779)",
    )


def vehicle_key(secret: bytes, vin: str) -> str:
    """The keyed hash a request names the vehicle by in the ledger and in reports: the same VIN
    gives the same key at this site, and nobody without the site's secret can link it back."""
    return hmac.new(secret, f"rights/vehicle:{vin}".encode(), hashlib.sha256).hexdigest()
