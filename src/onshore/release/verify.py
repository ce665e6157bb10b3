"""``release verify``: whether a bundle is the release its coordinator made, whole.

Checked, each failure a problem in the report (``valid`` only when there is none):

- the bundle's shape, its signature over the manifest, and every file's hash against the
  manifest (:func:`onshore.release.bundle.bundle_problems`): weights, card or lineage changed
  after signing are caught here;
- the weights are exactly the tensors of the model the card declares;
- who signed it. A bundle names its signer's key, so a forger can re-sign what he altered; the
  key must therefore be the coordinator's, as the coordinator's ledger pins it (when the project
  that made the release is reachable: the one given, or the one the manifest records), or the
  key a user trusts (``key``, e.g. the coordinator's published ``ed25519.pub``). Neither at
  hand is a problem, not a pass;
- with the project: the coordinator's ledger verifies and records this release (by manifest
  hash) and the run finishing with these weights and this lineage; each lineage link holds in
  its site's ledger (:mod:`onshore.release.lineage`). Ledgers that cannot be reached are notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.errors import BundleInvalid, OnshoreError
from onshore.ledger import verify
from onshore.ledger.entry import fingerprint
from onshore.release.bundle import Bundle, bundle_problems, read_bundle
from onshore.release.card import parties
from onshore.release.lineage import LineageReport, check_lineage, parse_links
from onshore.release.records import RELEASE_CREATED, reachable_ledger
from onshore.settings import Project, load_project
from onshore.store.objects import sha256

__all__ = ["BundleReport", "OpenedRelease", "open_release", "read_public_key", "verify_bundle"]


@dataclass(slots=True)
class BundleReport:
    """What verifying a bundle checked and found."""

    bundle: str
    version: str | None = None
    run: str | None = None
    manifest_sha256: str | None = None
    signer: dict[str, str] | None = None
    signer_trusted_by: str | None = None
    """What vouched for the signer's key: the coordinator's ledger, or a key file."""
    recorded: dict[str, Any] | None = None
    """The coordinator's ``release_created`` entry for it (site, seq, hash), when checked."""
    project: str | None = None
    """The project checked against, if one was reachable."""
    lineage: dict[str, Any] | None = None
    parties: list[dict[str, Any]] = field(default_factory=list)
    """Who made the model, as its card names them (the coordinator and each site's operator)."""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The report as ``onshore release verify --json`` prints it."""
        return {
            "valid": self.valid,
            "bundle": self.bundle,
            "version": self.version,
            "run": self.run,
            "manifest_sha256": self.manifest_sha256,
            "signer": self.signer,
            "signer_trusted_by": self.signer_trusted_by,
            "recorded": self.recorded,
            "project": self.project,
            "lineage": self.lineage,
            "parties": list(self.parties),
            "problems": list(self.problems),
            "notes": list(self.notes),
        }

    def raise_for_problems(self) -> None:
        """Raise :class:`BundleInvalid` naming the first problem, if there is any."""
        if self.problems:
            raise BundleInvalid(
                f"{self.bundle}: {self.problems[0]}",
                hint=f"{len(self.problems)} problem(s) in all; run 'onshore release verify "
                f"{self.bundle}' to list them",
                problems=tuple(self.problems),
            )


@dataclass(frozen=True, slots=True)
class OpenedRelease:
    """A bundle read and checked, with the project it was checked against."""

    bundle: Bundle | None
    report: BundleReport
    project: Project | None
    lineage: LineageReport | None = None
    """The lineage as its sites' ledgers tell it, when they were checked."""


def read_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (a keystore's ``ed25519.pub``); raises
    :class:`BundleInvalid` naming the file."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleInvalid(
            f"{path}: not a readable PEM public key: {exc}",
            hint="give the coordinator's ed25519.pub",
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleInvalid(f"{path}: not an Ed25519 public key")
    return key


def _project(bundle: Bundle, given: Project | None, report: BundleReport) -> Project | None:
    if given is not None:
        return given
    root = bundle.project.get("root")
    if not isinstance(root, str):
        report.notes.append("the manifest records no project")
        return None
    try:
        found = load_project(Path(root))
    except OnshoreError as exc:
        report.notes.append(f"the project that made the release is not reachable: {exc}")
        return None
    if found.settings.name != bundle.project.get("name"):
        report.notes.append(
            f"{root} holds project {found.settings.name!r}, not {bundle.project.get('name')!r}"
        )
        return None
    return found


def open_release(
    path: Path,
    *,
    project: Project | None = None,
    key: Ed25519PublicKey | None = None,
    lineage: bool = True,
) -> OpenedRelease:
    """Read ``path`` and check it (see the module's description); ``lineage=False`` leaves out
    the sites' ledgers (loading a model checks the release, not its history). Never raises for
    what it finds: every problem is in the report."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    from onshore.forecast.nets import ModelSpec, check_weights

    report = BundleReport(bundle=str(path))
    try:
        bundle = read_bundle(path)
    except BundleInvalid as exc:
        report.problems.append(exc.message)
        return OpenedRelease(None, report, None)
    report.version, report.run = bundle.version, bundle.run
    report.manifest_sha256 = bundle.manifest_sha256
    report.signer = bundle.signer.as_dict()
    report.problems.extend(bundle_problems(bundle))
    card: dict[str, Any] = {}
    links: list[dict[str, Any]] = []
    coordinator_link: dict[str, Any] = {}
    try:
        card = bundle.card
        report.parties = [p.as_dict() for p in parties(card)]
        architecture = card.get("architecture") or {}
        spec = ModelSpec(str(architecture.get("name")), dict(architecture.get("config") or {}))
        check_weights(spec, load_tensors(bundle.weights))
    except (OnshoreError, SafetensorError) as exc:
        report.problems.append(f"{exc}")
    if card and (card.get("version") != bundle.version or card.get("run") != bundle.run):
        report.problems.append("card.json names another version or run than the manifest")
    try:
        doc = bundle.lineage
        links = parse_links(doc.get("updates"), "lineage.json updates")
        coordinator_link = dict(doc.get("coordinator") or {})
        if doc.get("run") != bundle.run:
            report.problems.append("lineage.json names another run than the manifest")
    except (BundleInvalid, ValueError) as exc:
        report.problems.append(str(exc))
    refuted = False
    checked: LineageReport | None = None
    found = _project(bundle, project, report)
    if found is not None:
        report.project = str(found.root)
        refuted, checked = _check_against(found, bundle, report, links, coordinator_link, lineage)
    if key is not None:
        if fingerprint(key) == bundle.signer.key:
            report.signer_trusted_by = report.signer_trusted_by or "the key given"
        else:
            refuted = True
            report.problems.append(
                f"signed by key {bundle.signer.key[:16]}..., not the key given "
                f"({fingerprint(key)[:16]}...): not the releaser's signature"
            )
    if report.signer_trusted_by is None and not refuted:
        report.problems.append(
            "nothing vouches for the signer's key: the project that made the release is not "
            "reachable and no trusted key was given (pass --key COORDINATOR.pub or --project)"
        )
    return OpenedRelease(bundle, report, found, checked)


def _check_against(
    project: Project,
    bundle: Bundle,
    report: BundleReport,
    links: list[dict[str, Any]],
    coordinator_link: dict[str, Any],
    lineage: bool,
) -> tuple[bool, LineageReport | None]:
    """Check ``bundle`` against ``project``'s ledgers; returns whether the coordinator's
    ledger pins another key than the bundle's signer, and the lineage checked."""
    coord = project.settings.coordinator
    refuted = False
    with reachable_ledger(project, coord) as (ledger, why):
        if ledger is None:
            report.notes.append(f"the coordinator's ledger was not checked: {why}")
            return False, None
        pinned = ledger.pinned_fingerprint()
        if pinned != bundle.signer.key:
            refuted = True
            report.problems.append(
                f"signed by key {bundle.signer.key[:16]}..., not the coordinator's "
                f"({(pinned or 'none')[:16]}...) that {coord.id}'s ledger pins: not the "
                "releaser's signature"
            )
        else:
            report.signer_trusted_by = f"the ledger of {coord.id} in {project.root}"
        checked = verify(ledger, check_hashes=False)
        if not checked.ok:
            report.problems.append(
                f"the coordinator's ledger does not verify: {checked.problems[0].reason}"
            )
        created = [
            e
            for e in ledger.entries(kind=RELEASE_CREATED)
            if e.data.get("manifest_sha256") == bundle.manifest_sha256
        ]
        if not created:
            report.problems.append(
                f"the coordinator's ledger records no release with manifest "
                f"{bundle.manifest_sha256[:16]}...: not a release it made"
            )
        else:
            entry = created[-1]
            report.recorded = {"site": entry.site, "seq": entry.seq, "hash": entry.hash}
        seq = coordinator_link.get("seq")
        finished = ledger.entry(seq) if isinstance(seq, int) else None
        if finished is None or finished.hash != coordinator_link.get("hash"):
            report.problems.append(
                f"lineage.json: coordinator entry {seq} is not in {coord.id}'s ledger with "
                "that hash"
            )
        else:
            data = finished.data
            if data.get("run") != bundle.run or data.get("lineage") != links:
                report.problems.append(
                    "lineage.json: the updates are not the ones the coordinator recorded for "
                    f"run {bundle.run}"
                )
            if data.get("global_sha256") != sha256(bundle.weights):
                report.problems.append(
                    "weights.safetensors: not the global model the coordinator recorded"
                )
    if lineage:
        try:
            checked_lineage = check_lineage(project, bundle.run, links)
        except OnshoreError as exc:
            report.notes.append(f"the lineage was not checked: {exc}")
            return refuted, None
        report.lineage = checked_lineage.as_dict()
        report.problems.extend(checked_lineage.problems)
        report.notes.extend(checked_lineage.notes)
        return refuted, checked_lineage
    return refuted, None


def verify_bundle(
    path: Path, *, project: Project | None = None, key: Ed25519PublicKey | None = None
) -> BundleReport:
    """Verify the bundle at ``path``: every check of the module's description. ``project``:
    check against this project (default: the one the manifest records, if reachable);
    ``key``: a public key trusted to be the releaser's."""
    return open_release(path, project=project, key=key).report
