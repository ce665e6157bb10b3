"""Licences to use a released model: granted as gate decisions, signed by the releaser, revoked
in its ledger.

A licence names one release (by version and manifest hash), a licensee, the territories where
vehicles carrying the model may be sold, the purposes it may be used for, the model years, and
when it expires. It is a JSON file, ``<project>/licences/<id>.json``::

    {"licence": {...the terms...},
     "signature": {"algorithm": "ed25519", "key": FINGERPRINT, "signature": HEX}}

signed with Ed25519 over :data:`LICENCE_CONTEXT` and the SHA-256 of the terms' canonical JSON,
by the coordinator's key: the key that signed the release. A licence whose terms changed after
signing, or that another key signed, is not a licence (:class:`LicenceInvalid`).

Granting is a decision per territory, default deny. For each territory, the rulebook of every
site whose data trained the model decides whether the model's parameters may go to the
licensee for vehicles sold there, for each purpose, against the approvals on file at that site
(CN's rulebook treats model parameters trained on Chinese data as important data, so a
licensee outside China needs an approval covering it); and the rulebooks' software
restrictions must not forbid the model there in any of the model years (:mod:`~onshore.release.
restrictions`). Every territory must be allowed, or nothing is granted. Grants and refusals,
with each decision and its reasons, are written to the coordinator's ledger
(``licence_granted``, ``licence_refused``); a revocation is a ``licence_revoked`` entry there.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onshore.errors import (
    ConfigError,
    KeystoreError,
    LicenceDenied,
    LicenceInvalid,
    OnshoreError,
)
from onshore.files import write_json
from onshore.ledger import Ledger
from onshore.ledger.entry import canonical_json, public_key_hex
from onshore.release.bundle import Bundle, signature_valid, signed_digest
from onshore.release.card import SOFTWARE, parties
from onshore.release.records import (
    LICENCE_GRANTED,
    LICENCE_REFUSED,
    LICENCE_REVOKED,
    LICENCES_DIR,
    coordinator_ledger,
    find_bundle,
)
from onshore.release.restrictions import prohibitions
from onshore.release.verify import OpenedRelease, open_release
from onshore.rulebook.evaluate import Country
from onshore.rulebook.loader import project_rulebooks
from onshore.rulebook.model import Name
from onshore.settings import Project
from onshore.sites.keystore import load_keystore

__all__ = [
    "LICENCE_CONTEXT",
    "LICENCE_FORMAT",
    "Licence",
    "LicenceTerms",
    "Licensee",
    "ModelYears",
    "TerritoryDecision",
    "bundle_for",
    "decide_territories",
    "find_licence",
    "grant_licence",
    "licence_status",
    "list_licences",
    "parse_model_years",
    "read_licence",
    "revocation",
    "revoke_licence",
]

LICENCE_FORMAT: Final = "onshore.licence/1"
LICENCE_CONTEXT: Final = b"onshore.release.licence.v1\x00"
"""Prefix of the message a licence's signature covers: never valid as a bundle's or ledger
entry's signature, nor the other way round."""

_LICENCE_ID: Final = re.compile(r"lic-[0-9A-Za-z.+_-]{1,100}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelYears(_Model):
    """The model years of the vehicles the licence covers, both included."""

    first: int = Field(ge=1900, le=2200)
    last: int = Field(ge=1900, le=2200)

    @model_validator(mode="after")
    def _ordered(self) -> ModelYears:
        if self.last < self.first:
            raise ValueError(f"model years {self.first}-{self.last} run backwards")
        return self

    def __contains__(self, year: object) -> bool:
        return isinstance(year, int) and self.first <= year <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


class Licensee(_Model):
    """Who may use the model."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    country: Country | None = None
    """Where the licensee is established; unknown, each territory's decision takes it to
    receive the model in that territory."""
    linked_to: tuple[Country, ...] = ()


class ReleaseRef(_Model):
    """The release a licence is for."""

    version: str
    manifest_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    run: str


class Issuer(_Model):
    """Who granted the licence: the coordinator that released the model."""

    id: str
    entity: str
    key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """Fingerprint of the key that signs it."""


class LicenceTerms(_Model):
    """What a licence allows."""

    format: Literal["onshore.licence/1"] = LICENCE_FORMAT
    id: Annotated[str, Field(pattern=_LICENCE_ID.pattern)]
    release: ReleaseRef
    licensee: Licensee
    territories: tuple[Country, ...] = Field(min_length=1)
    """Where vehicles carrying the model may be sold (ISO 3166-1 codes, or ``EU``)."""
    purposes: tuple[Name, ...] = Field(min_length=1)
    """What the model may be used for, e.g. ``adas``; a load names one of them."""
    model_years: ModelYears
    issued: date
    expires: date
    """The last day the licence is valid."""
    issuer: Issuer
    consents: tuple[dict[str, Any], ...] = ()
    """Each contributing site's signed consent (:mod:`onshore.release.consent`): its own gate's
    decision on these terms (all but this field), for every territory and purpose."""

    def asked(self) -> dict[str, Any]:
        """The terms the sites are asked to consent to: all of them but the consents."""
        return self.model_dump(mode="json", exclude={"consents"})

    @model_validator(mode="after")
    def _dates(self) -> LicenceTerms:
        if self.expires < self.issued:
            raise ValueError(f"expires {self.expires} is before issued {self.issued}")
        return self


@dataclass(frozen=True, slots=True)
class Licence:
    """A licence as read from its file: its terms and the signature over them."""

    terms: LicenceTerms
    signature: Mapping[str, Any]
    message: bytes
    """What the signature covers (see :data:`LICENCE_CONTEXT`)."""
    path: Path | None = None

    @property
    def id(self) -> str:
        return self.terms.id

    @property
    def sha256(self) -> str:
        """SHA-256 of the terms' canonical JSON: what the ledger records of it."""
        return self.message[len(LICENCE_CONTEXT) :].hex()

    def signed_by(self, public_key: str) -> bool:
        """Whether the signature is by the raw Ed25519 key ``public_key`` (hex)."""
        sig = self.signature.get("signature")
        return (
            self.signature.get("algorithm") == "ed25519"
            and isinstance(sig, str)
            and signature_valid(public_key, sig, self.message)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "licence": self.terms.model_dump(mode="json"),
            "signature": dict(self.signature),
        }


def _problem(exc: ValidationError, prefix: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{prefix}{where}: {message}" if where else f"{prefix}{message}"


def read_licence(source: Path | bytes) -> Licence:
    """Read a licence file (or its bytes). Raises :class:`LicenceInvalid` naming the file and
    field that is not a licence's; the signature is checked by :meth:`Licence.signed_by`."""
    where = str(source) if isinstance(source, Path) else "the licence"
    try:
        raw = orjson.loads(source.read_bytes() if isinstance(source, Path) else source)
    except FileNotFoundError:
        raise LicenceInvalid(
            f"no licence at {where}", hint="give the file 'onshore license grant' printed"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise LicenceInvalid(f"{where} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"licence", "signature"}:
        raise LicenceInvalid(f"{where}: a licence file holds exactly licence and signature")
    terms, signature = raw["licence"], raw["signature"]
    if not isinstance(terms, dict) or not isinstance(signature, dict):
        raise LicenceInvalid(f"{where}: licence and signature must be objects")
    try:
        parsed = LicenceTerms.model_validate(terms)
        message = signed_digest(LICENCE_CONTEXT, canonical_json(terms).encode())
    except ValidationError as exc:
        raise LicenceInvalid(_problem(exc, f"{where}: licence.")) from None
    except OnshoreError as exc:
        raise LicenceInvalid(f"{where}: {exc.message}") from None
    return Licence(parsed, signature, message, source if isinstance(source, Path) else None)


def parse_model_years(text: str) -> ModelYears:
    """``2026-2028`` or ``2027`` as :class:`ModelYears`; raises :class:`ConfigError`."""
    match = re.fullmatch(r"\s*(\d{4})\s*(?:-\s*(\d{4})\s*)?", text)
    if match is None:
        raise ConfigError(
            f"--model-years {text!r} is not a year or a range", hint="e.g. 2026-2028 or 2027"
        )
    first = int(match.group(1))
    try:
        return ModelYears(first=first, last=int(match.group(2) or first))
    except ValidationError as exc:
        raise ConfigError(_problem(exc, "--model-years: ")) from None


_OPTIONS: Final = {
    ("territories",): "--territories",
    ("purposes",): "--purposes",
    ("licensee", "name"): "--licensee",
    ("licensee", "country"): "--licensee-country",
    ("licensee", "linked_to"): "--licensee-linked-to",
    ("model_years",): "--model-years",
    ("expires",): "--expires",
}
"""The ``license grant`` option each field of the terms comes from, for error messages."""


@dataclass(slots=True)
class TerritoryDecision:
    """Whether a licence may cover one territory: each site's gate decision for each purpose,
    and the software restrictions that forbid it there."""

    territory: str
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """``{"site", "origin", "purpose", "decision"}``, the decision as the gate records it."""
    prohibited: list[dict[str, Any]] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.prohibited and all(d["decision"]["allowed"] for d in self.decisions)

    @property
    def reasons(self) -> list[str]:
        """Why it is allowed or not: each prohibition, then each denial's first reason."""
        out = [p["reason"] for p in self.prohibited]
        for d in self.decisions:
            if not d["decision"]["allowed"]:
                out.append(f"{d['site']} ({d['purpose']}): {d['decision']['reasons'][0]}")
        if not out:
            out.append(
                f"Allowed: every site's rulebook allows the model to {self.territory} "
                "and no software restriction forbids it there."
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "territory": self.territory,
            "allowed": self.allowed,
            "reasons": self.reasons,
            "decisions": self.decisions,
            "prohibited": self.prohibited,
        }


Ask = Callable[[str, dict[str, Any], int], dict[str, Any]]
"""``ask(site, terms, subjects)``: the site's signed consent statement to ``terms``."""


def _asker(project: Project) -> Ask:
    """How a site is asked for its consent: its service, from the coordinator's folder; in a
    lab project, its gate in this process (one operator holds every site there)."""
    from onshore.release.consent import decide

    if project.party is None:

        def local(site_id: str, terms: dict[str, Any], subjects: int) -> dict[str, Any]:
            from onshore.gate.site import OpenSite

            with OpenSite.open(project, site_id) as site:
                return decide(site, {"licence": terms, "subjects": subjects})

        return local

    from onshore.parties.own import peer_client

    def remote(site_id: str, terms: dict[str, Any], subjects: int) -> dict[str, Any]:
        with peer_client(project, site_id) as client:
            return client.post(
                "licence.consent",
                "/v1/licences/consent",
                {"licence": terms, "subjects": subjects},
            ).body

    return remote


def _consent_decisions(
    project: Project, site_id: str, consent: dict[str, Any] | None, why: str | None, digest: str
) -> tuple[dict[tuple[str, str], dict[str, Any]], str | None]:
    """The decisions a consent states, by (territory, purpose), once its signature is checked
    against the site's key; or why it cannot be used."""
    from onshore.release.consent import consent_problem

    if consent is None:
        return {}, why
    key = _site_key(project, site_id)
    problem = (
        "its ledger key is not on file"
        if key is None
        else consent_problem(consent, key, site=site_id, terms_sha256=digest)
    )
    if problem is not None:
        return {}, f"its answer is not a valid consent: {problem}"
    decided = {}
    for d in consent["statement"].get("decisions") or ():
        decided[(str(d.get("territory")), str(d.get("purpose")))] = {
            "allowed": bool(d.get("allowed")),
            "reasons": [str(d.get("reason"))],
            "approval": d.get("approval"),
            "mechanisms": list(d.get("mechanisms") or ()),
            "rulebook_versions": d.get("rulebook_versions"),
            "consent": consent["statement"].get("entry"),
        }
    return decided, None


def _site_key(project: Project, site_id: str) -> Any:
    """A site's ledger public key: its identity on file, or its keystore in a lab project."""
    if project.party is not None:
        from onshore.parties.identity import load_peers

        peer = load_peers(project).get(site_id)
        return None if peer is None else peer.key
    try:
        return load_keystore(project.keystore_path(project.site(site_id))).public_key
    except OnshoreError:
        return None


def grant_licence(
    project: Project,
    version: str,
    *,
    licensee: str,
    territories: Sequence[str],
    purposes: Sequence[str],
    model_years: ModelYears,
    expires: date,
    licensee_country: str | None = None,
    licensee_linked_to: Sequence[str] = (),
    on: date | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Grant a licence to release ``version`` (see the module's description): decide each
    territory, and when every one is allowed, sign the licence, write it under ``licences/``
    and record the grant. Returns what ``onshore license grant --json`` prints (``licence`` is
    the file's path).

    Raises :class:`ReleaseNotFound`, :class:`BundleInvalid` for a release that does not
    verify, :class:`ConfigError` for terms that are not valid (naming the option),
    :class:`LicenceDenied` (recorded as ``licence_refused``) when a territory is refused.
    """
    today = on or datetime.now(UTC).date()
    path = find_bundle(project, version)
    opened = open_release(path, project=project)
    opened.report.raise_for_problems()
    bundle = opened.bundle
    assert bundle is not None
    coord = project.settings.coordinator
    keys = load_keystore(project.keystore_path(coord))
    if public_key_hex(keys.public_key) != bundle.signer.public_key:
        raise KeystoreError(
            f"the coordinator's key is not the key that signed release {version}",
            hint="only the releaser can license a release; restore the coordinator's keystore",
        )
    if expires <= today:
        raise ConfigError(
            f"--expires {expires} is not after today ({today})", hint="give a later date"
        )
    try:
        terms = LicenceTerms(
            id=f"lic-{version}-{today:%Y%m%d}-{secrets.token_hex(3)}",
            release=ReleaseRef(
                version=version, manifest_sha256=bundle.manifest_sha256, run=bundle.run
            ),
            licensee=Licensee(
                name=licensee, country=licensee_country, linked_to=tuple(licensee_linked_to)
            ),
            territories=tuple(dict.fromkeys(territories)),
            purposes=tuple(dict.fromkeys(purposes)),
            model_years=model_years,
            issued=today,
            expires=expires,
            issuer=Issuer(id=coord.id, entity=coord.entity, key=bundle.signer.key),
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(str(p) for p in error["loc"])
        option = next((o for k, o in _OPTIONS.items() if loc[: len(k)] == k), "the licence")
        shown = repr(error.get("input"))
        raise ConfigError(
            f"{option}: {error['msg'].removeprefix('Value error, ')} (got {shown[:60]})",
            hint="territories are ISO 3166-1 codes or EU; purposes are lower-case names "
            "such as adas",
        ) from None
    decisions, consents = decide_territories(project, bundle, terms, opened, today)
    terms = terms.model_copy(update={"consents": tuple(consents)})
    record = {
        "licence": terms.model_dump(mode="json"),
        "territories": [d.as_dict() for d in decisions],
    }
    refused = [d for d in decisions if not d.allowed]
    with coordinator_ledger(project, keys) as ledger:
        if refused:
            ledger.append(LICENCE_REFUSED, record)
            first = refused[0]
            others = [d.territory for d in decisions if d.allowed]
            fix = (
                "no approval can change what the law forbids: narrow --model-years or leave "
                "the territory out"
                if first.prohibited
                else "put an approval on file at the site that covers the licensee, the "
                "purpose and model_parameters (onshore approvals add)"
            )
            raise LicenceDenied(
                f"no licence for {licensee}: {first.territory} is refused: {first.reasons[0]}",
                hint=f"{fix}; refused: {', '.join(d.territory for d in refused)}"
                + (f"; allowed alone: {', '.join(others)}" if others else ""),
                decisions=tuple(refused),
            )
        body = terms.model_dump(mode="json")
        message = signed_digest(LICENCE_CONTEXT, canonical_json(body).encode())
        signature = {
            "algorithm": "ed25519",
            "key": bundle.signer.key,
            "signature": keys.sign(message).hex(),
        }
        licence = Licence(terms, signature, message)
        target = project.root / LICENCES_DIR / f"{terms.id}.json"
        write_json(target, licence.as_dict())
        try:
            entry = ledger.append(LICENCE_GRANTED, {**record, "sha256": licence.sha256})
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    say(f"licence {terms.id} granted to {licensee}: {target}")
    return {
        "licence": str(target),
        "id": terms.id,
        "terms": body,
        "sha256": licence.sha256,
        "territories": [d.as_dict() for d in decisions],
        "ledger": {"site": coord.id, "seq": entry.seq, "hash": entry.hash},
    }


def decide_territories(
    project: Project,
    bundle: Bundle,
    terms: LicenceTerms,
    opened: OpenedRelease,
    today: date,
    *,
    ask: Ask | None = None,
) -> tuple[list[TerritoryDecision], list[dict[str, Any]]]:
    """Each territory of ``terms`` decided: by the gate of every site whose data trained the
    model, each asked for its signed consent (``ask``, default: its service), for every
    purpose; and by the software restrictions for the last model year. Returns the decisions
    and the consents received."""
    from onshore.release.consent import terms_digest

    ask = ask or _asker(project)
    books = project_rulebooks(project)
    card = bundle.card
    makers = parties(card)
    sites = [s["id"] for s in card.get("sites", []) if isinstance(s, Mapping)]
    contributions = opened.lineage.sites if opened.lineage is not None else {}
    asked = terms.asked()
    digest = terms_digest(asked)
    consents: list[dict[str, Any]] = []
    by_site: dict[str, tuple[dict[tuple[str, str], dict[str, Any]], str | None]] = {}
    for site_id in sites:
        contribution = contributions.get(site_id)
        consent, why = None, None
        try:
            consent = ask(site_id, asked, contribution.subjects if contribution else 0)
        except OnshoreError as exc:
            why = f"{site_id} was not asked: {exc.message}"
        by_site[site_id] = _consent_decisions(project, site_id, consent, why, digest)
        if consent is not None and by_site[site_id][1] is None:
            consents.append(consent)
    out = []
    for territory in terms.territories:
        decision = TerritoryDecision(territory)
        for hit in prohibitions(
            books,
            makers,
            territory=territory,
            model_year=terms.model_years.last,
            software=str(card.get("software", SOFTWARE)),
            on=today,
        ):
            reason = (
                f"{hit.reason} Licence model years up to {hit.from_model_year - 1} for "
                f"{territory} at most."
            )
            decision.prohibited.append({**hit.as_dict(), "reason": reason})
        for site_id in sites:
            decided, why = by_site[site_id]
            for purpose in terms.purposes:
                found = decided.get((territory, purpose))
                if found is None:
                    found = {
                        "allowed": False,
                        "reasons": [f"Denied by default: {why or f'{site_id} did not decide it'}."],
                    }
                decision.decisions.append(
                    {
                        "site": site_id,
                        "origin": _origin(project, site_id),
                        "purpose": purpose,
                        "decision": found,
                    }
                )
        out.append(decision)
    return out, consents


def _origin(project: Project, site_id: str) -> str | None:
    from onshore.parties.identity import site_facts

    try:
        return site_facts(project, site_id).jurisdiction
    except OnshoreError:
        return None


def revocation(ledger: Ledger, licence_id: str) -> dict[str, Any] | None:
    """The coordinator's record of revoking ``licence_id`` (with its entry's seq), or None."""
    for entry in ledger.entries(kind=LICENCE_REVOKED):
        data = entry.data
        if data.get("id") == licence_id:
            return {**data, "seq": entry.seq, "hash": entry.hash}
    return None


def find_licence(project: Project, ref: str) -> Path:
    """A licence file by path or by id (``lic-...``) under ``licences/``; raises
    :class:`LicenceInvalid` naming where it looked."""
    path = Path(ref)
    if path.is_file():
        return path
    if _LICENCE_ID.fullmatch(ref):
        found = project.root / LICENCES_DIR / f"{ref}.json"
        if found.is_file():
            return found
    raise LicenceInvalid(
        f"no licence {ref!r} (neither a file nor an id under {project.root / LICENCES_DIR})",
        hint="list them with 'onshore license list'",
    )


def revoke_licence(project: Project, ref: str, reason: str) -> dict[str, Any]:
    """Revoke a licence: a ``licence_revoked`` entry in the coordinator's ledger, which every
    load that can reach the project checks. Revoking twice is refused."""
    if not reason.strip():
        raise ConfigError("--reason is empty", hint="say why the licence is revoked")
    licence = read_licence(find_licence(project, ref))
    coord = project.settings.coordinator
    keys = load_keystore(project.keystore_path(coord))
    if not licence.signed_by(public_key_hex(keys.public_key)):
        raise LicenceInvalid(
            f"{licence.path}: not signed by the coordinator's key; it is not a licence this "
            "project granted"
        )
    with coordinator_ledger(project, keys) as ledger:
        earlier = revocation(ledger, licence.id)
        if earlier is not None:
            raise ConfigError(
                f"licence {licence.id} was already revoked (entry {earlier['seq']})",
                hint="a revocation stands; nothing to do",
            )
        entry = ledger.append(
            LICENCE_REVOKED,
            {
                "id": licence.id,
                "sha256": licence.sha256,
                "release": licence.terms.release.version,
                "licensee": licence.terms.licensee.name,
                "reason": reason.strip(),
            },
        )
    return {
        "id": licence.id,
        "revoked": True,
        "reason": reason.strip(),
        "ledger": {"site": coord.id, "seq": entry.seq, "hash": entry.hash},
    }


def licence_status(licence: Licence, revoked: dict[str, Any] | None, on: date) -> str:
    """``valid``, ``revoked``, ``expired`` or ``not_yet_valid`` on day ``on``."""
    if revoked is not None:
        return "revoked"
    if on > licence.terms.expires:
        return "expired"
    if on < licence.terms.issued:
        return "not_yet_valid"
    return "valid"


def list_licences(project: Project, *, on: date | None = None) -> list[dict[str, Any]]:
    """Every licence under ``licences/``, with its status; a file that is not a valid licence
    of this project is listed with why."""
    today = on or datetime.now(UTC).date()
    folder = project.root / LICENCES_DIR
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return []
    rows: list[dict[str, Any]] = []
    with coordinator_ledger(project) as ledger:
        pinned = ledger.pinned_key()
        public = "" if pinned is None else public_key_hex(pinned)
        for path in files:
            try:
                licence = read_licence(path)
            except LicenceInvalid as exc:
                rows.append({"licence": str(path), "status": "invalid", "reason": exc.message})
                continue
            if not licence.signed_by(public):
                rows.append(
                    {
                        "licence": str(path),
                        "id": licence.id,
                        "status": "invalid",
                        "reason": "not signed by the coordinator's key",
                    }
                )
                continue
            revoked = revocation(ledger, licence.id)
            terms = licence.terms
            rows.append(
                {
                    "licence": str(path),
                    "id": licence.id,
                    "status": licence_status(licence, revoked, today),
                    "release": terms.release.version,
                    "licensee": terms.licensee.name,
                    "territories": list(terms.territories),
                    "purposes": list(terms.purposes),
                    "model_years": str(terms.model_years),
                    "issued": terms.issued.isoformat(),
                    "expires": terms.expires.isoformat(),
                    "revoked": revoked,
                }
            )
    return rows


def bundle_for(project: Project, licence: Licence) -> Path:
    """The bundle of the release ``licence`` names, in ``project``."""
    return find_bundle(project, licence.terms.release.version)
