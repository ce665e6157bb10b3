"""Where a project keeps its releases and licences, and the ledgers they are checked against.

``<project>/releases/<version>/model-<version>.onshore`` holds each release's bundle and
``<project>/licences/<id>.json`` each licence. What was released, granted, refused and revoked
is recorded in the coordinator's ledger (kinds :data:`RELEASE_CREATED`, :data:`RELEASE_REFUSED`,
:data:`LICENCE_GRANTED`, :data:`LICENCE_REFUSED`, :data:`LICENCE_REVOKED`); the model updates a
release was trained from are entries in the sites' ledgers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url

from onshore.errors import ConfigError, OnshoreError, ReleaseNotFound
from onshore.ledger import Ledger, VerifyReport, verify
from onshore.release.bundle import BUNDLE_SUFFIX
from onshore.settings import CoordinatorSettings, Project, SiteSettings
from onshore.sites.keystore import SiteKeys, load_keystore
from onshore.store.catalogue import Catalogue

__all__ = [
    "LICENCES_DIR",
    "LICENCE_GRANTED",
    "LICENCE_REFUSED",
    "LICENCE_REVOKED",
    "RELEASES_DIR",
    "RELEASE_CREATED",
    "RELEASE_REFUSED",
    "bundle_path",
    "check_version",
    "coordinator_ledger",
    "find_bundle",
    "reachable_ledger",
    "verify_coordinator",
]

RELEASES_DIR: Final = "releases"
LICENCES_DIR: Final = "licences"

RELEASE_CREATED: Final = "release_created"
RELEASE_REFUSED: Final = "release_refused"
LICENCE_GRANTED: Final = "licence_granted"
LICENCE_REFUSED: Final = "licence_refused"
LICENCE_REVOKED: Final = "licence_revoked"

_VERSION: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")


def check_version(version: str) -> str:
    """``version`` if it can name a release (letters, digits, ``.+_-``, e.g. ``1.0.0``)."""
    if not _VERSION.fullmatch(version):
        raise ConfigError(
            f"release version {version!r} is not valid",
            hint="use letters, digits and . + _ - only, e.g. 1.0.0",
        )
    return version


def bundle_path(project: Project, version: str) -> Path:
    """Where the bundle of release ``version`` is (or will be) kept."""
    check_version(version)
    return project.root / RELEASES_DIR / version / f"model-{version}{BUNDLE_SUFFIX}"


def find_bundle(project: Project, version: str) -> Path:
    """The bundle of release ``version``; raises :class:`ReleaseNotFound` naming the ones
    there are."""
    path = bundle_path(project, version)
    if not path.is_file():
        folder = project.root / RELEASES_DIR
        known = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        raise ReleaseNotFound(
            f"no release {version} in {project.root} (no {path.relative_to(project.root)})",
            hint=f"released versions: {', '.join(known) or 'none'}; "
            "make one with 'onshore release create --run RUN --version V'",
        )
    return path


def _missing_sqlite(url: str) -> bool:
    """Whether ``url`` is a SQLite file that does not exist: opening it would create an empty
    database, which must never pass for a ledger that could not be reached."""
    try:
        parsed = make_url(url)
    except Exception:
        return False
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return False
    return parsed.database != ":memory:" and not Path(parsed.database).is_file()


@contextmanager
def coordinator_ledger(project: Project, keys: SiteKeys | None = None) -> Iterator[Ledger]:
    """The coordinator's ledger: with ``keys`` it can append (opening it writes its genesis
    entry if it has none), without it is read-only. Raises :class:`ConfigError` when a
    read-only open finds no ledger database there."""
    coord = project.settings.coordinator
    url = project.catalogue_url(coord)
    if keys is None and _missing_sqlite(url):
        raise ConfigError(
            f"the coordinator {coord.id} has no ledger at {url}",
            hint="a federated run writes it; check [coordinator] catalogue in onshore.toml",
        )
    if keys is not None and "://" not in coord.store:
        (project.root / coord.store).mkdir(parents=True, exist_ok=True)
    catalogue = Catalogue(url, coord.id)
    try:
        yield Ledger.open(catalogue, keys)
    finally:
        catalogue.close()


@contextmanager
def reachable_ledger(
    project: Project, party: SiteSettings | CoordinatorSettings
) -> Iterator[tuple[Ledger | None, str | None]]:
    """``party``'s ledger opened read-only, or ``(None, why)`` when it cannot be reached (no
    database there, a database that does not answer)."""
    url = project.catalogue_url(party)
    if _missing_sqlite(url):
        yield None, f"no ledger database for {party.id} at {url}"
        return
    try:
        catalogue = Catalogue(url, party.id)
    except OnshoreError as exc:
        yield None, f"the ledger of {party.id} could not be opened: {exc}"
        return
    try:
        yield Ledger.open(catalogue), None
    finally:
        catalogue.close()


def verify_coordinator(project: Project) -> VerifyReport:
    """Verify the coordinator's ledger: chain, signatures, and its pinned key against the
    coordinator's keystore (a keystore that cannot be read becomes a note). Raises
    :class:`ConfigError` when the coordinator has no ledger yet."""
    coordinator = project.settings.coordinator
    notes: list[str] = []
    current = None
    try:
        current = load_keystore(project.keystore_path(coordinator)).public_key
    except OnshoreError as exc:
        notes.append(f"keystore not read, so the pinned key was not compared with it: {exc}")
    with coordinator_ledger(project) as ledger:
        report = verify(ledger, current_key=current)
    return replace(report, notes=(*report.notes, *notes))
