"""The shared vocabulary: what data *is*, how de-identified it is, and which legal mechanisms exist.

These ids are public interface. Classification labels clips with the categories, de-identification
stamps the states, approvals name the mechanisms, and every rulebook (built-in or a user's own)
maps the categories to its own legal classes. A rulebook may only use the ids listed here, so a
typo in a user's rulebook is an error with a line number, not a rule that silently never matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, get_args

__all__ = [
    "APPROVAL_MECHANISMS",
    "CATEGORIES",
    "DEID_STATES",
    "MECHANISMS",
    "PROHIBITED",
    "PURPOSES",
    "CategoryId",
    "CategoryInfo",
    "DeidState",
    "MechanismId",
    "MechanismInfo",
    "SubjectKind",
]

CategoryId = Literal[
    "vehicle_id",
    "trajectory",
    "sensitive_area_geodata",
    "vehicle_flow",
    "outside_video_identifiable",
    "outside_video_masked",
    "cabin_video",
    "biometric",
    "charging",
    "anonymized_motion",
    "model_parameters",
    "aggregate_metrics",
]
"""A data category id (the type of :data:`CATEGORIES`' keys)."""

DeidState = Literal["raw", "pseudonymized", "anonymized"]
"""How far data has been de-identified: ``raw`` (as recorded), ``pseudonymized`` (ids replaced by
keyed pseudonyms, still personal data), ``anonymized`` (no person can be singled out any more)."""

DEID_STATES: Final[tuple[DeidState, ...]] = get_args(DeidState)
"""The de-identification states, from least to most de-identified."""

SubjectKind = Literal["vehicle", "person", "none"]
"""What one subject of a category is when classification counts them."""

MechanismId = Literal[
    "cn_security_assessment",
    "cn_standard_contract",
    "cn_certification",
    "eu_adequacy",
    "eu_dpf",
    "eu_scc",
    "eu_bcr",
]
"""A legal mechanism an approval on file can be (the type of approvals' ``type``)."""

PROHIBITED: Final = "prohibited"
"""Not a mechanism but the outcome where none can help: listed with them because a compliance
officer reads "required: prohibited" in the same place as "required: cn_security_assessment"."""


@dataclass(frozen=True, slots=True)
class CategoryInfo:
    """One data category: its id, what it holds, and what a subject of it is."""

    id: CategoryId
    description: str
    subject: SubjectKind


@dataclass(frozen=True, slots=True)
class MechanismInfo:
    """One legal mechanism: its id, the jurisdiction whose law provides it, and what it is."""

    id: str
    jurisdiction: str
    description: str


def _categories(*infos: CategoryInfo) -> MappingProxyType[str, CategoryInfo]:
    found = {info.id: info for info in infos}
    assert tuple(found) == get_args(CategoryId), "CATEGORIES and CategoryId disagree"
    return MappingProxyType(found)


CATEGORIES: Final = _categories(
    CategoryInfo(
        "vehicle_id",
        "Identifiers of a vehicle or its owner: VIN, plate, account or device ids "
        "(raw or pseudonymised).",
        "vehicle",
    ),
    CategoryInfo(
        "trajectory",
        "Positions linked to a vehicle, precise to better than 1 km (absolute WGS-84 or GCJ-02 "
        "coordinates with time).",
        "vehicle",
    ),
    CategoryInfo(
        "sensitive_area_geodata",
        "Positions inside a sensitive-area geofence (military, defence-industry and government "
        "sites).",
        "vehicle",
    ),
    CategoryInfo(
        "vehicle_flow",
        "Counts and flows of vehicles over roads and time, not linked to one vehicle; the kind "
        "of data that reflects traffic and economic activity.",
        "vehicle",
    ),
    CategoryInfo(
        "outside_video_identifiable",
        "Camera frames of the outside of the vehicle with unmasked faces or licence plates.",
        "person",
    ),
    CategoryInfo(
        "outside_video_masked",
        "Camera frames of the outside of the vehicle with faces and plates masked.",
        "person",
    ),
    CategoryInfo(
        "cabin_video",
        "Video, images or audio recorded inside the cabin (drivers and passengers).",
        "person",
    ),
    CategoryInfo(
        "biometric",
        "Biometric data: face templates, voice prints, fingerprints, driver-monitoring features.",
        "person",
    ),
    CategoryInfo(
        "charging",
        "Charging-network operating data: chargers, sessions, loads.",
        "vehicle",
    ),
    CategoryInfo(
        "anonymized_motion",
        "Clip-local positions and relative time with no vehicle id: no absolute position or time.",
        "vehicle",
    ),
    CategoryInfo(
        "model_parameters",
        "Parameters (or updates of them) of a model trained on fleet data.",
        "none",
    ),
    CategoryInfo(
        "aggregate_metrics",
        "Aggregate figures such as a model's error on a test split: no rows, no parameters.",
        "none",
    ),
)
"""Every data category, by id."""


def _mechanisms(*infos: MechanismInfo) -> MappingProxyType[str, MechanismInfo]:
    found = {info.id: info for info in infos}
    assert tuple(found) == get_args(MechanismId), "MECHANISMS and MechanismId disagree"
    return MappingProxyType(found)


APPROVAL_MECHANISMS: Final = _mechanisms(
    MechanismInfo(
        "cn_security_assessment",
        "CN",
        "CAC outbound data security assessment (PIPL Art. 38, Order 7 Arts. 11-12).",
    ),
    MechanismInfo(
        "cn_standard_contract",
        "CN",
        "Chinese standard contract for outbound personal information, filed with the "
        "provincial CAC.",
    ),
    MechanismInfo(
        "cn_certification",
        "CN",
        "Personal-information protection certification for outbound transfers.",
    ),
    MechanismInfo(
        "eu_adequacy",
        "EU",
        "An adequacy decision of the European Commission covering the destination (GDPR Art. 45).",
    ),
    MechanismInfo(
        "eu_dpf",
        "EU",
        "The recipient's certification under the EU-US Data Privacy Framework (Decision "
        "2023/1795).",
    ),
    MechanismInfo(
        "eu_scc",
        "EU",
        "Standard contractual clauses (Decision 2021/914, GDPR Art. 46) with a transfer impact "
        "assessment.",
    ),
    MechanismInfo(
        "eu_bcr",
        "EU",
        "Binding corporate rules approved for the recipient's group (GDPR Art. 47).",
    ),
)
"""The mechanisms an approval on file can be, by id."""

MECHANISMS: Final = MappingProxyType(
    {
        **APPROVAL_MECHANISMS,
        PROHIBITED: MechanismInfo(
            PROHIBITED, "*", "No mechanism can make this transfer lawful: it must not happen."
        ),
    }
)
"""The mechanism ids a decision can name: every approval mechanism, and ``prohibited``."""

PURPOSES: Final = MappingProxyType(
    {
        "adas_training": "Training driving-automation (ADAS / automated driving) models.",
        "fleet_analytics": "Analysing how the fleet is used and how it performs.",
        "hd_mapping": "Building or updating high-definition maps.",
    }
)
"""Purposes the built-in rulebooks know. Purposes are open: a request and an approval may share
any name; the built-in rulebooks give special meaning only to ``adas_training``."""
