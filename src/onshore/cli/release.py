"""``onshore release create|verify`` and ``onshore license grant|verify|list|revoke``: package a
federated run as a signed bundle, and license it to other carmakers.

``release verify`` and ``license verify`` print their report either way and exit 0 only when
everything holds: else with the code of :class:`~onshore.errors.BundleInvalid` (14),
:class:`~onshore.errors.LicenceRefused` (16) or :class:`~onshore.errors.UseProhibited` (17), so
scripts can branch on it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.errors import (
    BundleInvalid,
    ConfigError,
    LicenceRefused,
    ProjectNotFound,
    UseProhibited,
)
from onshore.settings import Project, load_project

__all__ = ["license_app", "release_app"]

release_app = typer.Typer(
    help="Releases: the federated model as one signed bundle, with its card and lineage.",
    no_args_is_help=True,
)
license_app = typer.Typer(
    help="Licences to use a release: granted per territory through the gate, signed, revocable.",
    no_args_is_help=True,
)

KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        help="The releaser's public key (the coordinator's ed25519.pub), trusted when the "
        "project that made the release is not at hand.",
    ),
]


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not a date", hint="give it as YYYY-MM-DD"
        ) from None


def _list(value: str, option: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{option} is empty", hint=f"e.g. {option} CN,EU")
    return items


def _optional_project(path: Path | None) -> Project | None:
    """The project given or found; None when none is found and none was given (a verifier
    away from the project that made the release)."""
    try:
        return load_project(path)
    except ProjectNotFound:
        if path is not None:
            raise
        return None


def _say(as_json: bool) -> Callable[[str], None]:
    """Progress on stderr, with --json too (stdout keeps the one JSON document)."""
    del as_json

    def say(message: str) -> None:
        err_console.print(f"[bold cyan]>[/] {message}")

    return say


# -- release ---------------------------------------------------------------------------------


def _render_release(d: dict[str, Any]) -> None:
    console.print(f"[bold green]RELEASED[/] {escape(d['version'])} of run {escape(d['run'])}")
    console.print(f"bundle: {escape(d['bundle'])}")
    console.print(f"manifest sha256: {d['manifest_sha256']}")
    console.print(f"ledger: {d['ledger']['site']} entry {d['ledger']['seq']}")
    table = Table("role", "entity", "established in", "party", title="who made it")
    for p in d["parties"]:
        table.add_row(p["role"], escape(p["entity"]), p["country"], p["party"])
    console.print(table)
    for check in d["decision"]["checks"]:
        console.print(f"- {escape(check)}")


@release_app.command()
def create(
    run: Annotated[str, typer.Option("--run", help="The finished federated run to release.")],
    version: Annotated[str, typer.Option("--version", help="The release's version, e.g. 1.0.0.")],
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Package a finished federated run as one signed bundle (weights, model card, lineage) in
    releases/VERSION/, and record the release in the coordinator's ledger. Local runs and the
    centralised counterfactual are refused."""
    from onshore.release import create_release

    result = create_release(load_project(project), run, version, say=_say(as_json))
    emit(result, as_json, _render_release)


def _render_report(d: dict[str, Any]) -> None:
    verdict = "[bold green]VALID[/]" if d["valid"] else "[bold red]NOT VALID[/]"
    console.print(f"{verdict} {escape(d['bundle'])}")
    if d["version"]:
        console.print(f"release {escape(d['version'])} of run {escape(str(d['run']))}")
    if d["signer"]:
        trusted = d["signer_trusted_by"] or "nothing"
        console.print(
            f"signed by {escape(d['signer']['entity'])} (key {d['signer']['key'][:16]}...), "
            f"vouched for by {escape(trusted)}"
        )
    if d["lineage"]:
        lin = d["lineage"]
        console.print(f"lineage: {lin['checked']} of {lin['links']} updates hold in their ledgers")
    for problem in d["problems"]:
        console.print(f"[red]- {escape(problem)}[/]")
    for note in d["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")


@release_app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="The .onshore bundle.")],
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            "-p",
            help="The project that made the release (default: the one the bundle records).",
        ),
    ] = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a bundle: its signature, the weights, card and lineage it signed, its signer
    against the coordinator's ledger (or --key), and every lineage entry in its site's ledger
    where reachable. Exits 0 only when all holds, 14 otherwise; the report is printed either
    way."""
    from onshore.release import verify_bundle
    from onshore.release.verify import read_public_key

    report = verify_bundle(
        bundle,
        project=load_project(project) if project is not None else None,
        key=read_public_key(key) if key is not None else None,
    )
    emit(report.as_dict(), as_json, _render_report)
    if not report.valid:
        raise typer.Exit(BundleInvalid.exit_code)


# -- license ---------------------------------------------------------------------------------


def _render_grant(d: dict[str, Any]) -> None:
    terms = d["terms"]
    console.print(
        f"[bold green]GRANTED[/] {escape(d['id'])} to {escape(terms['licensee']['name'])}: "
        f"release {escape(terms['release']['version'])}, {', '.join(terms['territories'])}, "
        f"{', '.join(terms['purposes'])}, model years "
        f"{terms['model_years']['first']}-{terms['model_years']['last']}, "
        f"until {terms['expires']}"
    )
    console.print(f"licence: {escape(d['licence'])}")
    for territory in d["territories"]:
        console.print(f"- {territory['territory']}: {escape(territory['reasons'][0])}")


@license_app.command()
def grant(
    release: Annotated[str, typer.Option("--release", help="The release's version.")],
    licensee: Annotated[str, typer.Option("--licensee", help="Who may use it.")],
    territories: Annotated[
        str,
        typer.Option("--territories", help="Where vehicles carrying it may be sold, e.g. CN,EU."),
    ],
    purposes: Annotated[
        str, typer.Option("--purposes", help="What it may be used for, e.g. adas.")
    ],
    model_years: Annotated[
        str, typer.Option("--model-years", help="Model years covered, e.g. 2026-2028.")
    ],
    expires: Annotated[str, typer.Option("--expires", help="Last valid day, YYYY-MM-DD.")],
    licensee_country: Annotated[
        str | None,
        typer.Option(
            "--licensee-country",
            help="Where the licensee is established (default: taken to be in each territory).",
        ),
    ] = None,
    licensee_linked_to: Annotated[
        str | None,
        typer.Option("--licensee-linked-to", help="Countries the licensee is linked to, e.g. CN."),
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grant a signed licence: each territory is decided by the gate of every site whose data
    trained the model and by the rulebooks' software restrictions; all must allow it, or
    nothing is granted (exit 15). Grants and refusals go to the coordinator's ledger."""
    from onshore.release import grant_licence, parse_model_years

    result = grant_licence(
        load_project(project),
        release,
        licensee=licensee,
        territories=[t.upper() for t in _list(territories, "--territories")],
        purposes=_list(purposes, "--purposes"),
        model_years=parse_model_years(model_years),
        expires=_day(expires, "--expires"),
        licensee_country=licensee_country.upper() if licensee_country else None,
        licensee_linked_to=[c.upper() for c in _list(licensee_linked_to, "--licensee-linked-to")]
        if licensee_linked_to
        else (),
        say=_say(as_json),
    )
    emit(result, as_json, _render_grant)


def _render_licence_report(d: dict[str, Any]) -> None:
    if d["check"] is None:
        verdict = "[bold green]VALID[/]" if d["valid"] else "[bold red]NOT VALID[/]"
    else:
        verdict = "[bold green]ALLOWED[/]" if d["valid"] else "[bold red]REFUSED[/]"
    console.print(f"{verdict} {escape(d['id'])} (licence {d['status']})")
    for reason in d["reasons"]:
        console.print(f"- {escape(reason)}")


@license_app.command("verify")
def verify_licence(
    licence: Annotated[str, typer.Argument(metavar="LICENCE", help="Licence file or id.")],
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="The release's bundle (default: found in the project)."),
    ] = None,
    territory: Annotated[
        str | None, typer.Option("--territory", help="Check a use: where it is sold, e.g. US.")
    ] = None,
    model_year: Annotated[
        int | None, typer.Option("--model-year", help="Check a use: the vehicles' model year.")
    ] = None,
    purpose: Annotated[str, typer.Option("--purpose", help="Check a use: its purpose.")] = "adas",
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Day to judge on, YYYY-MM-DD (today).")
    ] = None,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Accept that revocation cannot be checked (no project)."),
    ] = False,
    key: KeyOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a licence: signed by the releaser, for a release that verifies, not expired or
    revoked; with --territory and --model-year, also whether it allows that use and whether the
    law forbids it. Exits 0 only when it holds (16 when it does not cover the use, 17 when the
    law forbids it); the report is printed either way."""
    from onshore.release.licence import find_licence
    from onshore.release.load import licence_report
    from onshore.release.verify import read_public_key

    if (territory is None) != (model_year is None):
        raise ConfigError(
            "--territory and --model-year go together", hint="give both to check a use"
        )
    proj = _optional_project(project)
    path = find_licence(proj, licence) if proj is not None else Path(licence)
    result = licence_report(
        path,
        project=proj,
        bundle=bundle,
        releaser_key=read_public_key(key) if key is not None else None,
        use=(territory, model_year, purpose)
        if territory is not None and model_year is not None
        else None,
        on=_day(as_of, "--as-of") if as_of else None,
        offline=offline,
    )
    emit(result, as_json, _render_licence_report)
    if not result["valid"]:
        check = result["check"]
        if check is not None and check["prohibited"]:
            raise typer.Exit(UseProhibited.exit_code)
        raise typer.Exit(LicenceRefused.exit_code)


def _render_list(rows: list[dict[str, Any]]) -> None:
    table = Table(
        "id", "status", "release", "licensee", "territories", "purposes", "years", "expires"
    )
    for r in rows:
        table.add_row(
            escape(r.get("id", r["licence"])),
            r["status"],
            r.get("release", ""),
            escape(r.get("licensee", "")),
            ",".join(r.get("territories", [])),
            ",".join(r.get("purposes", [])),
            r.get("model_years", ""),
            r.get("expires", r.get("reason", "")),
        )
    console.print(table)


@license_app.command("list")
def list_(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Day to judge on, YYYY-MM-DD (today).")
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every licence granted in the project, with its status: valid, expired, not yet valid,
    revoked, or invalid (and why)."""
    from onshore.release import list_licences

    rows = list_licences(load_project(project), on=_day(as_of, "--as-of") if as_of else None)
    emit(rows, as_json, _render_list)


@license_app.command()
def revoke(
    licence: Annotated[str, typer.Argument(metavar="LICENCE", help="Licence file or id.")],
    reason: Annotated[str, typer.Option("--reason", help="Why it is revoked.")],
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a licence: recorded in the coordinator's ledger, refused by every load that can
    reach the project from then on."""
    from onshore.release import revoke_licence

    result = revoke_licence(load_project(project), licence, reason)
    emit(
        result,
        as_json,
        lambda d: console.print(
            f"[bold]REVOKED[/] {escape(d['id'])}: {escape(d['reason'])} "
            f"(ledger entry {d['ledger']['seq']})"
        ),
    )
