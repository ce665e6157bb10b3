"""What a report is, before it is HTML or PDF: figures and tables, each carrying its sources.

Every figure names where it comes from: the ledger entries (site, seq, hash) whose payloads it
was computed from; for what the site holds (clips, files), the catalogue query; for what the
site declares (storage place and period, responsible person), its settings in ``onshore.toml``.
A reader of the report checks a figure by reading those entries (``onshore ledger show --site S
--since N``), running that query, or reading that key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Chart", "Figure", "Report", "Source", "TableBlock"]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a figure comes from: one ledger entry, or (``seq`` None) a catalogue query or a
    key of the site's settings."""

    site: str
    kind: str
    """The entry's kind; ``catalogue`` for what the site's catalogue holds; ``settings`` for
    what the site's table in ``onshore.toml`` declares."""
    seq: int | None = None
    hash: str | None = None
    detail: str = ""
    """For a catalogue source, the query in words; for a settings source, the file and key."""

    @property
    def key(self) -> tuple[str, str, int | None, str]:
        """What makes two sources the same source (an entry, or one catalogue query)."""
        return (self.site, self.kind, self.seq, self.detail if self.seq is None else "")

    @property
    def ref(self) -> str:
        """A short label: ``site#seq`` for an entry, ``site:catalogue`` or ``site:settings``."""
        return f"{self.site}#{self.seq}" if self.seq is not None else f"{self.site}:{self.kind}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "kind": self.kind,
            "seq": self.seq,
            "hash": self.hash,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Figure:
    """One number or fact a report states, and the sources it was computed from."""

    key: str
    """Stable name, e.g. ``subjects_sent.anonymized_motion``."""
    label: str
    value: int | str
    sources: tuple[Source, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value,
            "sources": [s.as_dict() for s in self.sources],
        }


@dataclass(frozen=True, slots=True)
class TableBlock:
    """A table; each row carries the sources of its cells (usually one ledger entry)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    sources: tuple[tuple[Source, ...], ...]
    empty: str = "none"
    """What the report says when there are no rows."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [
                {"cells": list(r), "sources": [s.as_dict() for s in src]}
                for r, src in zip(self.rows, self.sources, strict=True)
            ],
        }


@dataclass(frozen=True, slots=True)
class Chart:
    """A picture in the report: PNG bytes and a caption."""

    title: str
    png: bytes
    caption: str = ""


@dataclass(slots=True)
class Report:
    """One report: its kind, scope, figures, tables and pictures."""

    kind: str
    site: str
    title: str
    scope: str
    """The window or counterparty the report covers, in words."""
    generated: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[TableBlock] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, key: str) -> Figure:
        """The figure named ``key``; raises KeyError when the report has none."""
        for fig in self.figures:
            if fig.key == key:
                return fig
        raise KeyError(key)

    def sources(self) -> list[Source]:
        """Every distinct source the report cites, ledger entries first by site and seq."""
        seen: dict[tuple[str, str, int | None, str], Source] = {}
        for fig in self.figures:
            for s in fig.sources:
                seen.setdefault(s.key, s)
        for table in self.tables:
            for row in table.sources:
                for s in row:
                    seen.setdefault(s.key, s)
        return sorted(
            seen.values(), key=lambda s: (s.seq is None, s.site, s.seq or 0, s.kind, s.detail)
        )

    def as_dict(self) -> dict[str, Any]:
        """The report's content as JSON (charts by title only)."""
        return {
            "kind": self.kind,
            "site": self.site,
            "title": self.title,
            "scope": self.scope,
            "generated": self.generated,
            "figures": [f.as_dict() for f in self.figures],
            "tables": [t.as_dict() for t in self.tables],
            "charts": [c.title for c in self.charts],
            "notes": list(self.notes),
        }
