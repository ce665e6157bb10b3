"""The outcome of a check, one record for every check onshore runs.

De-identification re-runs the checks a profile promises on each output
(:mod:`onshore.deidentify.checks`); loading a released model checks the licence, the bundle and
the law (:mod:`onshore.release.load`); verifying a ledger checks its chain, signatures, store
and the heads its peers hold, and each thing it finds wrong is a check that did not hold, at a
party's entry (:mod:`onshore.ledger.verify`). All three are :class:`Check`, so a report, the
console and ``--json`` read them alike: which check, whether it held, and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Check"]


@dataclass(frozen=True, slots=True)
class Check:
    """Which check, whether it held, and why (what was found, or what makes it hold)."""

    check: str
    held: bool
    reason: str
    site: str | None = None
    """For a check of a party's records: the party whose records (a site, or the
    coordinator)."""
    seq: int | None = None
    """For a check of a ledger: the entry concerned; ``None`` for the ledger as a whole (its
    head) or a stray object."""

    @classmethod
    def failed(cls, site: str, seq: int | None, check: str, reason: str) -> Check:
        """A check of ``site``'s records that did not hold, at entry ``seq``: a problem."""
        return cls(check, False, reason, site, seq)

    def as_dict(self) -> dict[str, Any]:
        """``check``, ``held`` and ``reason``; and ``site`` and ``seq`` for a check of a
        party's records. (Not :func:`dataclasses.asdict`, which deep-copies: a check is made
        for every output.)"""
        out: dict[str, Any] = {"check": self.check, "held": self.held, "reason": self.reason}
        if self.site is not None:
            out["site"] = self.site
            out["seq"] = self.seq
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        """The check :meth:`as_dict` gave. Raises :class:`KeyError` or :class:`TypeError` for
        a mapping that is not one."""
        seq = data.get("seq")
        site = data.get("site")
        return cls(
            str(data["check"]),
            bool(data["held"]),
            str(data["reason"]),
            None if site is None else str(site),
            None if seq is None else int(seq),
        )
