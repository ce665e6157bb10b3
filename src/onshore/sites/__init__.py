"""Sites: the regional data centres a project declares, and how a project is created.

``init_project`` writes ``onshore.toml`` from an example and creates each site's folders and
keystore; ``describe_sites`` is what ``onshore sites`` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from onshore.errors import ConfigError, KeystoreError, ProjectExists
from onshore.files import write_atomically
from onshore.settings import CONFIG_NAME, Project, load_project, redact_url
from onshore.sites.keystore import create_keystore, load_keystore

__all__ = ["EXAMPLES", "describe_sites", "init_project"]

_THREE_REGIONS: Final = """\
# An onshore project: one carmaker, three regional data centres.
# Relative paths are relative to this file. Secrets are not here: each site's keys live in
# its keystore folder, readable only by its owner.

[project]
name = "three-regions"

[sites.cn-shanghai]
jurisdiction = "CN"
entity = "Onshore Mobility (Shanghai) Co., Ltd."
store = "sites/cn-shanghai/store"                                   # any fsspec URL
catalogue = "sqlite:///sites/cn-shanghai/store/catalogue.sqlite"    # any SQLAlchemy URL
keystore = "keys/cn-shanghai"
compute = { device = "cpu", relative_throughput = 0.5, accelerators = "export-capped (H20 class)" }
fleet = { fleet_share = 0.3, no_consent_share = 0.15 }
privacy = { epsilon = 8.0, delta = 1e-5 }     # DP budget for all training on this site's data
retention = { raw_days = 365, deidentified_days = 1095 }  # storage period the reports state

[sites.cn-shanghai.responsible_person]  # who answers for data security; reports name them
name = "Li Wei"
role = "Data security officer"
email = "li.wei@example.com"

[sites.eu-frankfurt]
jurisdiction = "EU"
entity = "Onshore Mobility Europe GmbH"
country = "DE"
store = "sites/eu-frankfurt/store"
catalogue = "sqlite:///sites/eu-frankfurt/store/catalogue.sqlite"
keystore = "keys/eu-frankfurt"
compute = { device = "cpu", relative_throughput = 1.0, accelerators = "H100 class" }
fleet = { fleet_share = 0.3, no_consent_share = 0.1 }
privacy = { epsilon = 8.0, delta = 1e-5 }
retention = { raw_days = 180, deidentified_days = 730 }

[sites.eu-frankfurt.responsible_person]
name = "Anna Weber"
role = "Data protection officer"
email = "anna.weber@example.com"

[sites.us-oregon]
jurisdiction = "US"
entity = "Onshore Mobility Inc."
store = "sites/us-oregon/store"
catalogue = "sqlite:///sites/us-oregon/store/catalogue.sqlite"
keystore = "keys/us-oregon"
compute = { device = "cpu", relative_throughput = 1.0, accelerators = "H100 class" }
fleet = { fleet_share = 0.3, no_consent_share = 0.2 }
privacy = { epsilon = 8.0, delta = 1e-5 }
retention = { raw_days = 365, deidentified_days = 1095 }

[sites.us-oregon.responsible_person]
name = "Jordan Reed"
role = "Data compliance officer"
email = "jordan.reed@example.com"

# The coordinator of federated training: it receives each site's model updates (every one
# through that site's gate), aggregates them, and releases the model.
[coordinator]
entity = "Onshore Mobility Europe GmbH"
country = "DE"
store = "coordinator/store"
catalogue = "sqlite:///coordinator/store/catalogue.sqlite"
keystore = "keys/coordinator"
"""

EXAMPLES: Final = {"three-regions": _THREE_REGIONS}
"""The project templates ``onshore init --example`` knows."""


def init_project(folder: Path, example: str = "three-regions") -> Project:
    """Create a project in ``folder`` from ``example``: ``onshore.toml``, each site's local store
    folder and its keystore. Raises :class:`ProjectExists` rather than overwrite anything."""
    if example not in EXAMPLES:
        raise ConfigError(
            f"unknown example {example!r}", hint=f"known examples: {', '.join(EXAMPLES)}"
        )
    config = folder / CONFIG_NAME
    if config.exists():
        raise ProjectExists(
            f"{config} already exists", hint="choose another folder, or edit the file you have"
        )
    write_atomically(config, EXAMPLES[example].encode())
    project = load_project(folder)
    for site in project.settings.sites.values():
        if "://" not in site.store:
            (project.root / site.store).mkdir(parents=True, exist_ok=True)
        create_keystore(project.keystore_path(site))
    coordinator = project.settings.coordinator
    if "://" not in coordinator.store:
        (project.root / coordinator.store).mkdir(parents=True, exist_ok=True)
    create_keystore(project.keystore_path(coordinator))
    return project


def describe_sites(project: Project) -> list[dict[str, Any]]:
    """One record per site, as ``onshore sites --json`` prints it (no secrets)."""
    rows = []
    for site in project.settings.sites.values():
        keystore = project.keystore_path(site)
        rows.append(
            {
                "id": site.id,
                "jurisdiction": site.jurisdiction,
                "entity": site.entity,
                "store": redact_url(project.store_url(site)),
                "catalogue": redact_url(project.catalogue_url(site)),
                "keystore": str(keystore),
                "keystore_status": _keystore_status(keystore),
                "compute": site.compute.model_dump(),
                "fleet_profile": site.region_profile,
            }
        )
    return rows


def _keystore_status(folder: Path) -> str:
    """``ok``, or why the site's keys cannot be used (missing, unreadable, exposed)."""
    try:
        load_keystore(folder)
    except KeystoreError as exc:
        return str(exc)
    return "ok"
