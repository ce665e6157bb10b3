"""A driver's consent withdrawn for a purpose, at the site that holds the vehicle's data.

From the moment it is on file the vehicle's clips serve no use the withdrawal covers
(:func:`~onshore.store.catalogue.withdrawal_covers`): a training purpose keeps them out of every
training sample set the site builds (local, federated, fine-tuning), and a transfer for that
purpose leaves them out of what it selects. What was used before stays as it was (a withdrawal
does not reach back; an erasure removes the data). The ledger records it, naming the vehicle
by its keyed hash.
"""

from __future__ import annotations

import re
from typing import Any, Final

from onshore.errors import ConfigError, UnknownVehicle
from onshore.gate.site import OpenSite
from onshore.rights.vin import check_vin, vehicle_key
from onshore.settings import Project

__all__ = ["withdraw_consent"]

_PURPOSE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def withdraw_consent(
    project: Project, vin: str, purpose: str, *, site_id: str | None = None
) -> dict[str, Any]:
    """Record that the driver of ``vin`` withdrew consent for ``purpose`` (``all``,
    ``training`` for every training purpose, or a purpose's name, e.g. ``adas_training``).
    Returns what was recorded; a withdrawal on file already answers ``already_withdrawn``.
    Raises :class:`InvalidVin`, :class:`UnknownVehicle`, or :class:`ConfigError` for a purpose
    that is not a name."""
    vin = check_vin(vin)
    if not _PURPOSE.fullmatch(purpose):
        raise ConfigError(
            f"--purpose {purpose!r} is not a purpose's name",
            hint="lower-case letters, digits and _, e.g. adas_training, or training or all",
        )
    with OpenSite.open(project, site_id) as site:
        catalogue = site.store.catalogue
        clips = catalogue.clips_of([vin])
        if not clips and not catalogue.outputs_of_vehicle(vin):
            raise UnknownVehicle(
                f"{site.id} holds no data of vehicle {vin}",
                hint="a withdrawal is recorded at the site that holds the vehicle's data",
            )
        key = vehicle_key(site.keys.hmac_secret.reveal(), vin)
        before = [w for w in catalogue.withdrawals(vin) if w["purpose"] == purpose]
        if before:
            return {
                "site": site.id,
                "vehicle": key,
                "purpose": purpose,
                "status": "already_withdrawn",
                "withdrawn_at": before[0]["withdrawn_at"],
                "ledger": {site.id: before[0]["ledger_seq"]},
            }
        with catalogue.transaction() as conn:
            entry = site.ledger.append(
                "consent_withdrawn",
                {"vehicle": key, "purpose": purpose, "clips": len(clips)},
                conn=conn,
            )
            catalogue.withdraw_consent(conn, vin, purpose, entry.seq)
        return {
            "site": site.id,
            "vehicle": key,
            "purpose": purpose,
            "status": "withdrawn",
            "clips": len(clips),
            "withdrawn_at": entry.time,
            "ledger": {site.id: entry.seq},
        }
