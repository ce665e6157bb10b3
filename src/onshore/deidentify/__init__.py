"""De-identification: named profiles of recorded, parameterised transforms, applied inside a
site, with the checks that prove the result re-run on the output.

Trajectories (:mod:`~onshore.deidentify.trajectory`): keyed pseudonyms, sensitive areas and
trip ends removed, clip-local coordinates and relative time, coarsening. Camera frames
(:mod:`~onshore.deidentify.frames`): faces and licence plates masked, offline.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.deidentify.checks import Check, run_checks, state_of
    from onshore.deidentify.profiles import (
        BUILTIN_PROFILES,
        TRANSFORMS,
        Profile,
        Step,
        resolve_profile,
    )
    from onshore.deidentify.run import deidentify_site, read_output

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "Check": "checks",
        "run_checks": "checks",
        "state_of": "checks",
        "BUILTIN_PROFILES": "profiles",
        "TRANSFORMS": "profiles",
        "Profile": "profiles",
        "Step": "profiles",
        "resolve_profile": "profiles",
        "deidentify_site": "run",
        "read_output": "run",
    },
)

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
