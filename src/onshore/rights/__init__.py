"""Drivers' rights and storage periods, served at the site where a vehicle's data was recorded.

- :mod:`~onshore.rights.erase`: a driver's erasure request (PIPL Art. 47, GDPR Art. 17). The
  site deletes the vehicle's clips, frames, de-identified outputs and every cache derived from
  them, from its store and its catalogue, and asks each party its ledger says received a copy
  (``transfer_out`` entries) to erase it; each answers with its own signed ``erasure_in``. A
  rerun after a crash or an unreachable peer completes the rest, once.
- :mod:`~onshore.rights.consent`: consent withdrawn for a purpose (PIPL Art. 15, GDPR Art.
  7(3)): from then on the vehicle's clips serve no such purpose.
- :mod:`~onshore.rights.access`: everything the site holds about a vehicle, and what was sent
  where (PIPL Art. 45, GDPR Art. 15), in open formats.
- :mod:`~onshore.rights.retention`: the storage periods of ``[sites.<id>] retention``
  enforced.

The ledger never holds a VIN: a request names the vehicle by a keyed hash
(:func:`~onshore.rights.vin.vehicle_key`) that only the site can compute again.
"""
