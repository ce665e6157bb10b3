"""``onshore fleet simulate``: a simulated fleet's uploads, from SUMO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onshore.cli.output import JsonOption, ProjectOption, console, emit, progress_bar
from onshore.errors import ConfigError
from onshore.settings import load_project

__all__ = ["app"]

app = typer.Typer(help="Simulated fleets (SUMO).", no_args_is_help=True)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder to write the MCAP uploads into.")],
    site: Annotated[
        str | None, typer.Option("--site", "-s", help="Site whose region and fleet to simulate.")
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Region profile (cn, eu, us) when there is no project.")
    ] = None,
    vehicles: Annotated[int, typer.Option(min=1, help="Vehicles in traffic, all classes.")] = 150,
    minutes: Annotated[float, typer.Option(min=0.5, help="Simulated minutes.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Same seed, same output.")] = 1,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run SUMO for a region and write one MCAP file per clip, as vehicles would upload them.

    In a project, the first simulation of a site also stores its sensitive-area GeoJSON as the
    site's reference zones (reference/sensitive_areas.geojson in its store).
    """
    from onshore.fleet import simulate_fleet

    if (site is None) == (region is None):
        raise ConfigError("give exactly one of --site (in a project) or --region (cn, eu, us)")
    options: dict[str, Any] = {}
    zones_target = None
    if site is not None:
        proj = load_project(project)
        s = proj.site(site)
        region = s.region_profile
        options = {
            "recorded_in": s.id,
            "fleet_share": s.fleet.fleet_share,
            "no_consent_share": s.fleet.no_consent_share,
            "clip_seconds": s.fleet.clip_seconds,
        }
        zones_target = (proj, s.id)
    else:
        options = {"recorded_in": str(region).upper()}
    assert region is not None
    region = region.lower()
    with progress_bar(f"simulate {site or region}", 1.0, unit="stages") as bar:
        task = bar.task_ids[0]

        def report(stage: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=f"{site or region}: {stage}")

        result = simulate_fleet(
            region,
            vehicles=vehicles,
            minutes=minutes,
            seed=seed,
            out=out,
            progress=report,
            **options,
        )
    data: dict[str, Any] = {
        "region": result.region,
        "site": site,
        "out": str(out),
        "clips": len(result.clips),
        "rows": result.rows,
        "vehicles_inserted": result.vehicles_inserted,
        "fleet_vehicles": result.fleet_vehicles,
        "network": result.network,
        "sensitive_areas": str(result.zones),
    }
    if zones_target is not None:
        from onshore.store.objects import ZONES_PATH, ObjectStore

        proj, site_id = zones_target
        store = ObjectStore(proj.store_url(proj.site(site_id)))
        put = store.put(ZONES_PATH, result.zones.read_bytes())
        data["site_sensitive_areas"] = {"path": ZONES_PATH, "written": put.written}

    def render(d: dict[str, Any]) -> None:
        console.print(
            f"{d['region']}: {d['clips']} clips ({d['rows']:,} rows) from {d['fleet_vehicles']} "
            f"fleet vehicles among {d['vehicles_inserted']} in traffic -> {d['out']}"
        )

    emit(data, as_json, render)
