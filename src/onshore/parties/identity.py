"""A party's public identity, and the peers a party knows.

An identity says who a party is and how to reach and check it: its id and role (a site or the
coordinator), the law and entity it answers to, where its service listens, its TLS certificate,
its ledger's public key (the key its ledger's genesis pins and that signs its messages) and, for
a site, the key its Flower SuperNode authenticates with. It is a JSON file signed with the ledger
key it names::

    {"identity": {"format": "onshore.party/1", "id": "cn-shanghai", "role": "site", ...},
     "signature": {"algorithm": "ed25519", "key": FINGERPRINT, "signature": HEX}}

Nothing in it is secret. A party exports its own (``onshore party identity``) and adds its
peers' (``onshore party trust FILE``) under ``peers/<id>.json`` in its folder; the operator
checks the key fingerprint ``trust`` prints with the peer out of band, as one checks an SSH host
key. A party trusts exactly the peers on file: their certificates at the TLS layer, their keys
for every signed message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from onshore.errors import ConfigError, IdentityInvalid, NotAParty, PeerNotFound
from onshore.files import write_atomically
from onshore.ledger.entry import canonical_json, fingerprint, public_key_hex
from onshore.parties.tls import (
    NODE_PUBLIC_FILE,
    TlsFiles,
    certificate_fingerprint,
    certificate_hosts,
    load_certificate,
)
from onshore.settings import PartySettings, Project
from onshore.sites.keystore import SiteKeys, load_keystore

__all__ = [
    "IDENTITY_CONTEXT",
    "IDENTITY_FORMAT",
    "PEERS_DIR",
    "Counterparty",
    "Identity",
    "LocalParty",
    "Peers",
    "SiteFacts",
    "coordinator_of",
    "export_identity",
    "identity_of",
    "load_peers",
    "read_identity",
    "site_facts",
    "trust_peer",
]

IDENTITY_FORMAT: Final = "onshore.party/1"
IDENTITY_CONTEXT: Final = b"onshore.party.identity.v1\x00"
"""Prefix of what an identity's signature covers: never valid as a ledger entry's or a
message's signature."""
PEERS_DIR: Final = "peers"
"""Where a party keeps its peers' identities, one ``<id>.json`` each."""

_Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
_PartyId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]


class Identity(BaseModel):
    """What a party publishes about itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["onshore.party/1"] = IDENTITY_FORMAT
    id: _PartyId
    role: Literal["site", "coordinator"]
    project: str
    """The project's name: peers of one federation share it."""
    jurisdiction: _Country | None = None
    """Whose law governs the data recorded at a site (``CN``, ``EU``, ``US`` or a project's
    own rulebook's); None for the coordinator."""
    entity: str = Field(min_length=1)
    country: _Country
    """Where the entity and its data centre are (for an EU site, its member state)."""
    linked_to: tuple[_Country, ...] = ()
    endpoint: Annotated[str, StringConstraints(pattern=r"^https://[^/\s]+$")]
    """Where its service listens, e.g. ``https://10.0.0.1:8443``."""
    federation: str | None = None
    """The coordinator's SuperLink as sites reach it (``host:port``)."""
    tls_certificate: str
    """PEM: the certificate its service presents and its clients present."""
    ledger_key: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    """The raw Ed25519 public key (hex) its ledger's genesis pins."""
    node_key: str | None = None
    """A site's SuperNode key (OpenSSH public key) for Flower's SuperNode authentication."""
    accelerators: str = ""
    """What a site computes with (for the model card), e.g. ``8x H20``."""
    issued: dt.datetime

    @property
    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.ledger_key))

    @property
    def key_fingerprint(self) -> str:
        """SHA-256 of the ledger key: what ``trust`` prints and ledgers record of it."""
        return hashlib.sha256(bytes.fromhex(self.ledger_key)).hexdigest()

    @property
    def tls_fingerprint(self) -> str:
        return certificate_fingerprint(self.tls_certificate)

    @property
    def location(self) -> str:
        return self.country

    @property
    def host(self) -> str:
        """The host part of the endpoint."""
        rest = self.endpoint.removeprefix("https://")
        if rest.startswith("["):
            return rest[1 : rest.index("]")]
        return rest.rsplit(":", 1)[0] if ":" in rest else rest

    def summary(self) -> dict[str, Any]:
        """What ``onshore party peers`` lists of it (no certificate text)."""
        return {
            "id": self.id,
            "role": self.role,
            "jurisdiction": self.jurisdiction,
            "entity": self.entity,
            "country": self.country,
            "endpoint": self.endpoint,
            "federation": self.federation,
            "key": self.key_fingerprint,
            "tls": self.tls_fingerprint,
        }


def _message(identity: Mapping[str, Any]) -> bytes:
    return IDENTITY_CONTEXT + hashlib.sha256(canonical_json(identity).encode()).digest()


def sign_identity(identity: Identity, keys: SiteKeys) -> dict[str, Any]:
    """The identity file's content: the identity and its signature by ``keys``."""
    body = identity.model_dump(mode="json")
    return {
        "identity": body,
        "signature": {
            "algorithm": "ed25519",
            "key": fingerprint(keys.public_key),
            "signature": keys.sign(_message(body)).hex(),
        },
    }


def read_identity(source: Path | bytes, *, where: str | None = None) -> Identity:
    """Read an identity file (or its bytes) and check its signature; raises
    :class:`IdentityInvalid` naming the file and what is wrong."""
    name = where or (str(source) if isinstance(source, Path) else "the identity")
    try:
        raw = orjson.loads(source.read_bytes() if isinstance(source, Path) else source)
    except FileNotFoundError:
        raise IdentityInvalid(
            f"no identity at {name}", hint="export it with 'onshore party identity' at the peer"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise IdentityInvalid(f"{name} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"identity", "signature"}:
        raise IdentityInvalid(f"{name}: an identity file holds exactly identity and signature")
    body, signature = raw["identity"], raw["signature"]
    if not isinstance(body, dict) or not isinstance(signature, dict):
        raise IdentityInvalid(f"{name}: identity and signature must be objects")
    try:
        identity = Identity.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise IdentityInvalid(f"{name}: identity.{field}: {first['msg']}") from None
    load_certificate(identity.tls_certificate, f"{name}: identity.tls_certificate")
    sig = signature.get("signature")
    try:
        if signature.get("algorithm") != "ed25519" or not isinstance(sig, str):
            raise ValueError("not an ed25519 signature")
        identity.key.verify(bytes.fromhex(sig), _message(body))
    except (ValueError, InvalidSignature):
        raise IdentityInvalid(
            f"{name}: the signature is not the one the identity's own ledger key makes",
            hint="it was changed after it was exported; ask the party for its identity again",
        ) from None
    if signature.get("key") != identity.key_fingerprint:
        raise IdentityInvalid(f"{name}: signature.key is not the identity's key fingerprint")
    return identity


@dataclass(frozen=True, slots=True)
class LocalParty:
    """This folder's party: its settings, keys and TLS files (the secrets stay in its keystore)."""

    project: Project
    settings: PartySettings
    keystore: Path

    @property
    def id(self) -> str:
        return self.settings.id

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.keystore)

    def keys(self) -> SiteKeys:
        return load_keystore(self.keystore)

    @classmethod
    def of(cls, project: Project) -> LocalParty:
        """The party of ``project``'s folder; raises :class:`NotAParty` in a lab project."""
        party = project.party
        if party is None:
            raise NotAParty(
                f"{project.root} is a lab project, not a party's folder: nothing in it "
                "crosses a border",
                hint="make party folders with 'onshore init DIR --example three-regions "
                "--parties' and run the command in the origin's",
            )
        if project.is_coordinator:
            folder = project.keystore_path(project.settings.coordinator)
        else:
            folder = project.keystore_path(project.site(party.id))
        return cls(project, party, folder)


def identity_of(project: Project) -> Identity:
    """This party's identity, from its settings and keys."""
    local = LocalParty.of(project)
    keys = local.keys()
    cert = local.tls.cert
    if not cert.is_file():
        raise ConfigError(f"{cert} is missing", hint="restore the party's keystore")
    pem = cert.read_text(encoding="ascii")
    settings = local.settings
    base: dict[str, Any] = {
        "id": local.id,
        "project": project.settings.name,
        "endpoint": settings.url,
        "tls_certificate": pem,
        "ledger_key": public_key_hex(keys.public_key),
        "issued": dt.datetime.now(dt.UTC).replace(microsecond=0),
    }
    if project.is_coordinator:
        coord = project.settings.coordinator
        link = settings.federation or f"{_bracketed(_endpoint_host(settings.url))}:9092"
        values = {
            **base,
            "role": "coordinator",
            "entity": coord.entity,
            "country": coord.country,
            "linked_to": tuple(coord.linked_to),
            "federation": link,
        }
    else:
        site = project.site(local.id)
        node = local.keystore / NODE_PUBLIC_FILE
        values = {
            **base,
            "role": "site",
            "jurisdiction": site.jurisdiction,
            "entity": site.entity,
            "country": site.location,
            "linked_to": tuple(site.linked_to),
            "node_key": node.read_text(encoding="ascii").strip() if node.is_file() else None,
            "accelerators": site.compute.accelerators,
        }
    identity = Identity.model_validate(values)
    host = identity.host
    if host not in certificate_hosts(pem):
        raise ConfigError(
            f"the endpoint {settings.url} names {host}, which the TLS certificate {cert} does "
            f"not (it names {', '.join(certificate_hosts(pem)) or 'nothing'})",
            hint="set [party] endpoint to a name the certificate has, or make a new "
            "certificate for it with 'onshore party renew --host NAME'",
        )
    return identity


def _endpoint_host(url: str) -> str:
    rest = url.removeprefix("https://").rstrip("/")
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def export_identity(project: Project) -> dict[str, Any]:
    """This party's identity file content (signed)."""
    identity = identity_of(project)
    return sign_identity(identity, LocalParty.of(project).keys())


class Peers(Mapping[str, Identity]):
    """The peers on file in a party's folder, by id."""

    def __init__(self, identities: Mapping[str, Identity]) -> None:
        self._by_id = dict(identities)

    def __getitem__(self, key: str) -> Identity:
        return self._by_id[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def get_peer(self, peer_id: str) -> Identity:
        """The peer ``peer_id``; raises :class:`PeerNotFound` naming the peers on file."""
        try:
            return self._by_id[peer_id]
        except KeyError:
            known = ", ".join(sorted(self._by_id)) or "none"
            raise PeerNotFound(
                f"no peer {peer_id!r} on file",
                hint=f"peers on file: {known}; add one with 'onshore party trust FILE'",
            ) from None

    @property
    def coordinator(self) -> Identity | None:
        found = [p for p in self._by_id.values() if p.role == "coordinator"]
        return found[0] if found else None

    def sites(self) -> list[Identity]:
        return [p for p in self._by_id.values() if p.role == "site"]

    def by_tls(self, fingerprint_hex: str) -> Identity | None:
        """The peer whose TLS certificate has this fingerprint."""
        for peer in self._by_id.values():
            if peer.tls_fingerprint == fingerprint_hex:
                return peer
        return None


@dataclass(frozen=True, slots=True)
class Counterparty:
    """Who receives what crosses: a party's id, legal entity and where it is."""

    id: str
    entity: str
    country: str
    linked_to: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entity": self.entity,
            "country": self.country,
            "linked_to": list(self.linked_to),
        }


def coordinator_of(project: Project) -> Counterparty:
    """The coordinator a folder's sites send model updates and answers to: its peer identity in
    a site's folder, its own settings in the coordinator's folder or a lab project. Raises
    :class:`PeerNotFound` in a site's folder that has no coordinator on file."""
    if project.party is not None and not project.is_coordinator:
        found = load_peers(project).coordinator
        if found is None:
            raise PeerNotFound(
                f"{project.root}: no coordinator among the peers on file",
                hint="add the coordinator's identity with 'onshore party trust FILE'",
            )
        return Counterparty(found.id, found.entity, found.country, found.linked_to)
    coord = project.settings.coordinator
    return Counterparty(coord.id, coord.entity, coord.country, tuple(coord.linked_to))


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """What the public knows of a site: whose law, which entity, where, computing with what."""

    id: str
    jurisdiction: str
    entity: str
    country: str
    linked_to: tuple[str, ...] = ()
    accelerators: str = ""

    @property
    def location(self) -> str:
        return self.country


def site_facts(project: Project, site_id: str) -> SiteFacts:
    """A site's public facts: from its settings in a lab project or its own folder, from its
    identity on file in another party's folder. Raises :class:`SiteNotFound` or
    :class:`PeerNotFound`."""
    if site_id in project.settings.sites or project.party is None:
        site = project.site(site_id)
        return SiteFacts(
            site.id,
            site.jurisdiction,
            site.entity,
            site.location,
            tuple(site.linked_to),
            site.compute.accelerators,
        )
    peer = load_peers(project).get_peer(site_id)
    if peer.role != "site" or peer.jurisdiction is None:
        raise PeerNotFound(f"{site_id} is the coordinator, not a site")
    return SiteFacts(
        peer.id, peer.jurisdiction, peer.entity, peer.country, peer.linked_to, peer.accelerators
    )


def load_peers(project: Project) -> Peers:
    """The peers on file in ``project``'s folder (none in a lab project). Raises
    :class:`IdentityInvalid` naming a file that is not a valid identity, or one filed under
    another name than its id."""
    folder = project.root / PEERS_DIR
    found: dict[str, Identity] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            identity = read_identity(path)
            if path.stem != identity.id:
                raise IdentityInvalid(
                    f"{path} holds the identity of {identity.id}, not {path.stem}",
                    hint=f"rename it to {identity.id}.json",
                )
            found[identity.id] = identity
    return Peers(found)


def trust_peer(project: Project, source: Path | bytes, *, replace: bool = False) -> Identity:
    """Add a peer's identity to this party's folder and return it. Refuses the party's own
    identity, one of another project, and a changed identity of a peer on file (its key or
    certificate) unless ``replace``. The service trusts it once restarted."""
    local = LocalParty.of(project)
    identity = read_identity(source)
    if identity.id == local.id:
        raise ConfigError(f"{identity.id} is this party itself", hint="add the peers' identities")
    if identity.project != project.settings.name:
        raise ConfigError(
            f"{identity.id} belongs to project {identity.project!r}, this party to "
            f"{project.settings.name!r}",
            hint="parties of one federation share the [project] name",
        )
    folder = project.root / PEERS_DIR
    target = folder / f"{identity.id}.json"
    if target.exists() and not replace:
        known = read_identity(target)
        if (known.ledger_key, known.tls_certificate) != (
            identity.ledger_key,
            identity.tls_certificate,
        ):
            raise ConfigError(
                f"{identity.id} is on file with another key or certificate "
                f"(key {known.key_fingerprint[:16]}..., now {identity.key_fingerprint[:16]}...)",
                hint="check with the peer out of band; pass --replace if it really changed",
            )
    write_atomically(target, source.read_bytes() if isinstance(source, Path) else source)
    return identity
