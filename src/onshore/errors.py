"""The one error tree of onshore.

Every error a user can meet is an :class:`OnshoreError` with a stable ``code`` (part of the public
interface: scripts match on it, the CLI prints it in ``--json`` output), a message that says what
to do, and the exit code the CLI ends with. ``Transient`` errors may succeed when retried as they
are (a store or database that did not answer); ``Terminal`` ones will not until the input or the
configuration is changed. Retry code checks these markers, never message text.

    OnshoreError
    ├── ConfigError                  (terminal) onshore.toml or an option is wrong
    │   ├── ProjectNotFound          (terminal) no onshore.toml where one was looked for
    │   ├── ProjectExists            (terminal) init would overwrite a project
    │   ├── SiteNotFound             (terminal) a site id that the project does not declare
    │   ├── RulebookError            (terminal) a rulebook file is not valid: file, line, reason
    │   └── RulebookNotFound         (terminal) no rulebook by that name or for that origin
    ├── KeystoreError                (terminal) a site's keys are missing or unreadable
    ├── SimulationError              (terminal) SUMO or a network build failed
    ├── ClipError                    (terminal) one input file is not a valid clip: quarantined
    │   ├── UnreadableFile           (terminal) empty, truncated, or not the format its name says
    │   ├── SchemaError              (terminal) a channel, column or field is missing or mistyped
    │   ├── PhysicsError             (terminal) time, position or speed cannot be real
    │   ├── ResidencyError           (terminal) recorded in another region: not this site's data
    │   └── ClipConflict             (terminal) a clip id already stored with other content
    ├── DeidentifyError              (terminal) an output failed a check its profile promises
    ├── GateError                    (terminal) a gate request or an approval is not valid
    │   ├── InvalidRequest           (terminal) a transfer request field is wrong: names the field
    │   ├── InvalidApproval          (terminal) an approval the rulebooks or the registry refuse
    │   ├── ApprovalNotFound         (terminal) no approval with that id on file at the site
    │   └── TransferDenied           (terminal) the gate denied the transfer (exit code 10)
    ├── LedgerError                  (terminal) a ledger entry cannot be written or read as asked
    │   └── LedgerTampered           (terminal) a ledger fails its hashes, signatures or peers
    ├── TrainingError                (terminal) a driving model cannot be trained as asked
    │   ├── NoTrainingData           (terminal) a site has no consented samples to learn from
    │   ├── PrivacyBudgetSpent       (terminal) DP-SGD would spend more than the site's budget
    │   └── InvalidWeights           (terminal) tensors that are not the declared model's
    ├── FileSystemError              (terminal) a local file or folder cannot be read or written
    ├── StoreError                   (transient) the site's object store failed
    ├── CatalogueError               (transient) the site's catalogue database failed
    ├── ComputeError                 (transient) the site's Ray cluster failed or a worker was lost
    ├── ReleaseError                 (terminal) a model release cannot be made or found as asked
    │   ├── NotReleasable            (terminal) a run that is not a finished, recorded federation
    │   ├── ReleaseExists            (terminal) that version is already released
    │   ├── ReleaseNotFound          (terminal) no release of that version in the project
    │   └── BundleInvalid            (terminal) signature, weights, card or lineage do not hold
    ├── LicenceError                 (terminal) a licence cannot be granted, read or used as asked
    │   ├── LicenceInvalid           (terminal) forged, altered, malformed, or not the releaser's
    │   ├── LicenceDenied            (terminal) a grant the gate or the law refuses, by territory
    │   ├── LicenceRefused           (terminal) the licence does not cover this use (exit 16)
    │   └── UseProhibited            (terminal) the law forbids this use whatever the licence (17)
    ├── PartyError                   (terminal) a party's identity, peers or messages are not right
    │   ├── NotAParty                (terminal) the command needs a party's folder, not a lab one
    │   ├── PeerNotFound             (terminal) no identity on file for that party
    │   ├── IdentityInvalid          (terminal) an identity file is malformed or not self-signed
    │   ├── CertificateError         (terminal) a TLS certificate is missing, expired or for others
    │   └── RequestRefused           (terminal) a party refused a message, and says why (exit 20)
    ├── RightsError                  (terminal) a driver's request cannot be served as asked
    │   ├── InvalidVin               (terminal) not a VIN: 17 letters and digits, no I, O or Q
    │   ├── UnknownVehicle           (terminal) the site holds nothing of that vehicle
    │   └── ErasureBlocked           (terminal) a transfer of the vehicle's data is in flight
    ├── PeerUnreachable              (transient) a party's service did not answer (exit 19)
    └── DemoError                    (terminal) a step of ``onshore demo`` failed: which and why
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from onshore.gate.engine import Decision
    from onshore.release.licence import TerritoryDecision
    from onshore.release.load import LicenceCheck
    from onshore.rulebook.problems import Problem

__all__ = [
    "ERRORS",
    "ApprovalNotFound",
    "BundleInvalid",
    "CatalogueError",
    "CertificateError",
    "ClipConflict",
    "ClipError",
    "ComputeError",
    "ConfigError",
    "DeidentifyError",
    "DemoError",
    "ErasureBlocked",
    "FileSystemError",
    "GateError",
    "IdentityInvalid",
    "InvalidApproval",
    "InvalidRequest",
    "InvalidVin",
    "InvalidWeights",
    "KeystoreError",
    "LedgerError",
    "LedgerTampered",
    "LicenceDenied",
    "LicenceError",
    "LicenceInvalid",
    "LicenceRefused",
    "NoTrainingData",
    "NotAParty",
    "NotReleasable",
    "OnshoreError",
    "PartyError",
    "PeerNotFound",
    "PeerUnreachable",
    "PhysicsError",
    "PrivacyBudgetSpent",
    "ProjectExists",
    "ProjectNotFound",
    "ReleaseError",
    "ReleaseExists",
    "ReleaseNotFound",
    "RequestRefused",
    "ResidencyError",
    "RightsError",
    "RulebookError",
    "RulebookNotFound",
    "SchemaError",
    "SimulationError",
    "SiteNotFound",
    "StoreError",
    "Terminal",
    "TrainingError",
    "TransferDenied",
    "Transient",
    "UnknownVehicle",
    "UnreadableFile",
    "UseProhibited",
]


class Transient:
    """Marker: the same call may succeed if retried later."""


class Terminal:
    """Marker: retrying will not help until the input or configuration changes."""


class OnshoreError(Exception):
    """Base of every error onshore raises on purpose.

    ``code`` is stable across releases; ``exit_code`` is what the CLI exits with; ``hint`` says
    what the user can do about it.
    """

    code: ClassVar[str] = "onshore"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        """The error as the CLI prints it under ``--json``."""
        return {
            "error": self.code,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class ConfigError(OnshoreError, Terminal):
    """The project's configuration, or an option given to a command, is wrong."""

    code = "config"
    exit_code = 2


class ProjectNotFound(ConfigError):
    """No ``onshore.toml`` where one was looked for."""

    code = "config.project_not_found"


class ProjectExists(ConfigError):
    """``init`` would overwrite an existing project."""

    code = "config.project_exists"


class SiteNotFound(ConfigError):
    """A site id the project does not declare."""

    code = "config.site_not_found"


class RulebookError(ConfigError):
    """A rulebook file is not valid. The message names the file, the line and the reason;
    ``problems`` holds every error found, not only the first."""

    code = "config.rulebook"

    def __init__(
        self, message: str, *, hint: str | None = None, problems: tuple[Problem, ...] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems

    @classmethod
    def from_problems(cls, problems: tuple[Problem, ...]) -> RulebookError:
        """The error for a list of problems: the first error is the message."""
        errors = tuple(p for p in problems if p.severity == "error")
        first = errors[0]
        hint = (
            f"{len(errors)} error(s) in all; run 'onshore rulebook lint {first.file}' to list them"
        )
        return cls(str(first), hint=hint, problems=errors)


class RulebookNotFound(ConfigError):
    """No rulebook by that name, or none that governs a request's origin."""

    code = "config.rulebook_not_found"


class KeystoreError(OnshoreError, Terminal):
    """A site's keystore is missing, unreadable or readable by others."""

    code = "keystore"
    exit_code = 3


class SimulationError(OnshoreError, Terminal):
    """SUMO, or building its road network, failed."""

    code = "simulation"
    exit_code = 4


class ClipError(OnshoreError, Terminal):
    """One input file is not a valid clip. Ingest quarantines the file with this reason."""

    code = "clip"
    exit_code = 5


class UnreadableFile(ClipError):
    """The file is empty, truncated, or not in the format its name says."""

    code = "clip.unreadable"


class SchemaError(ClipError):
    """A channel, column or field the clip format requires is missing or has the wrong type."""

    code = "clip.schema"


class PhysicsError(ClipError):
    """Time, position or speed that no real vehicle could have recorded."""

    code = "clip.physics"


class DeidentifyError(OnshoreError, Terminal):
    """A de-identified output failed a check its profile promises; nothing of it was stored."""

    code = "deidentify"
    exit_code = 9


class GateError(OnshoreError, Terminal):
    """A request put to the gate, or an approval put on file, is not valid."""

    code = "gate"
    exit_code = 12


class InvalidRequest(GateError):
    """A transfer request is not valid: an unknown category or jurisdiction, a date that is not
    a date, negative subjects, a field the request format does not have. The message names the
    field, e.g. ``data[0].subjects``."""

    code = "gate.invalid_request"


class InvalidApproval(GateError):
    """An approval the rulebooks or the registry refuse: a type the origin's rulebook does not
    know, an id already on file, data of another jurisdiction than the site's."""

    code = "gate.invalid_approval"


class ApprovalNotFound(GateError):
    """No approval with that id on file at the site."""

    code = "gate.approval_not_found"


class TransferDenied(GateError):
    """The gate denied a transfer: prohibited, covered by no rule, or needing an approval that
    is not on file. ``decision`` holds the decision with its reasons. ``onshore gate check``
    prints the decision and exits with this code, so scripts can branch on a denial."""

    code = "gate.denied"
    exit_code = 10

    def __init__(
        self, message: str, *, hint: str | None = None, decision: Decision | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.decision = decision


class LedgerError(OnshoreError, Terminal):
    """A ledger entry cannot be written or read as asked: a kind or payload the ledger does not
    accept, or a write without the site's signing key."""

    code = "ledger"
    exit_code = 11


class LedgerTampered(LedgerError):
    """A site's ledger disagrees with its own hashes, signatures or pinned key, with the heads
    other sites recorded of it, or with its store. Nothing should be appended until it is
    explained; ``onshore ledger verify`` lists each problem."""

    code = "ledger.tampered"


class TrainingError(OnshoreError, Terminal):
    """A driving model cannot be built, trained or evaluated as asked."""

    code = "training"
    exit_code = 13


class NoTrainingData(TrainingError):
    """A site has no sample to train or test on: no de-identified ``training`` output, no clip
    whose driver consented to training, or no stretch long enough for one window."""

    code = "training.no_data"


class PrivacyBudgetSpent(TrainingError):
    """DP-SGD would spend more privacy than the site's budget allows: the site trains no further
    and sends nothing more from this data."""

    code = "training.privacy_budget_spent"


class InvalidWeights(TrainingError):
    """Tensors that are not the declared model's: a name missing or extra, another shape or
    dtype, or a value that is not finite. The message names the tensor."""

    code = "training.invalid_weights"


class FileSystemError(OnshoreError, Terminal):
    """A local file or folder cannot be read or written (permissions, a file where a folder
    should be, a full disk)."""

    code = "filesystem"
    exit_code = 8


class StoreError(OnshoreError, Transient):
    """The site's object store could not be read or written."""

    code = "store"
    exit_code = 6


class CatalogueError(OnshoreError, Transient):
    """The site's catalogue database could not be read or written."""

    code = "catalogue"
    exit_code = 7


class ComputeError(OnshoreError, Transient):
    """The engine running a site's batch stages failed: the Ray cluster at ``RAY_ADDRESS`` did
    not answer, or a worker was lost and its work could not be retried. Nothing the stage had
    not committed is visible; rerun it."""

    code = "compute"


class ResidencyError(ClipError):
    """A clip recorded under another jurisdiction than the site's: it belongs in its own site."""

    code = "clip.residency"


class ClipConflict(ClipError):
    """A clip id already in the catalogue with different content."""

    code = "clip.conflict"


class ReleaseError(OnshoreError, Terminal):
    """A model release cannot be made, found or read as asked."""

    code = "release"
    exit_code = 14


class NotReleasable(ReleaseError):
    """The run is not one that may be released: not a federated run (a local run, or the
    centralised counterfactual, which pooled data no law let move), not finished, or not what
    the coordinator's ledger and the sites' ledgers say was trained. The message names the
    check that failed; the refusal is recorded in the coordinator's ledger."""

    code = "release.not_releasable"


class ReleaseExists(ReleaseError):
    """A release of that version is already in the project: versions are never overwritten."""

    code = "release.exists"


class ReleaseNotFound(ReleaseError):
    """No release of that version (no bundle under ``releases/<version>/``)."""

    code = "release.not_found"


class BundleInvalid(ReleaseError):
    """A release bundle that does not hold: its signature, a file's hash, its weights, or its
    lineage. ``problems`` lists every one found; the message names the first."""

    code = "release.bundle_invalid"

    def __init__(
        self, message: str, *, hint: str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems


class LicenceError(OnshoreError, Terminal):
    """A licence to use a released model cannot be granted, read or used as asked."""

    code = "licence"
    exit_code = 15


class LicenceInvalid(LicenceError):
    """A licence that is not what the releaser signed: malformed, altered after signing, signed
    by another key, or naming fields the format does not have. The message names the field or
    the file."""

    code = "licence.invalid"


class LicenceDenied(LicenceError):
    """The gate or the law refuses a grant: for some territory, the rulebook of a site whose
    data trained the model needs an approval that is not on file, or a software restriction
    forbids the model there. ``decisions`` holds each decision with its reasons; the refusal is
    recorded in the coordinator's ledger."""

    code = "licence.denied"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        decisions: tuple[TerritoryDecision, ...] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.decisions = decisions

    def to_dict(self) -> dict[str, Any]:
        """As the CLI prints it, with the refused territories' decisions (for scripts that put
        the missing approvals on file)."""
        return {**super().to_dict(), "territories": [d.as_dict() for d in self.decisions]}


class LicenceRefused(LicenceError):
    """Loading a released model under a licence that does not cover this use: expired, not yet
    valid, revoked, for another release, territory, purpose or model year, or whose revocation
    could not be checked. ``check`` holds the whole licence check with every reason."""

    code = "licence.refused"
    exit_code = 16

    def __init__(
        self, message: str, *, hint: str | None = None, check: LicenceCheck | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.check = check


class UseProhibited(LicenceError):
    """The law forbids this use of the model whatever a licence says, e.g. the US rule that
    automated-driving software from persons linked to China or Russia may not ship in US
    vehicles from model year 2027 (15 CFR 791 subpart D). ``check`` holds the licence check,
    naming the rule, its rulebook version and the parties it applies to."""

    code = "licence.prohibited"
    exit_code = 17

    def __init__(
        self, message: str, *, hint: str | None = None, check: LicenceCheck | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.check = check


class PartyError(OnshoreError, Terminal):
    """A party (a site or the coordinator, each in its own folder) cannot act as asked: its
    identity or a peer's is missing or not valid, or a message between parties was refused."""

    code = "party"
    exit_code = 18


class NotAParty(PartyError):
    """The command crosses a border, which only a party does: run it in a party's folder
    (``onshore init DIR --example three-regions --parties``), not in a lab project that holds
    several sites' data on one machine."""

    code = "party.not_a_party"


class PeerNotFound(PartyError):
    """No identity on file for the party named: it was never added with
    ``onshore party trust``, or the name is wrong."""

    code = "party.peer_not_found"


class IdentityInvalid(PartyError):
    """A party's identity file is not JSON, misses a field, or its signature is not the one its
    own ledger key makes: it was changed after it was exported, or it is not an identity."""

    code = "party.identity_invalid"


class CertificateError(PartyError):
    """A party's TLS certificate is missing, unreadable, expired, not yet valid, or not made for
    the address a peer uses to reach it."""

    code = "party.certificate"


class RequestRefused(PartyError):
    """A party refused a message: its sender is not a peer on file, its signature is not the
    sender's, it was seen before, its clock is minutes off, an object does not match its hash,
    the body is too large or ended early. ``reason`` is one word for scripts; the refusal is
    recorded where it arrived."""

    code = "party.refused"
    exit_code = 20

    def __init__(
        self, message: str, *, hint: str | None = None, reason: str = "refused", party: str = ""
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.party = party
        """The party that refused."""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "reason": self.reason, "refused_by": self.party or None}


class RightsError(OnshoreError, Terminal):
    """A driver's request (erasure, access, consent withdrawal) or a retention run cannot be
    served as asked."""

    code = "rights"
    exit_code = 21


class InvalidVin(RightsError):
    """What was given as a VIN is not one (ISO 3779: 17 letters and digits, no I, O or Q)."""

    code = "rights.invalid_vin"


class UnknownVehicle(RightsError):
    """The site holds nothing of that vehicle, and never erased anything of it."""

    code = "rights.unknown_vehicle"


class ErasureBlocked(RightsError):
    """A transfer of the vehicle's data is under way (sent, not yet confirmed): erasing now
    could leave a copy arriving after the erasure. Finish the transfer, then erase."""

    code = "rights.blocked"


class PeerUnreachable(OnshoreError, Transient):
    """A party's service did not answer: it is not running, the address or port is wrong, a
    firewall is in the way, or the TLS handshake failed. Nothing was sent; rerun once it is
    up."""

    code = "peer_unreachable"
    exit_code = 19


class DemoError(OnshoreError, Terminal):
    """A step of ``onshore demo`` failed: the message names the command, the party's folder it
    ran in and what it said; the processes the demo started are stopped."""

    code = "demo"
    exit_code = 1


def _catalogue() -> dict[str, type[OnshoreError]]:
    found: dict[str, type[OnshoreError]] = {}
    pending: list[type[OnshoreError]] = [OnshoreError]
    while pending:
        cls = pending.pop()
        if cls.code in found:
            raise RuntimeError(f"error code {cls.code!r} is used twice")
        found[cls.code] = cls
        pending.extend(cls.__subclasses__())
    return found


ERRORS: dict[str, type[OnshoreError]] = _catalogue()
"""Every error code, mapped to its class. A test checks each is documented above."""
