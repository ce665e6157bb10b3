"""Loading a released model under a licence: every check first, the model only after.

:func:`load_model` (exported as ``onshore.load_model``) reads the bundle and the licence and
refuses, with an error that says why and what to do, when:

- the bundle does not hold (:class:`BundleInvalid`: signature, weights, card or lineage changed
  after signing; or nothing vouches for its signer, see :mod:`onshore.release.verify`);
- the licence is not one (:class:`LicenceInvalid`: altered, malformed, or not signed by the key
  that signed the release);
- the licence does not cover the use (:class:`LicenceRefused`): another release, expired or not
  yet valid, revoked, another territory, purpose or model year;
- the law forbids the use whatever the licence says (:class:`UseProhibited`): a software
  restriction of the rulebooks (the US rule on automated-driving software from persons linked
  to China or Russia, from model year 2027) applies to a party the model card names.

The decision is a record (:class:`LicenceCheck`: every check, passed or not, and the rules with
their rulebook versions), carried by the loaded model and by each refusal.

Revocation is in the coordinator's ledger. When the project that made the release can be
reached (``project=``, or the project the bundle records), the ledger is read and a revoked
licence refused. When it cannot, the load is refused too, unless the caller says
``offline=True``: then the revocation is not checked, the record says so, and the licence's
expiry is the only bound. Offline, nothing but ``releaser_key`` can vouch for the signer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.checks import Check
from onshore.errors import ConfigError, LicenceInvalid, LicenceRefused, UseProhibited
from onshore.ledger import verify
from onshore.release.card import SOFTWARE, parties
from onshore.release.licence import Licence, LicenceTerms, read_licence, revocation
from onshore.release.records import reachable_ledger
from onshore.release.restrictions import Prohibition, prohibitions
from onshore.release.verify import OpenedRelease, open_release
from onshore.rulebook import Rulebooks, builtin_rulebooks
from onshore.rulebook.evaluate import ISO_COUNTRIES
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project, load_project

if TYPE_CHECKING:
    from torch import Tensor

    from onshore.forecast.nets import ForecastModel

__all__ = [
    "DEFAULT_PURPOSE",
    "Check",
    "LicenceCheck",
    "LicensedModel",
    "check_use",
    "licence_report",
    "load_model",
]

DEFAULT_PURPOSE: Final = "adas"
"""The purpose a load is for unless it names another: driver assistance and automated driving
in series vehicles. Licences name purposes freely (``adas``, ``research``, ``validation``...);
a load's purpose must be one its licence lists."""


@dataclass(frozen=True, slots=True)
class LicenceCheck:
    """What was decided about one use of a released model, and why."""

    licence: str
    release: str
    territory: str
    purpose: str
    model_year: int
    date: date
    checks: tuple[Check, ...]
    prohibited: tuple[Prohibition, ...] = ()
    rulebook_versions: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.prohibited and all(c.held for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """The verdict's reasons: what the law forbids, then each licence check that failed;
        one sentence saying it is allowed when nothing did."""
        out = [p.reason for p in self.prohibited]
        out += [c.reason for c in self.checks if not c.held]
        if not out:
            out.append(
                f"Allowed: licence {self.licence} covers release {self.release} for "
                f"{self.purpose} in {self.territory}, model year {self.model_year}, on "
                f"{self.date}, and no rule forbids it."
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "licence": self.licence,
            "release": self.release,
            "territory": self.territory,
            "purpose": self.purpose,
            "model_year": self.model_year,
            "date": self.date.isoformat(),
            "reasons": self.reasons,
            "checks": [c.as_dict() for c in self.checks],
            "prohibited": [p.as_dict() for p in self.prohibited],
            "rulebook_versions": dict(self.rulebook_versions),
            "notes": list(self.notes),
        }

    def raise_if_refused(self) -> None:
        """Raise :class:`UseProhibited` when the law forbids the use, else
        :class:`LicenceRefused` when the licence does not cover it."""
        if self.prohibited:
            failed = [c.reason for c in self.checks if not c.held]
            raise UseProhibited(
                self.prohibited[0].reason,
                hint="no licence can allow it"
                + (f"; the licence does not cover it either: {failed[0]}" if failed else ""),
                check=self,
            )
        failed_checks = [c for c in self.checks if not c.held]
        if failed_checks:
            first = failed_checks[0]
            raise LicenceRefused(first.reason, hint=_HINTS.get(first.check), check=self)


_HINTS: Final = {
    "release": "load the bundle the licence names, or get a licence for this release",
    "validity": "ask the releaser for a licence valid today",
    "revocation": "the releaser revoked it; ask for a new licence",
    "revocation_unchecked": "give project= (the releaser's project), or pass offline=True to "
    "accept a licence whose revocation cannot be checked",
    "territory": "ask the releaser for a licence that covers this territory",
    "purpose": "load for a purpose the licence lists (purpose=...), or get one for this purpose",
    "model_year": "ask the releaser for a licence that covers this model year",
}


def _covers(rulebooks: Rulebooks, licensed: tuple[str, ...], territory: str) -> bool:
    """Whether a licence for ``licensed`` covers ``territory``: named, or within a licensed
    jurisdiction's territory as its rulebook declares it (``EU`` covers ``DE``)."""
    if territory in licensed:
        return True
    return any(
        book.jurisdiction in licensed and territory in book.territory for book in rulebooks.values()
    )


def _checks(
    terms: LicenceTerms,
    opened: OpenedRelease,
    rulebooks: Rulebooks,
    *,
    territory: str,
    purpose: str,
    model_year: int,
    on: date,
    offline: bool,
    notes: list[str],
) -> list[Check]:
    bundle = opened.bundle
    assert bundle is not None
    out = []
    same = (
        terms.release.manifest_sha256 == bundle.manifest_sha256
        and terms.release.version == bundle.version
    )
    out.append(
        Check(
            "release",
            same,
            f"The licence is for release {terms.release.version}."
            if same
            else f"The licence is for release {terms.release.version} (manifest "
            f"{terms.release.manifest_sha256[:16]}...), not release {bundle.version} (manifest "
            f"{bundle.manifest_sha256[:16]}...).",
        )
    )
    if on > terms.expires:
        out.append(Check("validity", False, f"The licence expired on {terms.expires}."))
    elif on < terms.issued:
        out.append(Check("validity", False, f"The licence is valid only from {terms.issued}."))
    else:
        out.append(
            Check("validity", True, f"Valid from {terms.issued} to {terms.expires} inclusive.")
        )
    out.append(_revocation(terms, opened, offline, notes))
    covered = _covers(rulebooks, terms.territories, territory)
    out.append(
        Check(
            "territory",
            covered,
            f"The licence covers {territory}."
            if covered
            else f"The licence covers {', '.join(terms.territories)}, not {territory}.",
        )
    )
    listed = purpose in terms.purposes
    out.append(
        Check(
            "purpose",
            listed,
            f"The licence covers the purpose {purpose}."
            if listed
            else f"The licence covers the purposes {', '.join(terms.purposes)}, not {purpose}.",
        )
    )
    within = model_year in terms.model_years
    out.append(
        Check(
            "model_year",
            within,
            f"The licence covers model year {model_year}."
            if within
            else f"The licence covers model years {terms.model_years}, not {model_year}.",
        )
    )
    return out


def _revocation(
    terms: LicenceTerms, opened: OpenedRelease, offline: bool, notes: list[str]
) -> Check:
    project = opened.project
    why = "the project that made the release is not reachable"
    if project is not None:
        with reachable_ledger(project, project.settings.coordinator) as (ledger, missing):
            if ledger is not None:
                report = verify(ledger, check_hashes=False)
                if not report.ok:
                    return Check(
                        "revocation",
                        False,
                        "The coordinator's ledger, which records revocations, does not verify: "
                        f"{report.problems[0].reason}",
                    )
                revoked = revocation(ledger, terms.id)
                if revoked is not None:
                    return Check(
                        "revocation",
                        False,
                        f"The licence was revoked (coordinator ledger entry {revoked['seq']}): "
                        f"{revoked.get('reason')}",
                    )
                return Check("revocation", True, "Not revoked in the coordinator's ledger.")
            why = missing or why
    if offline:
        notes.append(f"Revocation not checked ({why}); accepted offline until it expires.")
        return Check("revocation", True, f"Not checked offline: {why}.")
    return Check(
        "revocation_unchecked",
        False,
        f"Whether the licence was revoked cannot be checked: {why}.",
    )


def check_use(
    bundle: Path,
    licence: Path | Licence,
    *,
    territory: str,
    model_year: int,
    purpose: str = DEFAULT_PURPOSE,
    project: Project | Path | None = None,
    releaser_key: Ed25519PublicKey | None = None,
    rulebooks: Rulebooks | None = None,
    on: date | None = None,
    offline: bool = False,
) -> tuple[LicenceCheck, OpenedRelease, Licence]:
    """Decide whether ``licence`` lets ``bundle`` be used for ``purpose`` in vehicles of
    ``model_year`` sold in ``territory`` on ``on`` (default today). Returns the decision, the
    release and the licence; raises only for what is not a release or not a licence
    (:class:`BundleInvalid`, :class:`LicenceInvalid`) or an argument that is not valid
    (:class:`ConfigError`). The law's restrictions come from ``rulebooks`` (default: the
    project's, else the built-ins)."""
    today = on or datetime.now(UTC).date()
    territory = territory.strip().upper()
    if territory not in ISO_COUNTRIES and territory not in ("EU", "XK"):
        raise ConfigError(
            f"territory {territory!r} is not an ISO 3166-1 alpha-2 country code (or EU)",
            hint="e.g. US, DE, CN",
        )
    if not 1900 <= model_year <= 2200:
        raise ConfigError(f"model_year {model_year} is not a model year")
    if isinstance(project, Path):
        project = load_project(project)
    opened = open_release(bundle, project=project, key=releaser_key, lineage=False)
    opened.report.raise_for_problems()
    release = opened.bundle
    assert release is not None
    read = licence if isinstance(licence, Licence) else read_licence(licence)
    where = read.path or "the licence"
    if read.terms.issuer.key != release.signer.key or not read.signed_by(release.signer.public_key):
        raise LicenceInvalid(
            f"{where}: not signed by the releaser ({release.signer.entity}, key "
            f"{release.signer.key[:16]}...): altered after signing, or forged",
            hint="only a licence the releaser signed, unchanged, can be used",
        )
    if rulebooks is None:
        rulebooks = (
            project_rulebooks(opened.project) if opened.project is not None else builtin_rulebooks()
        )
    notes: list[str] = list(opened.report.notes)
    checks = _checks(
        read.terms,
        opened,
        rulebooks,
        territory=territory,
        purpose=purpose,
        model_year=model_year,
        on=today,
        offline=offline,
        notes=notes,
    )
    card = release.card
    forbidden = prohibitions(
        rulebooks,
        parties(card),
        territory=territory,
        model_year=model_year,
        software=str(card.get("software", SOFTWARE)),
        on=today,
    )
    decision = LicenceCheck(
        licence=read.id,
        release=release.version,
        territory=territory,
        purpose=purpose,
        model_year=model_year,
        date=today,
        checks=tuple(checks),
        prohibited=tuple(forbidden),
        rulebook_versions={key: book.version for key, book in rulebooks.items()},
        notes=tuple(notes),
    )
    return decision, opened, read


@dataclass(frozen=True, slots=True)
class LicensedModel:
    """A released model loaded under a licence: the network, its card, and the check that
    allowed it."""

    model: ForecastModel
    card: dict[str, Any]
    licence: LicenceTerms
    check: LicenceCheck

    def predict(self, past: Tensor, objects: Tensor, mask: Tensor) -> Tensor:
        """The model's forecast, (B, future_steps, 2), without gradients."""
        import torch

        with torch.no_grad():
            out: Tensor = self.model(past, objects, mask)
        return out


def load_model(
    bundle: Path | str,
    licence: Path | str,
    *,
    territory: str,
    model_year: int,
    purpose: str = DEFAULT_PURPOSE,
    project: Project | Path | None = None,
    releaser_key: Ed25519PublicKey | None = None,
    rulebooks: Rulebooks | None = None,
    on: date | None = None,
    offline: bool = False,
) -> LicensedModel:
    """Load a released model for one use, after every check of the module's description.

    ``territory``: where the vehicles are sold (``US``, ``DE``, ``EU``...); ``model_year``:
    theirs; ``purpose``: one the licence must list. ``project``: the releaser's project, for
    revocations and the signer's key (default: the one the bundle records, if reachable);
    ``releaser_key``: the releaser's public key, trusted when the project is not at hand;
    ``offline``: accept a licence whose revocation cannot be checked.

    Raises :class:`BundleInvalid`, :class:`LicenceInvalid`, :class:`UseProhibited` or
    :class:`LicenceRefused` (each refusal carries the :class:`LicenceCheck`).
    """
    from safetensors.torch import load as load_tensors

    from onshore.forecast.nets import ModelSpec, build_model

    decision, opened, read = check_use(
        Path(bundle),
        Path(licence),
        territory=territory,
        model_year=model_year,
        purpose=purpose,
        project=project,
        releaser_key=releaser_key,
        rulebooks=rulebooks,
        on=on,
        offline=offline,
    )
    decision.raise_if_refused()
    release = opened.bundle
    assert release is not None
    card = release.card
    architecture = card["architecture"]
    model = build_model(ModelSpec(architecture["name"], dict(architecture.get("config") or {})))
    model.load_state_dict(load_tensors(release.weights))
    model.eval()
    return LicensedModel(model, card, read.terms, decision)


def licence_report(
    licence: Path,
    *,
    project: Project | None = None,
    bundle: Path | None = None,
    releaser_key: Ed25519PublicKey | None = None,
    use: tuple[str, int, str] | None = None,
    on: date | None = None,
    offline: bool = False,
) -> dict[str, Any]:
    """What ``onshore license verify`` prints: whether ``licence`` is the releaser's, unchanged,
    for a release that verifies, and its status (``valid``, ``expired``, ``not_yet_valid``,
    ``revoked``, or ``unknown`` when revocation could not be checked); with ``use``
    (territory, model year, purpose), the whole check a load would make. ``valid`` says
    whether it holds (and allows the use, when one is given). Raises
    :class:`LicenceInvalid` or :class:`BundleInvalid` for what is not a licence or a release."""
    from onshore.release.licence import licence_status
    from onshore.release.records import find_bundle

    today = on or datetime.now(UTC).date()
    read = read_licence(licence)
    if bundle is None:
        if project is None:
            raise ConfigError(
                f"{licence}: which release? give --bundle or --project",
                hint="the licence names release " + read.terms.release.version,
            )
        bundle = find_bundle(project, read.terms.release.version)
    # Without a use to judge, the licence's own first territory and model year stand in: only
    # the checks that do not depend on the use (release, validity, revocation) are reported.
    territory, model_year, purpose = use or (
        read.terms.territories[0],
        read.terms.model_years.first,
        read.terms.purposes[0],
    )
    decision, opened, _ = check_use(
        bundle,
        read,
        territory=territory,
        model_year=model_year,
        purpose=purpose,
        project=project,
        releaser_key=releaser_key,
        on=today,
        offline=offline,
    )
    by = {c.check: c for c in decision.checks}
    revoked = by.get("revocation")
    if "revocation_unchecked" in by:
        status = "unknown"
    elif revoked is not None and not revoked.held:
        status = "revoked"
    else:
        status = licence_status(read, None, today)
    held = by["release"].held and status == "valid"
    return {
        "valid": decision.allowed if use is not None else held,
        "licence": str(licence),
        "id": read.id,
        "status": status,
        "signed_by": opened.bundle.signer.as_dict() if opened.bundle is not None else None,
        "release_matches": by["release"].held,
        "terms": read.terms.model_dump(mode="json"),
        "check": decision.as_dict() if use is not None else None,
        "reasons": decision.reasons
        if use is not None
        else [c.reason for c in decision.checks if c.check in _STATUS_CHECKS],
    }


_STATUS_CHECKS: Final = frozenset({"release", "validity", "revocation", "revocation_unchecked"})
