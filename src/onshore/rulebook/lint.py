"""``lint``: every error and warning in a rulebook file, not only the first.

Errors are what stops a rulebook from loading (each with its file, line and reason), a missing
or malformed ``boundary`` file included. Warnings are what a compliance officer should look at:
every ``unchecked`` entry, thresholds no count can meet, categories no rule covers (their
transfers are denied by default), and a rulebook without a ``boundary``, whose sites' ingest
cannot check where clips were driven and takes their ``recorded_in`` on trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onshore.rulebook.loader import BUILTIN_NAMES, _builtin_text, check_text
from onshore.rulebook.problems import Problem, RulebookNotFound

__all__ = ["LintReport", "lint_builtin", "lint_file", "lint_text"]


@dataclass(frozen=True, slots=True)
class LintReport:
    """What lint found in one file."""

    file: str
    jurisdiction: str | None
    version: str | None
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        """The report as ``lint --json`` prints it."""
        return {
            "file": self.file,
            "ok": self.ok,
            "jurisdiction": self.jurisdiction,
            "version": self.version,
            "errors": [p.as_dict() for p in self.errors],
            "warnings": [p.as_dict() for p in self.warnings],
        }


def lint_text(text: str, file: str = "<text>") -> LintReport:
    """Lint rulebook YAML given as text."""
    book, problems = check_text(text, file, warnings=True)
    return LintReport(
        file=file,
        jurisdiction=book.jurisdiction if book else None,
        version=book.version if book else None,
        problems=tuple(problems),
    )


def lint_file(path: Path) -> LintReport:
    """Lint one rulebook file. Raises :class:`RulebookNotFound` if it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulebookNotFound(f"{path}: no such rulebook file") from None
    except UnicodeDecodeError as exc:
        problem = Problem(str(path), None, "", f"not UTF-8 text ({exc.reason})")
        return LintReport(str(path), None, None, (problem,))
    return lint_text(text, str(path))


def lint_builtin(name: str) -> LintReport:
    """Lint a built-in rulebook (``cn``, ``eu``, ``us``)."""
    if name not in BUILTIN_NAMES:
        raise RulebookNotFound(
            f"no built-in rulebook {name!r}", hint=f"built-in: {', '.join(BUILTIN_NAMES)}"
        )
    return lint_text(_builtin_text(name), f"builtin:{name}")
