"""``onshore gate check`` and ``onshore approvals add|list|revoke``: ask the gate what it would
decide, and keep the legal mechanisms it checks against.

``gate check`` prints the decision either way and exits 0 when the transfer would be allowed,
10 (:class:`~onshore.errors.TransferDenied`) when it would be denied, so scripts can branch on it.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.cli.store import SiteOption
from onshore.errors import (
    ConfigError,
    InvalidApproval,
    InvalidRequest,
    ProjectNotFound,
    RulebookNotFound,
    TransferDenied,
)
from onshore.gate import (
    Approval,
    ApprovalRegistry,
    Decision,
    Gate,
    GateRequest,
    approval_status,
    parse_request,
)
from onshore.gate.record import add_approval, revoke_approval
from onshore.rulebook import Rulebooks, builtin_rulebooks
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project, load_project
from onshore.store.catalogue import Catalogue

__all__ = ["approvals_app", "gate_app"]

gate_app = typer.Typer(
    help="The gate: what may cross a border, under which approval.", no_args_is_help=True
)
approvals_app = typer.Typer(
    help="Approvals on file: the legal mechanisms transfers are checked against.",
    no_args_is_help=True,
)

AsOfOption = Annotated[
    str | None,
    typer.Option("--as-of", help="Day to judge validity and deadlines on, YYYY-MM-DD (today)."),
]


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not a date (YYYY-MM-DD)") from None


def _registry(project: Project, site_id: str, rulebooks: Rulebooks) -> ApprovalRegistry:
    """The site's approvals registry, in its catalogue database. Close ``.catalogue`` after."""
    site = project.site(site_id)
    catalogue = Catalogue(project.catalogue_url(site), site_id)
    return ApprovalRegistry(catalogue, rulebooks, jurisdiction=site.jurisdiction)


# -- gate check ----------------------------------------------------------------------------------


def _site_gate(project: Project, site_id: str, request: GateRequest) -> Gate:
    """The gate as ``site_id`` runs it: the project's rulebooks and, unless the request brings
    its own, the approvals on file as its ledger records them; a request without ``history``
    is counted against the persons that crossed the site's borders before."""
    from onshore.gate.site import OpenSite

    site = project.site(site_id)
    rulebooks = project_rulebooks(project)
    try:
        origin = rulebooks.for_origin(request.origin)
    except RulebookNotFound as exc:
        raise InvalidRequest(f"request field origin: {exc.message}", hint=exc.hint) from None
    if rulebooks.for_origin(site.jurisdiction).key != origin.key:
        raise ConfigError(
            f"the request's origin {request.origin} is not governed by the rulebook of site "
            f"{site_id} ({site.jurisdiction})",
            hint="check a transfer at the site its data comes from",
        )
    with OpenSite.open(project, site_id) as opened:
        approvals = request.approvals
        if approvals is None:
            approvals = tuple(opened.approvals())
        # Read once, now: the catalogue closes before the gate decides.
        history = opened.crossings.past(date.min, {})
    return Gate(rulebooks, approvals, history=lambda _request, _since: history)


def _in_site_folder(project: Path | None) -> bool:
    """Whether the command runs in a site's own folder (whose gate then decides)."""
    try:
        loaded = load_project(project)
    except ProjectNotFound:
        return False
    return loaded.party is not None and not loaded.is_coordinator


def _rulebooks(project: Path | None) -> Rulebooks:
    """The project's rulebooks; the built-ins where there is no project."""
    try:
        return project_rulebooks(load_project(project))
    except ProjectNotFound:
        if project is not None:
            raise
        return builtin_rulebooks()


def _render_decision(d: dict[str, Any]) -> None:
    if d["allowed"]:
        verdict = "[bold green]ALLOWED[/]" + (" (exempt)" if d["exempt"] else "")
    else:
        verdict = "[bold red]DENIED[/]" + (" (prohibited)" if d["prohibited"] else "")
    console.print(verdict)
    if d["approval"]:
        a = d["approval"]
        console.print(f"approval: {escape(a['id'])} ({a['type']}) {escape(a['reference'])}")
    if d["mechanisms"]:
        console.print(f"mechanisms that would allow it: {', '.join(d['mechanisms'])}")
    versions = ", ".join(f"{k} {v}" for k, v in d["rulebook_versions"].items())
    console.print(f"rulebooks: {versions}")
    for rule_id, count in d["subjects_in_window"].items():
        console.print(f"  counted {count:,} for {rule_id}")
    for reason in d["reasons"]:
        console.print(f"- {escape(reason)}")


@gate_app.command()
def check(
    request_file: Annotated[
        Path,
        typer.Argument(
            metavar="REQUEST.json", help="The transfer request (JSON), or - to read stdin."
        ),
    ],
    project: ProjectOption = None,
    site: Annotated[
        str | None,
        typer.Option(
            "--site",
            "-s",
            help="Check as this site would: its approvals registry unless the request lists "
            "approvals.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What the gate would decide about a transfer, and why. Exits 0 if it would be allowed,
    10 if it would be denied; the decision is printed either way."""
    text = sys.stdin.buffer.read() if str(request_file) == "-" else request_file.read_bytes()
    request = parse_request(text)
    if site is not None or _in_site_folder(project):
        loaded = load_project(project)
        gate = _site_gate(loaded, loaded.site_for(site), request)
    else:
        gate = Gate(_rulebooks(project), request.approvals or ())
    decision: Decision = gate.decide(request)
    emit(decision.as_dict(), as_json, _render_decision)
    if not decision.allowed:
        raise typer.Exit(TransferDenied.exit_code)


@gate_app.command()
def outbound(
    category: Annotated[
        str,
        typer.Option(
            help="What would go to the coordinator: model_parameters or aggregate_metrics."
        ),
    ] = "model_parameters",
    subjects: Annotated[int, typer.Option(min=0, help="Vehicles whose data it derives from.")] = 1,
    purpose: Annotated[str, typer.Option(help="Why, e.g. adas_training.")] = "adas_training",
    site: SiteOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """What this site's gate would decide about sending its coordinator a model update (or
    metrics) before a federated run: the decision the outbound mod acts on, asked ahead.
    Records nothing. Exits 10 when it would be denied."""
    from onshore.federation.site import outbound_decision
    from onshore.gate.site import OpenSite

    proj = load_project(project)
    with OpenSite.open(proj, proj.site_for(site)) as opened:
        decision, request = outbound_decision(opened, category, subjects, purpose)
    data = {**decision.as_dict(), "request": request.model_dump(mode="json")}
    emit(data, as_json, _render_decision)
    if not decision.allowed:
        raise typer.Exit(TransferDenied.exit_code)


# -- approvals -----------------------------------------------------------------------------------

_OPTION = {
    "id": "--id",
    "type": "--type",
    "origin": "--origin",
    "recipient": "--recipient",
    "categories": "--category",
    "purposes": "--purpose",
    "max_subjects": "--max-subjects",
    "valid_from": "--valid-from",
    "valid_to": "--valid-to",
    "reference": "--reference",
}


def _approval(fields: dict[str, Any]) -> Approval:
    """An :class:`Approval` from the options; a bad value names its option."""
    try:
        return Approval.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        option = _OPTION.get(name, "the options")
        raise InvalidApproval(f"{option}: {first['msg'].removeprefix('Value error, ')}") from None


def _render_statuses(d: dict[str, Any]) -> None:
    table = Table(title=f"approvals at {d['site']} on {d['as_of']}")
    for name in ("id", "type", "recipient", "scope", "valid", "renew by", "status"):
        table.add_column(name, no_wrap=name in ("id", "type", "renew by", "status"))
    colour = {"valid": "green", "renewal_due": "yellow", "expired": "red", "revoked": "red"}
    for a in d["approvals"]:
        limit = "any number of" if a["max_subjects"] is None else f"up to {a['max_subjects']:,}"
        table.add_row(
            escape(a["id"]),
            a["type"],
            escape(a["recipient"]),
            f"{', '.join(a['categories'])} for {', '.join(a['purposes'])}, {limit} subjects",
            f"{a['valid_from']} to {a['valid_until'] or 'until revoked'}",
            a["renew_by"] or "-",
            f"[{colour.get(a['status'], 'white')}]{a['status']}[/]",
        )
    console.print(table)
    for warning in d["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")


@approvals_app.command("add")
def add(
    approval_id: Annotated[str, typer.Option("--id", help="Its id on file, e.g. CAC-2026-017.")],
    kind: Annotated[
        str,
        typer.Option(
            "--type", help="The mechanism: cn_security_assessment, cn_standard_contract, eu_scc..."
        ),
    ],
    recipient: Annotated[str, typer.Option(help="Who may receive the data.")],
    category: Annotated[
        list[str], typer.Option("--category", "-c", help="A data category covered (repeat).")
    ],
    purpose: Annotated[list[str], typer.Option(help="A purpose covered (repeat).")],
    valid_from: Annotated[str, typer.Option(help="First valid day, YYYY-MM-DD.")],
    valid_to: Annotated[
        str | None,
        typer.Option(help="Last valid day as stated; default: as long as the rulebook allows."),
    ] = None,
    max_subjects: Annotated[
        int | None, typer.Option(help="Largest volume covered (default: no limit).")
    ] = None,
    reference: Annotated[str, typer.Option(help="The authority's reference number.")] = "",
    document: Annotated[
        str, typer.Option(help="Where the decision or contract is filed (a path or URL).")
    ] = "",
    origin: Annotated[
        str | None, typer.Option(help="Whose data it covers (default: the site's jurisdiction).")
    ] = None,
    site: SiteOption = None,
    project: ProjectOption = None,
    as_of: AsOfOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put an approval on file at a site; shows its deadlines from the rulebook."""
    proj = load_project(project)
    site = proj.site_for(site)
    rulebooks = project_rulebooks(proj)
    on = _day(as_of, "--as-of") if as_of else date.today()
    approval = _approval(
        {
            "id": approval_id,
            "type": kind,
            "origin": origin or proj.site(site).jurisdiction,
            "recipient": recipient,
            "categories": category,
            "purposes": purpose,
            "max_subjects": max_subjects,
            "valid_from": valid_from,
            "valid_to": valid_to,
            "reference": reference,
            "document": document,
        }
    )
    # One transaction: the approval and the ledger entry recording it.
    stored, seq = add_approval(proj, site, approval)
    status = approval_status(stored, rulebooks, on)
    data = {"site": site, "as_of": on.isoformat(), "approval": status.as_dict(), "ledger_seq": seq}

    def render(d: dict[str, Any]) -> None:
        a = d["approval"]
        console.print(
            f"{escape(a['id'])} ({a['type']}) on file at {d['site']}: valid {a['valid_from']} to "
            f"{a['valid_until'] or 'until revoked'}"
            + (f", renew by {a['renew_by']}" if a["renew_by"] else "")
            + f"; {a['status']}"
        )
        if a["warning"]:
            err_console.print(f"[yellow]warning:[/] {escape(a['warning'])}")

    emit(data, as_json, render)


@approvals_app.command("list")
def list_approvals(
    site: SiteOption = None,
    project: ProjectOption = None,
    as_of: AsOfOption = None,
    as_json: JsonOption = False,
) -> None:
    """The approvals on file at a site, with their deadlines and status; warns about those
    whose renewal is due."""
    proj = load_project(project)
    site = proj.site_for(site)
    rulebooks = project_rulebooks(proj)
    on = _day(as_of, "--as-of") if as_of else date.today()
    registry = _registry(proj, site, rulebooks)
    try:
        statuses = registry.statuses(on)
    finally:
        registry.catalogue.close()
    data = {
        "site": site,
        "as_of": on.isoformat(),
        "approvals": [s.as_dict() for s in statuses],
        "warnings": [s.warning for s in statuses if s.warning and s.status == "renewal_due"],
    }
    emit(data, as_json, _render_statuses)


@approvals_app.command()
def revoke(
    approval_id: Annotated[str, typer.Argument(metavar="ID", help="The approval's id on file.")],
    reason: Annotated[str, typer.Option(help="Why it is revoked (kept on file).")],
    site: SiteOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an approval: it stays on file, for the record, and covers nothing any more."""
    proj = load_project(project)
    site = proj.site_for(site)
    revoked, seq = revoke_approval(proj, site, approval_id, reason)
    data = {"site": site, "approval": revoked.model_dump(mode="json"), "ledger_seq": seq}

    def render(d: dict[str, Any]) -> None:
        a = d["approval"]
        console.print(f"{escape(a['id'])} ({a['type']}) revoked at {d['site']}: {escape(reason)}")

    emit(data, as_json, render)
