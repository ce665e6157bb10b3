"""``onshore ingest``, ``onshore inventory``, ``onshore store verify`` and
``onshore store credentials``."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.output import (
    JsonOption,
    ProjectOption,
    WorkersOption,
    console,
    emit,
    err_console,
    progress_bar,
)
from onshore.errors import ConfigError
from onshore.settings import load_project, redact_url
from onshore.sites.keystore import S3Credentials, Secret, save_s3_credentials
from onshore.store import ObjectStore, SiteStore

__all__ = ["register"]

SiteOption = Annotated[
    str | None,
    typer.Option(
        "--site",
        "-s",
        help="Site id, e.g. cn-shanghai (in a party's folder: its own, the default).",
    ),
]


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="MCAP, Parquet or CSV files, or folders.")],
    site: SiteOption = None,
    project: ProjectOption = None,
    keep_bad: Annotated[
        bool, typer.Option("--keep-bad", help="Copy bad files to quarantine but keep the source.")
    ] = False,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest fleet uploads into the site's store and catalogue; bad files go to quarantine."""
    from onshore.ingest import ingest as run_ingest
    from onshore.sites.compute import Engine

    proj = load_project(project)
    site = proj.site_for(site)
    with (
        SiteStore.open(proj, site) as opened,
        Engine.for_site(proj.site(site).compute, workers) as engine,
        progress_bar(f"ingest {site}{engine.label()}", None, unit="bytes") as bar,
    ):
        task = bar.task_ids[0]
        report = run_ingest(
            opened,
            paths,
            engine=engine,
            on_start=lambda total: bar.update(task, total=total),
            on_file=lambda _p, n: bar.advance(task, n),
            remove_quarantined_source=not keep_bad,
        )

    def render(d: dict[str, Any]) -> None:
        console.print(
            f"{d['site']}: {d['files']} files, {d['clips']} new clips, {d['rows']:,} rows, "
            f"{d['bytes'] / 1e6:.1f} MB read in {d['seconds']:.1f} s"
            + (f", {d['already_ingested']} already ingested" if d["already_ingested"] else "")
            + (
                f", {d['erased_before']} erased on a driver's request (removed, not ingested)"
                if d["erased_before"]
                else ""
            )
        )
        for q in d["quarantined"]:
            kept = "quarantined" if q["quarantine"] else "skipped"
            err_console.print(f"[yellow]{kept}[/] {q['reason']}")
        if d["ignored"]:
            err_console.print(f"ignored {len(d['ignored'])} file(s) that are not uploads")

    emit({**report.as_dict(), "compute": engine.describe()}, as_json, render)


def inventory(
    site: SiteOption = None, project: ProjectOption = None, as_json: JsonOption = False
) -> None:
    """What the site holds: clips, vehicles, rows, bytes, time range, consent shares."""
    with SiteStore.open(load_project(project), site) as opened:
        data = opened.catalogue.inventory()
    emit(data, as_json, lambda d: console.print(inventory_table([d])))


def inventory_table(rows: list[dict[str, Any]]) -> Table:
    """A table of site inventories, one row a site."""
    table = Table(
        "site",
        "clips",
        "vehicles",
        "rows",
        "frames",
        "MB",
        "recorded (UTC)",
        "consent",
        "quarantined",
        title="Inventory",
    )
    for d in rows:
        share = d["consent"]["training_share_of_clips"]
        tr = d["time_range"]
        span = "-" if tr["start"] is None else f"{tr['start'][:16]} to {tr['end'][11:16]}"
        table.add_row(
            d["site"],
            f"{d['clips']:,}",
            f"{d['vehicles']:,}",
            f"{d['rows']:,}",
            f"{d['frames']['frames']:,}",
            f"{(d['bytes'] + d['frames']['bytes']) / 1e6:.1f}",
            span.replace("T", " "),
            "-" if share is None else f"{share:.0%}",
            str(d["files"]["quarantined"]),
        )
    return table


store_app = typer.Typer(help="Check a site's store.", no_args_is_help=True)


@store_app.command()
def verify(
    site: SiteOption = None,
    project: ProjectOption = None,
    deep: Annotated[bool, typer.Option(help="Also re-hash every clip object.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Check that the site's store and catalogue agree; exit 1 if they do not."""
    with SiteStore.open(load_project(project), site) as opened:
        report = {
            **opened.check(deep=deep),
            "store": opened.objects.url,
            "credentials": opened.objects.credentials_source,
        }

    def render(d: dict[str, Any]) -> None:
        if d["ok"]:
            console.print(f"{d['site']}: store and catalogue agree ({d['clips']} clips)")
            return
        for key in ("missing_objects", "damaged_objects", "uncatalogued_objects", "partial_writes"):
            if d[key]:
                console.print(f"[red]{key.replace('_', ' ')}[/]: {', '.join(d[key][:10])}")

    emit(report, as_json, render)
    if not report["ok"]:
        raise typer.Exit(1)


@store_app.command()
def credentials(
    access_key_id: Annotated[
        str, typer.Option("--access-key-id", help="The S3 access key's id (not secret).")
    ],
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", help="The S3 service's URL, when it is not AWS's S3."),
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="The region requests are signed for.")
    ] = None,
    secret_from_env: Annotated[
        bool,
        typer.Option(
            "--secret-from-env",
            help="Take the secret from AWS_SECRET_ACCESS_KEY instead of standard input.",
        ),
    ] = False,
    site: SiteOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Keep the site's S3 keys in its keystore (owner-only), where its store finds them before
    the environment's. The secret is read from standard input (prompted for, unechoed, on a
    terminal) or from AWS_SECRET_ACCESS_KEY: never from the command line, which shells keep."""
    proj = load_project(project)
    site_id = proj.site_for(site)
    settings = proj.site(site_id)
    secret = _read_secret(secret_from_env)
    if not access_key_id.strip():
        raise ConfigError("--access-key-id is empty")
    found = S3Credentials(
        access_key_id.strip(), Secret(secret.encode()), endpoint_url=endpoint_url, region=region
    )
    path = save_s3_credentials(proj.keystore_path(settings), found)
    store = proj.store_url(settings)
    report = {
        "site": site_id,
        "file": path,
        **found.public(),
        "store": redact_url(store),
        "store_is_s3": ObjectStore.is_s3(store),
    }

    def render(d: dict[str, Any]) -> None:
        console.print(f"{d['site']}: S3 key {d['access_key_id']} kept in {d['file']}")
        if not d["store_is_s3"]:
            err_console.print(f"[yellow]note[/]: the site's store {d['store']} is not s3://")

    emit(report, as_json, render)


def _read_secret(from_env: bool) -> str:
    """The secret access key: from AWS_SECRET_ACCESS_KEY, a prompt on a terminal, or the first
    line of standard input."""
    if from_env:
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        where = "AWS_SECRET_ACCESS_KEY"
    elif sys.stdin.isatty():
        secret = getpass.getpass("S3 secret access key: ")
        where = "the prompt"
    else:
        secret = sys.stdin.readline()
        where = "standard input"
    secret = secret.strip()
    if not secret:
        raise ConfigError(
            f"no S3 secret access key in {where}",
            hint="e.g. 'onshore store credentials --access-key-id ID < secret-file'",
        )
    return secret


def register(app: typer.Typer) -> None:
    app.command()(ingest)
    app.command()(inventory)
    app.add_typer(store_app, name="store")
