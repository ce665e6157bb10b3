"""The model card a release carries: what the model is, whose data trained it and where, how
well it forecasts in each region against the baseline, what privacy each site spent on it,
which rulebooks were in force, and who developed and operated it, established where.

The parties matter at load time: a software restriction (the US rule on automated-driving
software from persons linked to China or Russia) applies to a release by who made it, and the
card, signed with the release, is where a licensee's loader reads that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from onshore.errors import BundleInvalid
from onshore.parties.identity import site_facts
from onshore.release.lineage import LineageReport
from onshore.settings import Project

__all__ = ["CARD_FORMAT", "SOFTWARE", "Party", "build_card", "parties"]

CARD_FORMAT: Final = "onshore.model_card/1"

SOFTWARE: Final = "automated_driving"
"""The kind of vehicle software a released model is, in the vocabulary of the rulebooks'
``software_restrictions``: it forecasts the ego vehicle's path for driving automation."""


@dataclass(frozen=True, slots=True)
class Party:
    """A legal person who made the model, as the card names it."""

    role: Literal["developer", "operator"]
    """``developer``: the coordinator, which designed, aggregated and releases the model.
    ``operator``: the operator of a site whose data, and whose compute, trained it."""
    entity: str
    country: str
    """Where the entity is established."""
    linked_to: tuple[str, ...]
    """Countries it is linked to besides (owners, headquarters, control)."""
    party: str
    """The site's or the coordinator's id."""

    @property
    def links(self) -> tuple[str, ...]:
        """Every country the party is tied to: where it is established, and its links."""
        return (self.country, *(c for c in self.linked_to if c != self.country))

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "entity": self.entity,
            "country": self.country,
            "linked_to": list(self.linked_to),
            "party": self.party,
        }

    def describe(self) -> str:
        """The party in words: ``ENTITY (operator of SITE, established in CN)``."""
        role = "developer" if self.role == "developer" else f"operator of {self.party}"
        linked = f", linked to {', '.join(self.linked_to)}" if self.linked_to else ""
        return f"{self.entity} ({role}, established in {self.country}{linked})"


def parties(card: Mapping[str, Any]) -> list[Party]:
    """The parties a card names; raises :class:`BundleInvalid` naming the malformed field."""
    found = card.get("parties")
    if not isinstance(found, list) or not found:
        raise BundleInvalid("card.json: parties is missing or empty")
    out = []
    for i, item in enumerate(found):
        where = f"card.json: parties[{i}]"
        if not isinstance(item, Mapping):
            raise BundleInvalid(f"{where} is not an object")
        role, entity, country, party = (item.get(k) for k in ("role", "entity", "country", "party"))
        linked = item.get("linked_to", [])
        if role not in ("developer", "operator"):
            raise BundleInvalid(f"{where}.role is {role!r}, not developer or operator")
        if not all(isinstance(v, str) and v for v in (entity, country, party)):
            raise BundleInvalid(f"{where} needs entity, country and party")
        if not isinstance(linked, list) or not all(isinstance(c, str) for c in linked):
            raise BundleInvalid(f"{where}.linked_to is not a list of country codes")
        out.append(Party(role, str(entity), str(country), tuple(linked), str(party)))
    return out


def build_card(
    project: Project,
    *,
    version: str,
    created: str,
    summary: Mapping[str, Any],
    lineage: LineageReport,
    trained_sites: list[str],
    rulebook_versions: Mapping[str, str],
    parameters: int,
    sizes: Mapping[str, int],
) -> dict[str, Any]:
    """The card of release ``version`` of the federated run ``summary`` describes.
    ``trained_sites``: the sites with an update in the lineage, in order of first use."""
    coord = project.settings.coordinator
    members: list[Party] = [
        Party("developer", coord.entity, coord.country, tuple(coord.linked_to), coord.id)
    ]
    sites = []
    for site_id in trained_sites:
        site = site_facts(project, site_id)
        contribution = lineage.sites.get(site_id)
        # In federated training each site's operator runs the training on its own data and
        # hardware and sends the parameters the model is averaged from: it takes part in
        # developing the model, so the card names it beside the coordinator.
        members.append(
            Party("operator", site.entity, site.location, tuple(site.linked_to), site.id)
        )
        sites.append(
            {
                "id": site.id,
                "jurisdiction": site.jurisdiction,
                "country": site.location,
                "entity": site.entity,
                "updates": contribution.updates if contribution else None,
                "rounds": sorted(contribution.rounds) if contribution else [],
                "accelerators": site.accelerators,
            }
        )
    regions = {}
    for site_id, region in (summary.get("regions") or {}).items():
        regions[site_id] = {
            "jurisdiction": region.get("jurisdiction"),
            "trained_on": site_id in trained_sites,
            "ade": region.get("ade"),
            "fde": region.get("fde"),
            "miss_rate": region.get("miss_rate"),
            "samples": region.get("samples"),
            "baselines": region.get("baselines", {}),
        }
    epsilon = summary.get("epsilon") or {}
    delta = summary.get("delta") or {}
    privacy = {}
    budgets = summary.get("budget_epsilon") or {}
    for site_id in summary.get("options", {}).get("sites", []):
        region = (summary.get("regions") or {}).get(site_id) or {}
        privacy[site_id] = {
            "dp": bool(summary.get("dp")),
            "epsilon_this_run": epsilon.get(site_id),
            "epsilon_spent_in_all": region.get("epsilon_total"),
            "delta": delta.get(site_id),
            "budget_epsilon": budgets.get(site_id),
        }
    model = summary.get("model") or {}
    return {
        "format": CARD_FORMAT,
        "name": f"{project.settings.name} driving model",
        "version": version,
        "run": summary.get("run"),
        "created": created,
        "software": SOFTWARE,
        "architecture": {
            "name": model.get("name"),
            "config": dict(model.get("config") or {}),
            "sizes": dict(sizes),
            "parameters": parameters,
            "task": "forecast the ego vehicle's next positions from its past and the objects "
            "tracked around it",
        },
        "training": {
            "mode": "federated",
            "strategy": summary.get("strategy"),
            "rounds": summary.get("rounds"),
            "dp": summary.get("dp"),
            "purpose": (summary.get("options") or {}).get("purpose"),
            "finished_at": summary.get("finished_at"),
        },
        "sites": sites,
        "regions": regions,
        "privacy": privacy,
        "rulebooks": {
            "at_release": dict(rulebook_versions),
            "updates": {s: dict(c.rulebook_versions) for s, c in lineage.sites.items()},
        },
        "parties": [p.as_dict() for p in members],
    }
