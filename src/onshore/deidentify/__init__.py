"""De-identification: named profiles of recorded, parameterised transforms, applied inside a
site, with the checks that prove the result re-run on the output.

Trajectories (:mod:`~onshore.deidentify.trajectory`): keyed pseudonyms, sensitive areas and
trip ends removed, clip-local coordinates and relative time, coarsening. Camera frames
(:mod:`~onshore.deidentify.frames`): faces and licence plates masked, offline.
"""

from onshore.deidentify.checks import Check, run_checks, state_of
from onshore.deidentify.profiles import BUILTIN_PROFILES, TRANSFORMS, Profile, Step, resolve_profile
from onshore.deidentify.run import deidentify_site, read_output

__all__ = [
    "BUILTIN_PROFILES",
    "TRANSFORMS",
    "Check",
    "Profile",
    "Step",
    "deidentify_site",
    "read_output",
    "resolve_profile",
    "run_checks",
    "state_of",
]
