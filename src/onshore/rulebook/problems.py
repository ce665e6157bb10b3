"""What can be wrong with a rulebook, said with the file and the line, and the errors that carry it.

A :class:`Problem` is one finding (an error that stops the rulebook from loading, or a warning
that ``lint`` shows); :class:`RulebookError` is raised with the first error and carries them all.

The errors (:class:`onshore.errors.RulebookError`, :class:`onshore.errors.RulebookNotFound`)
live in the one error tree; they are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onshore.errors import RulebookError, RulebookNotFound

__all__ = ["Problem", "RulebookError", "RulebookNotFound", "Severity"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or worth a look) in a rulebook file."""

    file: str
    """The file, or ``builtin:cn`` for a built-in rulebook."""
    line: int | None
    """1-based line the problem is on, where one is known."""
    where: str
    """Dotted path of the offending entry, e.g. ``rules.cn.pi_exempt.count.when.0``."""
    message: str
    """What is wrong, in words a user can act on."""
    severity: Severity = "error"

    def __str__(self) -> str:
        at = f"{self.file}:{self.line}" if self.line is not None else self.file
        where = f" {self.where}:" if self.where else ""
        return f"{at}:{where} {self.message}"

    def as_dict(self) -> dict[str, str | int | None]:
        """The problem as ``lint --json`` prints it."""
        return {
            "file": self.file,
            "line": self.line,
            "where": self.where,
            "message": self.message,
            "severity": self.severity,
        }
