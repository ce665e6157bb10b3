"""``diff``: what changed between two versions of a rulebook, entry by entry.

Entries (rules, memberships, mechanisms, country sets, obligations, software restrictions) are
matched by id; for a changed one every field that differs is listed with its value before and
after, nested fields by dotted path (``count.when``). Header fields (version, effective date,
territory...) are compared the same way under the section ``rulebook``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from onshore.rulebook.model import Rulebook

__all__ = ["Change", "FieldChange", "RulebookDiff", "diff"]

ChangeKind = Literal["added", "removed", "changed"]

_SECTIONS = (
    "country_sets",
    "classes",
    "memberships",
    "mechanisms",
    "rules",
    "obligations",
    "software_restrictions",
)


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of an entry that differs."""

    field: str
    before: Any
    after: Any

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class Change:
    """One entry added, removed or changed."""

    kind: ChangeKind
    section: str
    """``rulebook`` (header), ``rules``, ``memberships``, ``mechanisms``..."""
    id: str
    fields: tuple[FieldChange, ...] = ()
    """For ``changed``: the fields that differ."""
    confidence: str | None = None
    """The entry's confidence after the change (before, for a removal)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "section": self.section,
            "id": self.id,
            "confidence": self.confidence,
            "fields": [f.as_dict() for f in self.fields],
        }

    def __str__(self) -> str:
        sign = {"added": "+", "removed": "-", "changed": "~"}[self.kind]
        head = f"{sign} {self.section} {self.id}"
        lines = [head] + [f"    {f.field}: {f.before!r} -> {f.after!r}" for f in self.fields]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RulebookDiff:
    """The differences between two rulebooks."""

    old: str
    """``jurisdiction version (file)`` of the old one."""
    new: str
    changes: tuple[Change, ...]

    @property
    def same(self) -> bool:
        return not self.changes

    def as_dict(self) -> dict[str, Any]:
        """The diff as ``diff --json`` prints it."""
        counts = {
            k: sum(c.kind == k for c in self.changes) for k in ("added", "removed", "changed")
        }
        return {
            "old": self.old,
            "new": self.new,
            "same": self.same,
            "summary": counts,
            "changes": [c.as_dict() for c in self.changes],
        }


def _entries(book: Rulebook) -> dict[str, dict[str, dict[str, Any]]]:
    dump = book.model_dump(mode="json", by_alias=True, exclude_none=True)
    sections: dict[str, dict[str, dict[str, Any]]] = {
        name: dump.get(name, {}) for name in _SECTIONS if name != "memberships"
    }
    sections["memberships"] = {}
    for class_id, legal in sections["classes"].items():
        for member_id, member in legal.pop("members", {}).items():
            sections["memberships"][member_id] = {"class": class_id, **member}
    header = {k: v for k, v in dump.items() if k not in _SECTIONS}
    sections["rulebook"] = {book.jurisdiction: header}
    return sections


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _field_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    flat_before = dict(_flatten(before))
    flat_after = dict(_flatten(after))
    out = []
    for key in dict.fromkeys([*flat_before, *flat_after]):
        if key == "id":
            continue
        old, new = flat_before.get(key), flat_after.get(key)
        if old != new:
            out.append(FieldChange(key, old, new))
    return tuple(out)


def _label(book: Rulebook) -> str:
    return f"{book.jurisdiction} {book.version} ({book.file or 'unsaved'})"


def diff(old: Rulebook, new: Rulebook) -> RulebookDiff:
    """What changed from ``old`` to ``new``: entries added, removed, and changed field by field."""
    before, after = _entries(old), _entries(new)
    changes: list[Change] = []
    for section in ("rulebook", *_SECTIONS):
        old_entries, new_entries = before[section], after[section]
        if section == "rulebook":  # the jurisdiction itself may differ: compare headers directly
            old_entries = {"header": next(iter(old_entries.values()))}
            new_entries = {"header": next(iter(new_entries.values()))}
        for entry_id, body in old_entries.items():
            if entry_id not in new_entries:
                changes.append(Change("removed", section, entry_id, (), body.get("confidence")))
        for entry_id, body in new_entries.items():
            if entry_id not in old_entries:
                changes.append(Change("added", section, entry_id, (), body.get("confidence")))
                continue
            fields = _field_changes(old_entries[entry_id], body)
            if fields:
                changes.append(Change("changed", section, entry_id, fields, body.get("confidence")))
    return RulebookDiff(_label(old), _label(new), tuple(changes))
