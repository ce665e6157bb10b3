"""What a transfer would move: a selection of a site's data, and what the law calls it.

A selection names a source and, optionally, filters::

    raw                              every raw clip (and its camera frames)
    export                           the clips' de-identified version under profile ``export``
    training:since=2026-03-01        ... recorded on or after a day
    raw:clips=cn-7-0001-003+cn-7-0002-001
    export:until=2026-03-31,consent=true

The gate then classifies exactly what would leave: raw clips are classified on the spot (the
same labels as ``onshore classify``), and a profile's outputs carry the categories their
transforms leave, in the state their checks proved. Subjects are counted as the rulebooks count
them: distinct vehicles for vehicle categories, and persons and plates seen in frames (an upper
bound) for video.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import orjson

from onshore.classify import label_clips
from onshore.deidentify.profiles import Profile
from onshore.errors import ConfigError
from onshore.rulebook.categories import CATEGORIES
from onshore.rulebook.evaluate import DataItem
from onshore.store.catalogue import ClipRecord, LabelRecord
from onshore.store.site import SiteStore

__all__ = ["Dataset", "Selection", "StoredRef", "resolve"]

_STATES: Final = ("raw", "pseudonymized", "anonymized")


@dataclass(frozen=True, slots=True)
class Selection:
    """A source (``raw`` or a de-identification profile) and filters on its clips."""

    source: str
    clips: tuple[str, ...] | None = None
    since: date | None = None
    until: date | None = None
    consent: bool | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Selection:
        """Parse ``SOURCE[:key=value,...]``; raises ConfigError naming what is wrong."""
        source, _, filters = text.strip().partition(":")
        if not source:
            raise ConfigError(
                f"--dataset {text!r}: no source", hint="e.g. raw, export, training:since=2026-03-01"
            )
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for part in filter(None, (p.strip() for p in filters.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise ConfigError(f"--dataset {text!r}: filter {part!r} is not key=value")
            if key in seen:
                raise ConfigError(f"--dataset {text!r}: filter {key!r} is given twice")
            seen.add(key)
            if key == "clips":
                values["clips"] = tuple(c for c in value.split("+") if c)
            elif key in ("since", "until"):
                try:
                    values[key] = date.fromisoformat(value)
                except ValueError:
                    raise ConfigError(
                        f"--dataset {text!r}: {key}={value!r} is not a date (YYYY-MM-DD)"
                    ) from None
            elif key == "consent":
                if value not in ("true", "false"):
                    raise ConfigError(f"--dataset {text!r}: consent must be true or false")
                values["consent"] = value == "true"
            else:
                raise ConfigError(
                    f"--dataset {text!r}: unknown filter {key!r}",
                    hint="filters: clips=ID+ID, since=DATE, until=DATE, consent=true|false",
                )
        return cls(source=source, text=text.strip(), **values)

    def matches(self, clip: ClipRecord) -> bool:
        day = clip.start_time.date()
        return (
            (self.clips is None or clip.clip_id in self.clips)
            and (self.since is None or day >= self.since)
            and (self.until is None or day <= self.until)
            and (self.consent is None or clip.consent_training == self.consent)
        )


@dataclass(frozen=True, slots=True)
class StoredRef:
    """An object of the origin's store that the transfer would copy."""

    path: str
    sha256: str
    kind: str
    """``clip``, ``frames``, ``deidentified`` or ``deidentified_frames``."""


@dataclass(slots=True)
class Dataset:
    """What a selection resolves to at the origin: the objects, the clips, and the data items
    the gate decides on."""

    selection: Selection
    objects: list[StoredRef] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)
    items: list[DataItem] = field(default_factory=list)
    subjects: dict[str, set[str]] = field(default_factory=dict)
    """Per category of :attr:`items`, who its subjects are: VINs for vehicle categories, each
    person or plate seen in a clip's frames (``clip#n``) for the others. Never sent: the
    origin keeps their keyed hashes, so that a person is counted once however often they
    cross (:mod:`onshore.gate.crossings`)."""
    state: str = "raw"
    without_consent: int = 0
    """Selected clips whose driver did not consent to their data training models."""
    withdrawn: int = 0
    """Clips the selection matched but left out: their drivers withdrew consent for the
    transfer's purpose (``onshore consent withdraw``)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.selection.text,
            "source": self.selection.source,
            "clips": len(self.clips),
            "objects": len(self.objects),
            "state": self.state,
            "without_consent": self.without_consent,
            "withdrawn": self.withdrawn,
            "data": [item.model_dump(mode="json") for item in self.items],
        }


def resolve(
    site: SiteStore,
    selection: Selection,
    profile: Profile | None,
    *,
    withdrawn: frozenset[str] = frozenset(),
) -> Dataset:
    """Resolve ``selection`` at ``site``; ``profile`` is the de-identification profile when the
    source is one (None for ``raw``). The clips of ``withdrawn`` vehicles (whose drivers
    withdrew consent for the purpose) are left out and counted. Raises ConfigError when it
    selects nothing."""
    matched = [c for c in site.catalogue.clips() if selection.matches(c)]
    records = [c for c in matched if c.vin not in withdrawn]
    if selection.clips is not None:
        missing = sorted(set(selection.clips) - {c.clip_id for c in records})
        if missing:
            raise ConfigError(
                f"--dataset {selection.text!r}: site {site.site} has no clip "
                + ", ".join(missing[:5]),
            )
    dataset = Dataset(selection, withdrawn=len(matched) - len(records))
    if profile is None:
        _raw(site, records, dataset)
    else:
        _deidentified(site, records, profile, dataset)
    if not dataset.objects:
        left_out = (
            f" ({dataset.withdrawn} clips matched, of drivers who withdrew consent for this "
            "purpose)"
            if dataset.withdrawn
            else ""
        )
        raise ConfigError(
            f"--dataset {selection.text!r} selects nothing at site {site.site}{left_out}",
            hint="check the filters; a profile's outputs exist once 'onshore deidentify' ran",
        )
    return dataset


def _labels(site: SiteStore, records: list[ClipRecord]) -> dict[str, tuple[LabelRecord, ...]]:
    """Each clip's labels, classified now: what leaves is classified as it is."""
    return {found.clip_id: found.labels for found in label_clips(site, records)}


def _items(
    found: Iterable[tuple[str, str, str, int, str]],
) -> tuple[list[DataItem], dict[str, set[str]]]:
    """Data items, and their subjects, from ``(category, clip id, vin, count, state)``:
    distinct vehicles for vehicle categories, summed counts for person categories (each
    person seen in a clip's frames is one, an upper bound); the least de-identified state
    wins."""
    subjects: dict[str, set[str]] = defaultdict(set)
    states: dict[str, str] = {}
    for category, clip_id, vin, count, state in found:
        if CATEGORIES[category].subject == "vehicle":
            subjects[category].add(vin)
        else:
            subjects[category].update(f"{clip_id}#{n}" for n in range(count))
        known = states.get(category, state)
        states[category] = min(known, state, key=_STATES.index)
    items = [
        DataItem.model_validate(
            {
                "category": category,
                "subjects": len(subjects[category]),
                "deid_state": states[category],
            }
        )
        for category in sorted(subjects)
    ]
    return items, dict(subjects)


def _raw(site: SiteStore, records: list[ClipRecord], dataset: Dataset) -> None:
    labels = _labels(site, records)
    frames = {f.clip_id: f for f in site.catalogue.frames([r.clip_id for r in records])}
    for record in records:
        dataset.clips.append(record.clip_id)
        dataset.without_consent += not record.consent_training
        dataset.objects.append(StoredRef(record.path, record.sha256, "clip"))
        if record.clip_id in frames:
            f = frames[record.clip_id]
            dataset.objects.append(StoredRef(f.path, f.sha256, "frames"))
    by_id = {r.clip_id: r for r in records}
    dataset.items, dataset.subjects = _items(
        (label.category, clip_id, by_id[clip_id].vin, label.count, "raw")
        for clip_id, found in labels.items()
        for label in found
    )


def output_category(category: str, profile: Profile) -> str | None:
    """What a raw category becomes in a profile's output (None: the profile removes it)."""
    local = profile.step("to_local") is not None
    match category:
        case "vehicle_id":
            return "vehicle_id" if profile.step("pseudonymise") is not None else None
        case "trajectory":
            return "anonymized_motion" if local else "trajectory"
        case "sensitive_area_geodata":
            return None if profile.step("drop_zones") is not None else category
        case "vehicle_flow":
            # Objects around one ego in its own frame, without road or clock: no flow left.
            return None if local else category
        case "outside_video_identifiable":
            return "outside_video_masked" if profile.step("mask_frames") is not None else category
        case "cabin_video":
            return None  # de-identification never keeps cabin frames
        case _:
            return category


def _deidentified(
    site: SiteStore, records: list[ClipRecord], profile: Profile, dataset: Dataset
) -> None:
    outputs = {o.clip_id: o for o in site.catalogue.deidentified(profile.name)}
    chosen = [r for r in records if r.clip_id in outputs]
    if not chosen:
        return
    labels = _labels(site, chosen)
    seen: set[str] = set()
    found = []
    for record in chosen:
        output = outputs[record.clip_id]
        dataset.clips.append(record.clip_id)
        dataset.without_consent += not output.consent_training
        if output.path not in seen:
            seen.add(output.path)
            dataset.objects.append(StoredRef(output.path, output.sha256, "deidentified"))
        frames = orjson.loads(output.detail).get("frames")
        if frames is not None and frames["path"] not in seen:
            seen.add(frames["path"])
            dataset.objects.append(
                StoredRef(frames["path"], frames["sha256"], "deidentified_frames")
            )
        for label in labels[record.clip_id]:
            after = output_category(label.category, profile)
            if after is None or (after.startswith("outside_video") and frames is None):
                continue
            found.append((after, record.clip_id, record.vin, label.count, output.state))
    dataset.items, dataset.subjects = _items(found)
    dataset.state = min((outputs[r.clip_id].state for r in chosen), key=_STATES.index)
