"""A site's consent to a licence: its own gate decides whether the model its data trained may go
to the licensee, for each territory and purpose, and it signs what it decided.

The coordinator cannot decide this for a site: the law of the data's origin applies (China's
rulebook treats parameters trained on Chinese data as important data), on the approvals only
that site holds. So ``onshore license grant`` asks every contributing site's service
(``POST /v1/licences/consent``), and each site decides with its gate (:func:`decide`), records
a ``licence_consent`` entry in its ledger, and answers a statement signed with its ledger key
over :data:`CONSENT_CONTEXT`. The licence carries those statements, so anyone holding the sites'
identities can check who consented to what (:func:`consent_problem`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from onshore.errors import RequestRefused
from onshore.gate.site import OpenSite
from onshore.ledger.entry import canonical_json, fingerprint
from onshore.rulebook.evaluate import DataItem, Recipient, TransferRequest

__all__ = [
    "CONSENT_CONTEXT",
    "CONSENT_FORMAT",
    "CONSENT_KIND",
    "consent_problem",
    "decide",
    "terms_digest",
]

CONSENT_FORMAT: Final = "onshore.consent/1"
CONSENT_CONTEXT: Final = b"onshore.release.consent.v1\x00"
"""Prefix of what a consent's signature covers: never valid as another signature."""
CONSENT_KIND: Final = "licence_consent"
"""The ledger kind a site records its decision under."""


def terms_digest(terms: Mapping[str, Any]) -> str:
    """SHA-256 of a licence's terms as the coordinator asked (its canonical JSON)."""
    return hashlib.sha256(canonical_json(terms).encode()).hexdigest()


def _message(statement: Mapping[str, Any]) -> bytes:
    return CONSENT_CONTEXT + hashlib.sha256(canonical_json(statement).encode()).digest()


def decide(site: OpenSite, body: Mapping[str, Any]) -> dict[str, Any]:
    """At a site: decide a licence's territories and purposes with the site's gate, record it
    (``licence_consent``), and return the signed statement. ``body`` holds ``licence`` (the
    terms) and ``subjects`` (the vehicles the site's updates were trained on). Raises
    :class:`RequestRefused` for terms it cannot read."""
    terms = body.get("licence")
    subjects = body.get("subjects", 0)
    if not isinstance(terms, dict) or not isinstance(subjects, int) or subjects < 0:
        raise RequestRefused(
            "a consent request holds licence terms and subjects", reason="malformed"
        )
    try:
        licensee = terms["licensee"]
        territories = [str(t) for t in terms["territories"]]
        purposes = [str(p) for p in terms["purposes"]]
        issued = date.fromisoformat(str(terms["issued"]))
        recipient_country = licensee.get("country")
        linked = tuple(licensee.get("linked_to") or ())
        release = terms["release"]
        licence_id = str(terms["id"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RequestRefused(
            f"the licence terms are malformed: {exc}", reason="malformed"
        ) from None
    decisions: list[dict[str, Any]] = []
    for territory in territories:
        for purpose in purposes:
            try:
                request = TransferRequest(
                    origin=site.settings.jurisdiction,
                    destination=territory,
                    recipient=Recipient(
                        name=str(licensee["name"]),
                        country=recipient_country or territory,
                        linked_to=linked,
                    ),
                    purpose=purpose,
                    date=issued,
                    data=(
                        DataItem(
                            category="model_parameters",
                            subjects=subjects,
                            deid_state="anonymized",
                        ),
                    ),
                )
            except ValidationError as exc:
                raise RequestRefused(
                    f"territory {territory!r} or purpose {purpose!r}: {exc.errors()[0]['msg']}",
                    reason="malformed",
                ) from None
            decisions.append(
                {
                    "territory": territory,
                    "purpose": purpose,
                    "decision": site.decide(request).as_dict(),
                }
            )
    allowed = all(d["decision"]["allowed"] for d in decisions)
    statement: dict[str, Any] = {
        "format": CONSENT_FORMAT,
        "site": site.id,
        "licence": licence_id,
        "terms_sha256": terms_digest(terms),
        "release": release,
        "licensee": licensee,
        "subjects": subjects,
        "allowed": allowed,
        "decisions": [
            {
                "territory": d["territory"],
                "purpose": d["purpose"],
                "allowed": d["decision"]["allowed"],
                "reason": (d["decision"].get("reasons") or ["denied"])[0],
                "approval": (d["decision"].get("approval") or {}).get("id"),
                "mechanisms": list(d["decision"].get("mechanisms") or ()),
                "rulebook_versions": d["decision"].get("rulebook_versions"),
            }
            for d in decisions
        ],
    }
    entry = site.ledger.append(CONSENT_KIND, {**statement, "decisions": decisions, "terms": terms})
    statement["entry"] = {"site": site.id, "seq": entry.seq, "hash": entry.hash}
    return {
        "statement": statement,
        "signature": {
            "algorithm": "ed25519",
            "key": fingerprint(site.keys.public_key),
            "signature": site.keys.sign(_message(statement)).hex(),
        },
    }


def consent_problem(
    consent: Mapping[str, Any], key: Ed25519PublicKey, *, site: str, terms_sha256: str
) -> str | None:
    """Why ``consent`` is not ``site``'s signed consent to the terms hashing to
    ``terms_sha256`` under ``key``; None when it is."""
    statement, signature = consent.get("statement"), consent.get("signature")
    if not isinstance(statement, dict) or not isinstance(signature, dict):
        return "not a consent statement"
    if statement.get("site") != site or statement.get("format") != CONSENT_FORMAT:
        return f"a statement of {statement.get('site')}, not of {site}"
    if statement.get("terms_sha256") != terms_sha256:
        return "a consent to other terms"
    try:
        key.verify(bytes.fromhex(str(signature.get("signature"))), _message(statement))
    except (ValueError, InvalidSignature):
        return f"the signature is not {site}'s ledger key's"
    return None
