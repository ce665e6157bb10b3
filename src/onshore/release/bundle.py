"""The release bundle, byte for byte: one ``.onshore`` file that carries a released model.

A bundle is a zip archive (stored, not compressed; fixed member times, so the same release
always makes the same bytes) of exactly five members:

- ``weights.safetensors``: the global model's tensors;
- ``card.json``: the model card (:mod:`onshore.release.card`);
- ``lineage.json``: the ledger entries of every model update that went into it;
- ``manifest.json``: the release's version and run, who signed it (the coordinator: its id,
  entity, country and Ed25519 public key), and the SHA-256 and size of each of the three files
  above, as canonical JSON;
- ``signature.json``: Ed25519 over :data:`SIGNATURE_CONTEXT` followed by the 32-byte SHA-256 of
  ``manifest.json``, by the key the manifest names.

So the signature covers the manifest and, through its hashes, every byte of the weights, the
card and the lineage: change any of them after signing and :func:`bundle_problems` says which.
The context keeps a bundle signature from passing for a ledger entry's or a licence's signature
made with the same key. That the signer is the project's coordinator is not something a bundle
can say of itself; :mod:`onshore.release.verify` checks it against the coordinator's ledger or a
key the user trusts.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.errors import BundleInvalid
from onshore.ledger.entry import canonical_json, fingerprint, is_hex64, public_key_hex
from onshore.settings import CoordinatorSettings
from onshore.sites.keystore import SiteKeys

__all__ = [
    "BUNDLE_SUFFIX",
    "CARD",
    "FORMAT",
    "LINEAGE",
    "MANIFEST",
    "MEMBERS",
    "SIGNATURE",
    "SIGNATURE_CONTEXT",
    "WEIGHTS",
    "Bundle",
    "Signer",
    "build_bundle",
    "bundle_problems",
    "pack",
    "read_bundle",
    "signature_valid",
    "signed_digest",
]

FORMAT: Final = "onshore.release/1"
"""The bundle format this module writes and reads (the manifest's ``format``)."""

BUNDLE_SUFFIX: Final = ".onshore"

WEIGHTS: Final = "weights.safetensors"
CARD: Final = "card.json"
LINEAGE: Final = "lineage.json"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "signature.json"
CONTENT: Final = (WEIGHTS, CARD, LINEAGE)
"""The members the manifest lists by hash."""
MEMBERS: Final = (MANIFEST, SIGNATURE, *CONTENT)
"""Every member of a bundle, in the order they are written; no other member is allowed."""

SIGNATURE_CONTEXT: Final = b"onshore.release.bundle.v1\x00"
"""Prefix of the message a bundle's signature covers (see the module's description)."""

_ZIP_TIME: Final = (1980, 1, 1, 0, 0, 0)


def signed_digest(context: bytes, data: bytes) -> bytes:
    """The message a release or licence signature covers: ``context`` and SHA-256 of ``data``."""
    return context + hashlib.sha256(data).digest()


def signature_valid(public_key_hex_: str, signature_hex: str, message: bytes) -> bool:
    """Whether ``signature_hex`` is an Ed25519 signature of ``message`` by the raw public key
    ``public_key_hex_`` (hex). Malformed keys or signatures are simply not valid."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex_))
        key.verify(bytes.fromhex(signature_hex), message)
    except (ValueError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signed a release (and the licences for it): the coordinator that trained it."""

    id: str
    entity: str
    country: str
    public_key: str
    """Raw Ed25519 public key, hex."""

    @property
    def key(self) -> str:
        """The key's fingerprint (SHA-256 of the raw key, hex), as ledgers name keys."""
        return hashlib.sha256(bytes.fromhex(self.public_key)).hexdigest()

    @classmethod
    def of(cls, keys: SiteKeys, coordinator: CoordinatorSettings) -> Signer:
        """The coordinator as the signer of what it releases with ``keys``."""
        return cls(
            coordinator.id, coordinator.entity, coordinator.country, public_key_hex(keys.public_key)
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "entity": self.entity,
            "country": self.country,
            "public_key": self.public_key,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> Signer:
        """The signer a manifest names; raises :class:`BundleInvalid` naming ``where``."""
        if not isinstance(data, Mapping):
            raise BundleInvalid(f"{where}: signer is not an object")
        fields = [data.get(k) for k in ("id", "entity", "country", "public_key")]
        if not all(isinstance(f, str) and f for f in fields):
            raise BundleInvalid(f"{where}: signer needs id, entity, country and public_key")
        signer = cls(*(str(f) for f in fields))
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer.public_key))
        except ValueError:
            raise BundleInvalid(f"{where}: signer.public_key is not an Ed25519 key") from None
        if data.get("key") != fingerprint(key):
            raise BundleInvalid(f"{where}: signer.key is not the fingerprint of its public_key")
        return signer


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle as read from its bytes: nothing checked yet but its shape (see
    :func:`bundle_problems` for the checks)."""

    path: Path | None
    members: Mapping[str, bytes]
    manifest: Mapping[str, Any]
    signer: Signer

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the manifest's bytes: the release's identity, which licences name."""
        return hashlib.sha256(self.members[MANIFEST]).hexdigest()

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def run(self) -> str:
        return str(self.manifest["run"])

    @property
    def weights(self) -> bytes:
        return self.members[WEIGHTS]

    @property
    def card(self) -> dict[str, Any]:
        """The model card; raises :class:`BundleInvalid` if it is not a JSON object."""
        return _json_object(self.members[CARD], CARD)

    @property
    def lineage(self) -> dict[str, Any]:
        """The lineage; raises :class:`BundleInvalid` if it is not a JSON object."""
        return _json_object(self.members[LINEAGE], LINEAGE)

    @property
    def project(self) -> Mapping[str, Any]:
        """Where the release was made: ``{"name", "root"}`` of its project."""
        found = self.manifest.get("project")
        return found if isinstance(found, Mapping) else {}


def _json_object(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BundleInvalid(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BundleInvalid(f"{where} is not a JSON object")
    return value


def build_bundle(
    *,
    version: str,
    run: str,
    created: str,
    project: Mapping[str, str],
    signer: Signer,
    keys: SiteKeys,
    weights: bytes,
    card: Mapping[str, Any],
    lineage: Mapping[str, Any],
) -> bytes:
    """The bytes of a bundle holding ``weights``, ``card`` and ``lineage``, signed with
    ``keys`` (whose public key must be ``signer``'s)."""
    if public_key_hex(keys.public_key) != signer.public_key:
        raise BundleInvalid("the signing key is not the key the manifest names as signer")
    content = {
        WEIGHTS: weights,
        CARD: canonical_json(card).encode(),
        LINEAGE: canonical_json(lineage).encode(),
    }
    manifest = canonical_json(
        {
            "format": FORMAT,
            "version": version,
            "run": run,
            "created": created,
            "project": dict(project),
            "signer": signer.as_dict(),
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for name, data in content.items()
            },
        }
    ).encode()
    signature = keys.sign(signed_digest(SIGNATURE_CONTEXT, manifest))
    members = {
        MANIFEST: manifest,
        SIGNATURE: canonical_json(
            {"algorithm": "ed25519", "key": signer.key, "signature": signature.hex()}
        ).encode(),
        **content,
    }
    return pack(members)


def pack(members: Mapping[str, bytes]) -> bytes:
    """``members`` as a zip archive, in :data:`MEMBERS` order, with fixed times. (Tests use it
    to build altered bundles.)"""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name in [*[m for m in MEMBERS if m in members], *sorted(set(members) - set(MEMBERS))]:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])
    return out.getvalue()


def read_bundle(source: Path | bytes) -> Bundle:
    """Read a bundle from a file or its bytes. Raises :class:`BundleInvalid` naming the file
    and what is wrong with its shape: not a zip, a member missing, extra or twice there, a
    manifest that is not the format's. Signature and hashes are checked by
    :func:`bundle_problems`."""
    path = source if isinstance(source, Path) else None
    where = str(path) if path is not None else "the bundle"
    try:
        data = source.read_bytes() if isinstance(source, Path) else source
    except FileNotFoundError:
        raise BundleInvalid(
            f"no bundle at {where}",
            hint="give the .onshore file 'onshore release create --json' printed as bundle",
        ) from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [i.filename for i in archive.infolist()]
            members = {name: archive.read(name) for name in set(names)}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise BundleInvalid(f"{where} is not a release bundle (a zip archive): {exc}") from None
    twice = sorted({n for n in names if names.count(n) > 1})
    missing = [m for m in MEMBERS if m not in members]
    extra = sorted(set(members) - set(MEMBERS))
    if twice or missing or extra:
        raise BundleInvalid(
            f"{where}: members missing {missing or 'none'}, unexpected {extra or 'none'}, "
            f"repeated {twice or 'none'}",
            hint=f"a bundle holds exactly {', '.join(MEMBERS)}",
        )
    manifest = _json_object(members[MANIFEST], f"{where}: {MANIFEST}")
    if manifest.get("format") != FORMAT:
        raise BundleInvalid(
            f"{where}: {MANIFEST} format is {manifest.get('format')!r}, not {FORMAT!r}",
            hint="this onshore reads release bundles of that format only",
        )
    for field in ("version", "run", "created"):
        if not isinstance(manifest.get(field), str):
            raise BundleInvalid(f"{where}: {MANIFEST} field {field} is missing or not text")
    files = manifest.get("files")
    if not isinstance(files, Mapping) or set(files) != set(CONTENT):
        raise BundleInvalid(f"{where}: {MANIFEST} field files must list {', '.join(CONTENT)}")
    signer = Signer.from_dict(manifest.get("signer"), f"{where}: {MANIFEST}")
    return Bundle(path, members, manifest, signer)


def bundle_problems(bundle: Bundle) -> list[str]:
    """What does not hold in ``bundle`` on its own terms, each as a sentence naming the
    member: a signature that is not the named signer's over the manifest, a member whose hash
    or size is not the one signed. Empty: the bundle is as its signer made it (who the signer
    is, and the lineage, are :mod:`onshore.release.verify`'s business)."""
    problems = []
    try:
        sig = _json_object(bundle.members[SIGNATURE], SIGNATURE)
    except BundleInvalid as exc:
        return [exc.message]
    signature = sig.get("signature")
    if sig.get("algorithm") != "ed25519" or not isinstance(signature, str):
        problems.append(f"{SIGNATURE}: needs algorithm ed25519 and a signature")
    elif sig.get("key") != bundle.signer.key:
        problems.append(f"{SIGNATURE}: key is not the signer's the manifest names")
    elif not signature_valid(
        bundle.signer.public_key,
        signature,
        signed_digest(SIGNATURE_CONTEXT, bundle.members[MANIFEST]),
    ):
        problems.append(
            f"{SIGNATURE}: the signature does not verify: {MANIFEST} was changed after "
            "signing, or signed by another key"
        )
    files = bundle.manifest["files"]
    for name in CONTENT:
        declared = files.get(name)
        digest = hashlib.sha256(bundle.members[name]).hexdigest()
        if not isinstance(declared, Mapping) or not is_hex64(declared.get("sha256")):
            problems.append(f"{MANIFEST}: files.{name} has no sha256")
        elif declared["sha256"] != digest or declared.get("bytes") != len(bundle.members[name]):
            problems.append(
                f"{name}: its sha256 is {digest[:16]}..., the manifest signed "
                f"{str(declared['sha256'])[:16]}...: it was changed after signing"
            )
    return problems
