"""``onshore init`` and ``onshore sites``: create a project and list its sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onshore.cli.fleet import SiteMinutesOption, SiteVehiclesOption, TripKmOption
from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.errors import ConfigError
from onshore.settings import load_project
from onshore.sites import EXAMPLES, describe_sites, init_project

__all__ = ["register"]


def init(
    folder: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    example: Annotated[
        str, typer.Option(help=f"Project template: {', '.join(EXAMPLES)}.")
    ] = "three-regions",
    parties: Annotated[
        bool,
        typer.Option(
            "--parties",
            help="Make a folder per party (each site and the coordinator) under FOLDER, each "
            "with its own keys, and add each one's identity to the others'.",
        ),
    ] = False,
    party: Annotated[
        str | None,
        typer.Option(
            "--party",
            help="Make only this party's folder, FOLDER/PARTY (a data centre makes its own; "
            "exchange identities with 'onshore party identity' and 'onshore party trust').",
        ),
    ] = None,
    address: Annotated[
        list[str] | None,
        typer.Option(
            "--address",
            help="Where a party is reached, PARTY=HOST[:PORT] (repeat; default 127.0.0.1, "
            "ports 8441 upwards).",
        ),
    ] = None,
    federation: Annotated[
        str | None,
        typer.Option(help="The coordinator's SuperLink as sites reach it, HOST:PORT."),
    ] = None,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Another host name or address the certificates cover."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a project: onshore.toml, each site's store folder and its keystore. With
    --parties (or --party), a folder per party instead: what a deployment across data centres
    runs, one 'onshore serve' per party."""
    if parties or party is not None:
        _init_parties(folder, example, party, address or [], federation, name or [], as_json)
        return
    if address or federation or name:
        raise ConfigError("--address, --federation and --name go with --parties or --party")
    project = init_project(folder, example)
    data = {
        "project": str(project.root),
        "config": str(project.config_path),
        "sites": describe_sites(project),
    }

    def render(d: dict[str, Any]) -> None:
        console.print(f"Created {d['config']} with {len(d['sites'])} sites:")
        for site in d["sites"]:
            console.print(f"  {site['id']:<14} {site['jurisdiction']}  {site['entity']}")
        console.print(
            f"Next: onshore fleet simulate --project {d['project']} --site SITE ...",
            soft_wrap=True,
        )

    emit(data, as_json, render)


def _init_parties(
    folder: Path,
    example: str,
    only: str | None,
    addresses: list[str],
    federation: str | None,
    names: list[str],
    as_json: bool,
) -> None:
    from onshore.parties.identity import identity_of
    from onshore.parties.init import init_parties, parse_address

    parsed = dict(parse_address(a) for a in addresses)
    made = init_parties(
        folder, example, only=only, addresses=parsed, federation=federation, names=names
    )
    rows = []
    for party_id, project in made.items():
        found = identity_of(project)
        rows.append(
            {
                "party": party_id,
                "role": found.role,
                "folder": str(project.root),
                "endpoint": found.endpoint,
                "key": found.key_fingerprint,
                "peers": sorted(
                    p.name.removesuffix(".json") for p in (project.root / "peers").glob("*.json")
                ),
            }
        )

    def render(data: list[dict[str, Any]]) -> None:
        for r in data:
            console.print(f"Created {r['folder']} ({r['role']} {r['party']}, {r['endpoint']})")
            console.print(
                f"  ledger key {r['key'][:16]}..., peers on file: {', '.join(r['peers']) or 'none'}"
            )
        console.print("Next, in each folder: onshore serve")
        if only is not None:
            console.print(
                "Exchange identities first: 'onshore party identity -o FILE' here, "
                "'onshore party trust FILE' at each peer, and the other way round"
            )

    emit(rows, as_json, render)


def sites(project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """List the project's sites: jurisdiction, entity, store, catalogue, compute, keystore."""
    rows = describe_sites(load_project(project))

    def render(data: list[dict[str, Any]]) -> None:
        table = Table("site", "law", "entity", "store", "compute", "keystore")
        for s in data:
            c = s["compute"]
            table.add_row(
                s["id"],
                s["jurisdiction"],
                s["entity"],
                s["store"],
                f"{c['device']} x{c['relative_throughput']}",
                s["keystore_status"]
                if s["keystore_status"] == "ok"
                else f"[red]{s['keystore_status']}[/]",
            )
        console.print(table)

    emit(rows, as_json, render)


def lab(
    folder: Annotated[Path, typer.Argument(help="Folder of the lab project (made or reused).")],
    vehicles: SiteVehiclesOption = 150,
    minutes: SiteMinutesOption = 6.0,
    trip_km: TripKmOption = None,
    seed: Annotated[int, typer.Option(help="Seed for every simulation.")] = 7,
    as_json: JsonOption = False,
) -> None:
    """Make a lab project: every site's simulated fleet in one folder, ingested, classified and
    de-identified, for Flower's Simulation Engine, the centralised counterfactual and the
    benchmarks. A lab holds every site's keys, so nothing in it crosses a border: parties do
    that (onshore init --parties)."""
    from onshore.lab import build_lab

    project, done = build_lab(
        folder,
        vehicles=vehicles,
        minutes=minutes,
        trip_km=trip_km,
        seed=seed,
        say=lambda m: err_console.print(m),
    )
    deidentified: dict[str, dict[str, Any]] = {}
    for run in done["deidentify"]:
        deidentified.setdefault(run["site"], {})[run["profile"]] = {
            k: run[k] for k in ("clips_in", "clips", "rows_in", "rows")
        }
    data = {
        "project": str(project.root),
        "sites": [
            {
                "site": inv["site"],
                "clips": inv["clips"],
                "vehicles": inv["vehicles"],
                "categories": sorted(c["categories"]),
                "deidentified": deidentified.get(inv["site"], {}),
            }
            for inv, c in zip(done["inventory"], done["classify"], strict=True)
        ],
    }

    def render(d: dict[str, Any]) -> None:
        for site in d["sites"]:
            outputs = ", ".join(
                f"{name} {out['clips']} of {out['clips_in']}"
                for name, out in site["deidentified"].items()
            )
            console.print(
                f"{site['site']}: {site['clips']} clips, {site['vehicles']} vehicles; "
                f"de-identified clips kept: {outputs}"
            )
        console.print(f"Lab project in {d['project']}")

    emit(data, as_json, render)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(sites)
    app.command()(lab)
