"""A release's lineage: the sites' ledger entries of every model update that went into it, and
the checks that each is in its site's ledger as the site wrote it (asked of each site's service
from the coordinator's folder; read from the sites' ledgers in a lab project).

Each update a site sent is a ``federated_update`` entry in that site's ledger (written by its
outbound mod with the gate's decision); the coordinator's ``federated_run_finished`` entry lists
the ones it used, by site, sequence number and hash. A lineage link holds when the named site's
ledger has that entry with that hash, the hash recomputes from the entry's fields, the
signature verifies under the key the ledger's genesis pins, the ledger as a whole verifies, and
the entry says the update was a ``train`` reply of this run that the gate let go.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.errors import ConfigError, OnshoreError
from onshore.ledger import Entry, verify
from onshore.ledger.entry import SIGNATURE_CONTEXT, entry_digest, is_hex64
from onshore.parties.identity import site_facts
from onshore.release.records import reachable_ledger
from onshore.settings import Project

__all__ = [
    "UPDATE_KIND",
    "Fetch",
    "Fetched",
    "LineageReport",
    "SiteContribution",
    "check_lineage",
    "local_fetch",
    "parse_links",
    "remote_fetch",
]

UPDATE_KIND: Final = "federated_update"
"""The kind of a site's ledger entry for an update it sent (see :mod:`onshore.federation`)."""


@dataclass(slots=True)
class SiteContribution:
    """What one site's updates in a lineage say, once read from its ledger."""

    updates: int = 0
    rounds: set[int] = field(default_factory=set)
    subjects: int = 0
    """The most subjects (vehicles) any of its updates counted."""
    rulebook_versions: dict[str, str] = field(default_factory=dict)
    """The rulebook versions its gate decided its updates under."""


@dataclass(frozen=True, slots=True)
class LineageReport:
    """What checking a lineage found."""

    links: int
    checked: int
    """Links whose site's ledger was reached and that hold."""
    unreachable: tuple[str, ...]
    """Sites whose ledgers could not be reached, so their links were not checked."""
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    sites: Mapping[str, SiteContribution]
    erasures: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    """Per site, the erasures it made after its last update of the run (``request``, ``time``,
    ``clips``), each from a signed entry of its ledger: the model was trained on data since
    erased, and stays as it was (there is no unlearning)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "links": self.links,
            "checked": self.checked,
            "unreachable": list(self.unreachable),
            "problems": list(self.problems),
            "notes": list(self.notes),
            "erasures_after_training": {site: list(found) for site, found in self.erasures.items()},
        }


def parse_links(value: object, where: str) -> list[dict[str, Any]]:
    """Lineage links ``[{"site", "seq", "hash"}]`` from ``value``; raises :class:`ValueError`
    naming ``where`` and the first malformed one."""
    if not isinstance(value, list):
        raise ValueError(f"{where} is not a list of ledger entries")
    links = []
    for i, link in enumerate(value):
        if (
            not isinstance(link, Mapping)
            or not isinstance(link.get("site"), str)
            or not isinstance(link.get("seq"), int)
            or isinstance(link.get("seq"), bool)
            or not is_hex64(link.get("hash"))
        ):
            raise ValueError(f"{where}[{i}] is not {{site, seq, hash}}")
        links.append({"site": link["site"], "seq": link["seq"], "hash": link["hash"]})
    return links


def _authentic(key: Ed25519PublicKey | None, entry: Entry) -> str | None:
    """Why ``entry`` is not its site's own as stored (under the site's ``key``), or None."""
    digest = entry_digest(
        entry.site, entry.seq, entry.time, entry.kind, entry.payload, entry.prev_hash
    )
    if digest.hex() != entry.hash:
        return "its hash does not recompute from its fields"
    if key is None:
        return "its ledger's genesis pins no valid key"
    try:
        key.verify(bytes.fromhex(entry.signature), SIGNATURE_CONTEXT + digest)
    except (ValueError, InvalidSignature):
        return "its signature does not verify under the site's ledger key"
    return None


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a site's ledger says of some of its entries."""

    entries: Mapping[int, Entry | None]
    key: Ed25519PublicKey | None
    """The key the site's entries must be signed with."""
    problem: str | None = None
    """Why the site's ledger does not verify, if it does not."""
    erasures: tuple[Entry, ...] = ()
    """The site's ``erasure`` entries after the last of the entries asked for."""


Fetch = Callable[[str, list[int]], Fetched]
"""``fetch(site, seqs)``: those entries of the site's ledger; raises when it cannot be reached."""


def local_fetch(project: Project) -> Fetch:
    """Entries read from the sites' ledgers in this project's folder (a lab project)."""

    def fetch(site_id: str, seqs: list[int]) -> Fetched:
        site = project.site(site_id)
        with reachable_ledger(project, site) as (ledger, why):
            if ledger is None:
                raise ConfigError(why or f"{site_id}'s ledger cannot be reached")
            report = verify(ledger, check_hashes=False)
            problem = None if report.ok else report.problems[0].reason
            after = max(seqs, default=-1) + 1
            erasures = tuple(ledger.entries(kind="erasure", since=after))
            return Fetched(
                {s: ledger.entry(s) for s in seqs}, ledger.pinned_key(), problem, erasures
            )

    return fetch


def remote_fetch(project: Project) -> Fetch:
    """Entries each site's service vouches for (a party's folder): nothing of theirs is read
    here but what they send, signed."""
    from onshore.parties.identity import load_peers
    from onshore.parties.own import peer_client

    def fetch(site_id: str, seqs: list[int]) -> Fetched:
        peer = load_peers(project).get_peer(site_id)
        with peer_client(project, site_id) as client:
            body = client.post(
                "ledger.vouch",
                "/v1/ledger/vouch",
                {"seqs": seqs, "erasures_after": max(seqs, default=-1)},
            ).body
        found: dict[int, Entry | None] = {}
        for seq, raw in zip(seqs, body.get("entries") or [], strict=False):
            found[seq] = None
            if isinstance(raw, dict):
                try:
                    entry = Entry(**raw)
                except TypeError:
                    continue
                if entry.site == site_id and entry.seq == seq:
                    found[seq] = entry
        problem = body.get("problem")
        erasures = []
        for raw in body.get("erasures") or []:
            try:
                erasures.append(Entry(**raw))
            except TypeError:
                continue
        return Fetched(found, peer.key, None if problem is None else str(problem), tuple(erasures))

    return fetch


def _link_problem(entry: Entry | None, link: Mapping[str, Any], run: str) -> str | None:
    where = f"{link['site']} entry {link['seq']}"
    if entry is None:
        return f"{where}: not in the site's ledger"
    if entry.hash != link["hash"]:
        return (
            f"{where}: its hash is {entry.hash[:16]}..., the lineage names {link['hash'][:16]}..."
        )
    if entry.kind != UPDATE_KIND:
        return f"{where}: a {entry.kind} entry, not a model update"
    data = entry.data
    if data.get("run") != run or data.get("kind") != "train":
        return f"{where}: not a train update of run {run}"
    if data.get("sent") is not True or not (data.get("decision") or {}).get("allowed"):
        return f"{where}: the update did not leave the site (the gate did not allow it)"
    return None


def check_lineage(
    project: Project,
    run: str,
    links: Sequence[Mapping[str, Any]],
    *,
    fetch: Fetch | None = None,
) -> LineageReport:
    """Check each link of a run's lineage against its site's ledger, where it can be reached:
    in a party's folder each site's service vouches for its entries, in a lab project the
    sites' ledgers are read (``fetch`` replaces either). Never raises for what it finds: each
    problem and each unreachable site is in the report."""
    if fetch is None:
        fetch = remote_fetch(project) if project.party is not None else local_fetch(project)
    by_site: dict[str, list[Mapping[str, Any]]] = {}
    for link in links:
        by_site.setdefault(str(link["site"]), []).append(link)
    problems: list[str] = []
    notes: list[str] = []
    unreachable: list[str] = []
    checked = 0
    sites: dict[str, SiteContribution] = {}
    erased: dict[str, list[dict[str, Any]]] = {}
    for site_id, site_links in by_site.items():
        try:
            site_facts(project, site_id)
        except OnshoreError:
            problems.append(f"{site_id}: the lineage names a site the project does not know")
            continue
        try:
            fetched = fetch(site_id, [int(link["seq"]) for link in site_links])
        except OnshoreError as exc:
            unreachable.append(site_id)
            notes.append(f"{site_id}: {len(site_links)} link(s) not checked: {exc.message}")
            continue
        if fetched.problem is not None:
            problems.append(
                f"{site_id}: its ledger does not verify ({fetched.problem}); "
                f"run 'onshore ledger verify' in {site_id}'s folder"
            )
        contribution = sites.setdefault(site_id, SiteContribution())
        for link in site_links:
            entry = fetched.entries.get(int(link["seq"]))
            problem = _link_problem(entry, link, run)
            if problem is None and entry is not None:
                why_not = _authentic(fetched.key, entry)
                if why_not is not None:
                    problem = f"{site_id} entry {link['seq']}: {why_not}"
            if problem is not None:
                problems.append(problem)
                continue
            assert entry is not None
            checked += 1
            data = entry.data
            contribution.updates += 1
            if isinstance(data.get("round"), int):
                contribution.rounds.add(data["round"])
            for item in data.get("items") or ():
                subjects = item.get("subjects") if isinstance(item, Mapping) else None
                if isinstance(subjects, int):
                    contribution.subjects = max(contribution.subjects, subjects)
            versions = (data.get("decision") or {}).get("rulebook_versions") or {}
            contribution.rulebook_versions.update({str(k): str(v) for k, v in versions.items()})
        last = max(int(link["seq"]) for link in site_links)
        for entry in fetched.erasures:
            why_not = _authentic(fetched.key, entry)
            if entry.site != site_id or entry.kind != "erasure" or entry.seq <= last:
                why_not = why_not or "not an erasure after the run's updates"
            if why_not is not None:
                problems.append(f"{site_id} entry {entry.seq}: {why_not}")
                continue
            erased.setdefault(site_id, []).append(
                {
                    "request": entry.data.get("request"),
                    "time": entry.time,
                    "clips": entry.data.get("clips"),
                    "seq": entry.seq,
                }
            )
    for site_id, found in erased.items():
        notes.append(
            f"{site_id}: {len(found)} erasure(s) after its updates of this run (the first on "
            f"{found[0]['time'][:10]}): the model was trained on data since erased at the "
            "driver's request, and stays as released (there is no unlearning)"
        )
    return LineageReport(
        links=len(links),
        checked=checked,
        unreachable=tuple(unreachable),
        problems=tuple(problems),
        notes=tuple(notes),
        sites=sites,
        erasures={site: tuple(found) for site, found in erased.items()},
    )
