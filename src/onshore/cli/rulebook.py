"""``onshore rulebook show|lint|diff``: read, check and compare the rulebooks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit
from onshore.errors import ProjectNotFound
from onshore.rulebook import (
    BUILTIN_NAMES,
    Comparison,
    LintReport,
    Rulebook,
    Rulebooks,
    builtin_rulebooks,
    diff,
    lint_builtin,
    lint_file,
)
from onshore.rulebook.loader import project_rulebooks, resolve
from onshore.settings import load_project

__all__ = ["app"]

app = typer.Typer(help="Rulebooks: the law each jurisdiction applies.", no_args_is_help=True)

RefArgument = Annotated[
    str, typer.Argument(help="A rulebook: a key (cn, eu, us), builtin:cn, or a YAML file.")
]


def _rulebooks(project: Path | None) -> Rulebooks:
    """The project's rulebooks; the built-ins where there is no project."""
    try:
        return project_rulebooks(load_project(project))
    except ProjectNotFound:
        if project is not None:
            raise
        return builtin_rulebooks()


def _summary(book: Rulebook) -> dict[str, Any]:
    entries = [
        *(m for c in book.classes.values() for m in c.members.values()),
        *book.country_sets.values(),
        *book.mechanisms.values(),
        *book.rules.values(),
        *book.obligations.values(),
        *book.software_restrictions.values(),
    ]
    return {
        "key": book.key,
        "jurisdiction": book.jurisdiction,
        "title": book.title,
        "version": book.version,
        "effective": book.effective.isoformat(),
        "file": book.file,
        "rules": len(book.rules),
        "unchecked": sum(e.confidence == "unchecked" for e in entries),
    }


def _rule_row(rule: Any) -> list[str]:
    where = rule["destination"]
    place = where.get("scope", "any")
    if where.get("in"):
        place = "to " + ", ".join(where["in"])
    if where.get("not_in"):
        place += " except " + ", ".join(where["not_in"])
    if rule.get("recipient"):
        place += " / recipient tied to " + ", ".join(rule["recipient"]["tied_to"])
    count = rule.get("count")
    threshold = ""
    if count:
        when = " and ".join(str(Comparison.model_validate(c)) for c in count["when"])
        threshold = f"{when} {count['subject']}s ({count['window']}, per {count['per']})"
    outcome = rule["outcome"]
    if outcome == "require":
        outcome = "one of " + ", ".join(rule["mechanisms"])
    applies = rule["applies_to"]
    target = ", ".join(applies.get("classes", []) or applies.get("categories", [])) or "all"
    if applies.get("not_classes"):
        target += " not " + ", ".join(applies["not_classes"])
    return [target, place, threshold, outcome, rule["confidence"], rule["id"]]


def _confidence(value: str) -> str:
    return "[yellow](unchecked)[/]" if value == "unchecked" else "(checked)"


@app.command()
def show(
    ref: Annotated[
        str | None,
        typer.Argument(help="Rulebook to show: a key (cn, eu, us), builtin:cn, or a YAML file."),
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the rulebooks in force, or show one: its classes, mechanisms and rules."""
    books = _rulebooks(project)
    if ref is None:

        def render_list(rows: list[dict[str, Any]]) -> None:
            table = Table("key", "title", "version", "effective", "rules", "unchecked", "file")
            for r in rows:
                table.add_row(
                    r["key"],
                    r["title"],
                    r["version"],
                    r["effective"],
                    str(r["rules"]),
                    str(r["unchecked"]),
                    r["file"],
                )
            console.print(table)

        emit([_summary(b) for b in books.values()], as_json, render_list)
        return

    book = resolve(ref, books)
    data = {**_summary(book), **book.model_dump(mode="json", by_alias=True, exclude_none=True)}

    def render(d: dict[str, Any]) -> None:
        console.print(
            f"[bold]{d['title']}[/] ({d['jurisdiction']}) version {d['version']}, effective "
            f"{d['effective']}, from {d['file']}; {d['unchecked']} unchecked entries"
        )
        for legal in d["classes"].values():
            console.print(f"[bold]class {legal['id']}[/]: {escape(legal['name'])}")
            for m in legal["members"].values():
                purposes = ", ".join(m.get("purposes", [])) or "any purpose"
                console.print(
                    f"  {m['id']} {_confidence(m['confidence'])}: {', '.join(m['categories'])} "
                    f"({', '.join(m['deid_states'])}; {purposes})",
                    highlight=False,
                )
        console.print("[bold]rules[/]")
        for rule in d["rules"].values():
            target, place, threshold, outcome, _, rule_id = _rule_row(rule)
            console.print(f"  {rule_id} {_confidence(rule['confidence'])}", highlight=False)
            when = f", {threshold}" if threshold else ""
            console.print(f"    {target}, {place}{when} -> {outcome}", highlight=False)
        if d["mechanisms"]:
            mechanisms = Table(
                "mechanism", "name", "lead time", "valid for", "renew before", "satisfies"
            )
            for m in book.mechanisms.values():
                mechanisms.add_row(
                    m.id,
                    m.name,
                    f"{m.lead_time.typical} ({m.lead_time.confidence})" if m.lead_time else "-",
                    str(m.valid_for) if m.valid_for else "-",
                    str(m.renew_before) if m.renew_before else "-",
                    ", ".join(m.satisfies) or "-",
                )
            console.print(mechanisms)
        for r in book.software_restrictions.values():
            console.print(
                f"[dim]software[/] {r.id} {_confidence(r.confidence)}: {escape(r.summary)} "
                f"(from model year {r.from_model_year}; {escape(r.source)})"
            )
        for o in book.obligations.values():
            console.print(
                f"[dim]{o.kind}[/] {o.id}: {escape(o.text)} ({escape(o.source)}; {o.confidence})"
            )

    emit(data, as_json, render)


def _lint_one(ref: Path) -> LintReport:
    name = str(ref).removeprefix("builtin:")
    if not ref.exists() and name in BUILTIN_NAMES:
        return lint_builtin(name)
    return lint_file(ref)


@app.command()
def lint(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Rulebook files, or built-in names (cn, builtin:cn), to check "
            "(default: the built-in rulebooks)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check rulebook files: errors with file, line and reason; warnings for unchecked entries.
    Exits with 2 if any file has errors."""
    reports: list[LintReport] = (
        [_lint_one(f) for f in files] if files else [lint_builtin(n) for n in BUILTIN_NAMES]
    )

    def render(data: list[dict[str, Any]]) -> None:
        for report in data:
            state = "[green]ok[/]" if report["ok"] else "[red]invalid[/]"
            console.print(
                f"{report['file']}: {state} ({len(report['errors'])} errors, "
                f"{len(report['warnings'])} warnings)"
            )
            for p in report["errors"]:
                console.print(
                    f"  [red]error[/] line {p['line']}: {p['where']}: {escape(p['message'])}"
                )
            for p in report["warnings"]:
                console.print(
                    f"  [yellow]warning[/] line {p['line']}: {p['where']}: {escape(p['message'])}"
                )

    emit([r.as_dict() for r in reports], as_json, render)
    if not all(r.ok for r in reports):
        raise typer.Exit(2)


@app.command(name="diff")
def diff_command(
    old: RefArgument,
    new: RefArgument,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """What changed between two rulebooks, entry by entry: added, removed, and changed fields
    with their values before and after."""
    books = _rulebooks(project)
    result = diff(resolve(old, books), resolve(new, books))

    def render(d: dict[str, Any]) -> None:
        console.print(f"--- {d['old']}\n+++ {d['new']}")
        if d["same"]:
            console.print("no differences")
            return
        colour = {"added": "green", "removed": "red", "changed": "yellow"}
        sign = {"added": "+", "removed": "-", "changed": "~"}
        for c in d["changes"]:
            console.print(
                f"[{colour[c['kind']]}]{sign[c['kind']]} {c['section']} {c['id']}[/]",
                highlight=False,
            )
            for f in c["fields"]:
                console.print(
                    f"    {f['field']}: {f['before']!r} -> {f['after']!r}", highlight=False
                )
        s = d["summary"]
        console.print(f"{s['added']} added, {s['removed']} removed, {s['changed']} changed")

    emit(result.as_dict(), as_json, render)
