"""What the law forbids of a released model whatever a licence says: the rulebooks'
``software_restrictions`` applied to the parties a model card names.

The rule comes from the rulebooks, never from code: the built-in US rulebook carries 15 CFR 791
subpart D (from model year 2027, no automated-driving software from persons linked to China or
Russia in vehicles sold in the US) as ``us.bis.connected_vehicles_ads``; a user's rulebook can
change or add such restrictions, and this module applies whatever is there.

Who counts as a person the software is "from": RULEBOOK.md reads the rule as applying to a
release "whose developers include a China-linked entity". In federated training the model is
averaged from parameters each site's operator computed on its own hardware from its own data,
so onshore counts the operators of the sites whose updates went into the model as developers
beside the coordinator (the card's ``parties``): a model trained in part by a China-established
operator is software developed in part by a person subject to Chinese jurisdiction. A party is
linked to the country where it is established and to every country of its ``linked_to``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from onshore.release.card import Party
from onshore.rulebook import Rulebook, Rulebooks, SoftwareRestriction, restricted_software

__all__ = ["Prohibition", "prohibitions"]


@dataclass(frozen=True, slots=True)
class Prohibition:
    """A software restriction that forbids a use, the rulebook it is in, and whom it hits."""

    rule: str
    rulebook: str
    rulebook_version: str
    summary: str
    source: str
    confidence: str
    from_model_year: int
    market: str
    software: str
    tied_to: tuple[str, ...]
    """The countries a party must not be linked to."""
    parties: tuple[Party, ...]

    @property
    def reason(self) -> str:
        """The sentence a refusal gives."""
        who = "; ".join(p.describe() for p in self.parties)
        return (
            f"Prohibited by law: rule {self.rule} of the {self.rulebook} rulebook "
            f"{self.rulebook_version} forbids {self.software} software from persons linked to "
            f"{', '.join(self.tied_to)} in vehicles sold in {self.market} from model year "
            f"{self.from_model_year} (source: {self.source}); the model card names {who}."
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "rulebook": self.rulebook,
            "rulebook_version": self.rulebook_version,
            "summary": self.summary,
            "source": self.source,
            "confidence": self.confidence,
            "from_model_year": self.from_model_year,
            "market": self.market,
            "software": self.software,
            "tied_to": list(self.tied_to),
            "parties": [p.as_dict() for p in self.parties],
            "reason": self.reason,
        }


def prohibitions(
    rulebooks: Rulebooks,
    parties: Sequence[Party],
    *,
    territory: str,
    model_year: int,
    software: str,
    on: date,
) -> list[Prohibition]:
    """The restrictions in ``rulebooks`` that forbid ``software`` made by ``parties`` in
    vehicles of ``model_year`` sold in ``territory`` on ``on``. Empty: the law forbids none
    of it (a licence still has to allow it)."""
    hits: dict[tuple[str, str], tuple[Rulebook, SoftwareRestriction, list[Party]]] = {}
    for party in parties:
        for book, restriction in restricted_software(
            rulebooks,
            developers_linked_to=party.links,
            market=territory,
            model_year=model_year,
            software=software,
            on=on,
        ):
            slot = hits.setdefault((book.key, restriction.id), (book, restriction, []))
            slot[2].append(party)
    return [
        Prohibition(
            rule=restriction.id,
            rulebook=book.key,
            rulebook_version=book.version,
            summary=" ".join(restriction.summary.split()),
            source=restriction.source,
            confidence=restriction.confidence,
            from_model_year=restriction.from_model_year,
            market=territory,
            software=software,
            tied_to=tuple(sorted(book.countries(restriction.developers_tied_to))),
            parties=tuple(found),
        )
        for book, restriction, found in hits.values()
    ]
