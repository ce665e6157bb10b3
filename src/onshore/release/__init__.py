"""Releases: the trained global model as one signed bundle, licences to other carmakers, and
the checks at load time.

- :mod:`~onshore.release.bundle`: the ``.onshore`` bundle, byte for byte, and its signature;
- :mod:`~onshore.release.card`: the model card (architecture, sites, metrics, DP budgets,
  rulebook versions, the parties who developed and operated it);
- :mod:`~onshore.release.lineage`: every update that went into it, checked in its site's ledger;
- :mod:`~onshore.release.create`: ``release create``, a decision the coordinator's ledger records;
- :mod:`~onshore.release.verify`: ``release verify``;
- :mod:`~onshore.release.licence`: licences, granted per territory through the gate, signed by
  the releaser, revoked in its ledger;
- :mod:`~onshore.release.restrictions`: what the rulebooks forbid of the software whatever a
  licence says (the US rule on China- or Russia-linked automated-driving software);
- :mod:`~onshore.release.load`: :func:`load_model`, every check before the model;
- :mod:`~onshore.release.story`: the demo's part.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.release.bundle import Bundle, read_bundle
    from onshore.release.create import create_release
    from onshore.release.licence import (
        Licence,
        LicenceTerms,
        TerritoryDecision,
        grant_licence,
        list_licences,
        parse_model_years,
        read_licence,
        revoke_licence,
    )
    from onshore.release.load import (
        DEFAULT_PURPOSE,
        LicenceCheck,
        LicensedModel,
        check_use,
        load_model,
    )
    from onshore.release.restrictions import Prohibition
    from onshore.release.verify import BundleReport, verify_bundle

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "Bundle": "bundle",
        "read_bundle": "bundle",
        "create_release": "create",
        "Licence": "licence",
        "LicenceTerms": "licence",
        "TerritoryDecision": "licence",
        "grant_licence": "licence",
        "list_licences": "licence",
        "parse_model_years": "licence",
        "read_licence": "licence",
        "revoke_licence": "licence",
        "DEFAULT_PURPOSE": "load",
        "LicenceCheck": "load",
        "LicensedModel": "load",
        "check_use": "load",
        "load_model": "load",
        "Prohibition": "restrictions",
        "BundleReport": "verify",
        "verify_bundle": "verify",
    },
)

__all__ = [
    "DEFAULT_PURPOSE",
    "Bundle",
    "BundleReport",
    "Licence",
    "LicenceCheck",
    "LicenceTerms",
    "LicensedModel",
    "Prohibition",
    "TerritoryDecision",
    "check_use",
    "create_release",
    "grant_licence",
    "list_licences",
    "load_model",
    "parse_model_years",
    "read_bundle",
    "read_licence",
    "revoke_licence",
    "verify_bundle",
]
