"""The demo's part for releases: release a federated run, license it to a partner carmaker for
the EU and China, load it there, and show a US model-year 2027 load refused with its reason.

Whether the US rule refuses that load depends on who made the model. RULEBOOK.md reads 15 CFR
791 subpart D as forbidding a release "whose developers include a China-linked entity" for US
vehicles from model year 2027. onshore counts the operators of the sites whose updates went into
the model among its developers (each ran the training on its own data and hardware; see
:mod:`onshore.release.restrictions`). In the three-regions project the Chinese site is operated
by Onshore Mobility (Shanghai) Co., Ltd., established in China: once its updates are in the
model (an assessment for model parameters on file at that site lets them leave), the US rule
applies. When they are not, the card names no China-linked party, and the US load is refused by
the licence alone (it does not cover the US); the story says which.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, Final

from onshore.errors import (
    InvalidApproval,
    LicenceDenied,
    LicenceRefused,
    ReleaseExists,
    UseProhibited,
)
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.release.bundle import read_bundle
from onshore.release.card import parties
from onshore.release.create import create_release
from onshore.release.licence import LicenceTerms, grant_licence, parse_model_years
from onshore.release.load import DEFAULT_PURPOSE, load_model
from onshore.release.records import find_bundle
from onshore.release.verify import verify_bundle
from onshore.settings import Project

__all__ = ["release_demo_story"]

VERSION: Final = "1.0.0"
PARTNER: Final = "Partner Motors GmbH"
PARTNER_COUNTRY: Final = "DE"
TERRITORIES: Final = ("EU", "CN")
MODEL_YEARS: Final = "2026-2028"


def _approve_for_partner(
    project: Project, refusal: LicenceDenied, today: date, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Put on file, at each site whose gate refused the grant for want of an approval, one of
    the mechanisms its decision names, covering the partner: what the story's compliance
    officer does after the first refusal."""
    added = []
    for territory in refusal.decisions:
        for item in territory.decisions:
            decision = item["decision"]
            if decision["allowed"] or not decision.get("mechanisms"):
                continue
            site = project.site(item["site"])
            mechanism = decision["mechanisms"][0]
            approval = Approval.model_validate(
                {
                    "id": f"DEMO-LICENCE-{site.id}-{mechanism}".upper(),
                    "type": mechanism,
                    "origin": site.jurisdiction,
                    "recipient": PARTNER,
                    "categories": ["model_parameters"],
                    "purposes": [item["purpose"]],
                    "max_subjects": 100_000,
                    "valid_from": date(today.year, 1, 1),
                    "reference": f"{mechanism} for the licensed model (demo)",
                }
            )
            say(
                f"{site.id}: putting a {mechanism} on file for model parameters to {PARTNER} "
                f"({item['purpose']})"
            )
            try:
                add_approval(project, site.id, approval)
            except InvalidApproval as exc:
                say(f"(not added: {exc.message})")
                continue
            added.append({"site": site.id, "id": approval.id, "type": mechanism})
    return added


def release_demo_story(project: Project, run: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Release federated run ``run`` as 1.0.0 (reusing the release when the project has it),
    verify it, license it to Partner Motors GmbH for the EU and China (adas, model years
    2026-2028), load it for a German model-year 2027 vehicle and predict, then try a US
    model-year 2027 load and show its refusal. Returns a JSON-able summary."""
    today = datetime.now(UTC).date()
    say(f"releasing run {run} as {VERSION}: a signed bundle with its card and lineage")
    created = True
    try:
        create_release(project, run, VERSION, say=say)
    except ReleaseExists:
        say(f"release {VERSION} exists from an earlier run of the demo; reusing it")
        created = False
    bundle = find_bundle(project, VERSION)
    report = verify_bundle(bundle, project=project)
    say(
        f"release verify: {'valid' if report.valid else 'NOT valid'}"
        + (f" ({report.problems[0]})" if report.problems else "")
    )
    report.raise_for_problems()
    makers = parties(read_bundle(bundle).card)
    for party in makers:
        say(f"made by {party.describe()}")
    grant_args: dict[str, Any] = {
        "licensee": PARTNER,
        "licensee_country": PARTNER_COUNTRY,
        "territories": list(TERRITORIES),
        "purposes": [DEFAULT_PURPOSE],
        "model_years": parse_model_years(MODEL_YEARS),
        "expires": date(today.year + 2, 12, 31),
    }
    say(f"licensing {VERSION} to {PARTNER} for {', '.join(TERRITORIES)} ({MODEL_YEARS})")
    first_refusal = None
    approvals: list[dict[str, Any]] = []
    try:
        licence = grant_licence(project, VERSION, **grant_args)
    except LicenceDenied as exc:
        first_refusal = {
            "message": exc.message,
            "territories": [d.as_dict() for d in exc.decisions],
        }
        say(f"refused: {exc.message}")
        approvals = _approve_for_partner(project, exc, today, say)
        say("licensing again")
        licence = grant_licence(project, VERSION, **grant_args)
    for territory in licence["territories"]:
        say(f"{territory['territory']}: {territory['reasons'][0]}")
    say(f"licence {licence['id']}: {licence['licence']}")
    loads = []
    for territory, model_year in (("DE", 2027), ("CN", 2028), ("US", 2027)):
        say(f"loading {VERSION} for a {territory} vehicle of model year {model_year}")
        try:
            loaded = load_model(
                bundle,
                licence["licence"],
                territory=territory,
                model_year=model_year,
                project=project,
            )
        except (UseProhibited, LicenceRefused) as exc:
            say(f"refused [{exc.code}]: {exc.message}")
            loads.append(
                {
                    "territory": territory,
                    "model_year": model_year,
                    "loaded": False,
                    "error": exc.code,
                    "reason": exc.message,
                    "check": exc.check.as_dict() if exc.check is not None else None,
                }
            )
            continue
        say(f"loaded: {loaded.check.reasons[0]}")
        loads.append(
            {
                "territory": territory,
                "model_year": model_year,
                "loaded": True,
                "check": loaded.check.as_dict(),
            }
        )
    china_linked = any(not load["loaded"] and load["error"] == UseProhibited.code for load in loads)
    if not china_linked:
        say(
            "no software restriction forbids this model in US vehicles: its card names no "
            "party linked to China or Russia (China's updates did not go into it), so the US "
            "load is refused by the licence alone"
        )
    terms = LicenceTerms.model_validate(licence["terms"])
    return {
        "release": {
            "version": VERSION,
            "bundle": str(bundle),
            "run": run,
            "manifest_sha256": report.manifest_sha256,
            "created": created,
            "parties": [p.as_dict() for p in makers],
        },
        "verify": report.as_dict(),
        "first_grant_refused": first_refusal,
        "approvals_added": approvals,
        "licence": {
            "path": licence["licence"],
            "id": licence["id"],
            "licensee": terms.licensee.name,
            "territories": list(terms.territories),
            "purposes": list(terms.purposes),
            "model_years": str(terms.model_years),
            "expires": terms.expires.isoformat(),
            "decisions": licence["territories"],
        },
        "loads": loads,
        "us_rule_applies": china_linked,
    }
