"""``onshore fleet simulate``: a simulated fleet's uploads, from SUMO."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from onshore.cli.output import JsonOption, ProjectOption, console, emit, progress_bar
from onshore.errors import ConfigError, ProjectNotFound
from onshore.settings import load_project

if TYPE_CHECKING:
    from onshore.clips.recorder import UploadFormat

_UPLOAD_FORMATS = ("onshore", "ros2", "foxglove")

TripKmOption = Annotated[
    float | None,
    typer.Option(
        min=0.1,
        help="Median length of a fleet vehicle's trip (default: the region's: 4.5 km in cn, "
        "5 in eu, 8 in us).",
    ),
]
SiteVehiclesOption = Annotated[
    int, typer.Option(min=10, help="Vehicles departing over --minutes, per site.")
]
SiteMinutesOption = Annotated[
    float,
    typer.Option(
        min=0.5, help="Minutes over which each site's fleet departs; each drives a whole trip."
    ),
]

__all__ = ["app"]

app = typer.Typer(help="Simulated fleets (SUMO).", no_args_is_help=True)

_STAGES = ("network", "trips", "sumo", "clips", "zones")
"""The simulator's stages, in order, for one progress bar over the whole run."""


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder to write the MCAP uploads into.")],
    site: Annotated[
        str | None, typer.Option("--site", "-s", help="Site whose region and fleet to simulate.")
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Region profile (cn, eu, us) when there is no project.")
    ] = None,
    vehicles: Annotated[
        int, typer.Option(min=1, help="Vehicles departing over --minutes, all classes.")
    ] = 150,
    minutes: Annotated[
        float,
        typer.Option(
            min=0.5,
            help="Minutes over which the fleet departs; the run goes on until every vehicle "
            "has arrived, with traffic at the same rate.",
        ),
    ] = 5.0,
    trip_km: TripKmOption = None,
    seed: Annotated[int, typer.Option(help="Same seed, same output.")] = 1,
    camera_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of fleet vehicles whose uploads carry front-camera frames "
            "(default: the site's fleet settings, else 0.1).",
        ),
    ] = None,
    upload_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="How vehicles write uploads: onshore (its own messages), ros2 (NavSatFix, "
            "Odometry, Autoware's TrackedObjects) or foxglove (LocationFix, SceneUpdate, "
            "H.264 video); default: the site's fleet settings, else onshore.",
        ),
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run SUMO for a region and write one MCAP file per clip, as vehicles would upload them.

    In a project, the first simulation of a site also stores its sensitive-area GeoJSON as the
    site's reference zones (reference/sensitive_areas.geojson in its store).
    """
    from onshore.fleet import simulate_fleet, simulate_site
    from onshore.store import SiteStore

    if site is None and region is None:
        with contextlib.suppress(ProjectNotFound):
            found = load_project(project)
            if found.party is not None and not found.is_coordinator:
                site = found.party.id  # a site's own folder simulates its own fleet
    if (site is None) == (region is None):
        raise ConfigError("give exactly one of --site (in a project) or --region (cn, eu, us)")
    if upload_format is not None and upload_format not in _UPLOAD_FORMATS:
        raise ConfigError(
            f"--format {upload_format!r} is none of {', '.join(_UPLOAD_FORMATS)}",
            hint="onshore, ros2 or foxglove",
        )
    chosen = cast("UploadFormat | None", upload_format)
    with progress_bar(f"simulate {site or region}", len(_STAGES), unit="stages") as bar:
        task = bar.task_ids[0]

        def report(stage: str, fraction: float) -> None:
            done = _STAGES.index(stage) + fraction if stage in _STAGES else 0.0
            bar.update(task, completed=done, description=f"{site or region}: {stage}")

        if site is not None:
            proj = load_project(project)
            result = simulate_site(
                proj.site(site),
                vehicles=vehicles,
                minutes=minutes,
                seed=seed,
                out=out,
                progress=report,
                camera_share=camera_share,
                trip_km=trip_km,
                upload_format=chosen,
            )
        else:
            region = str(region).lower()
            result = simulate_fleet(
                region,
                vehicles=vehicles,
                minutes=minutes,
                seed=seed,
                out=out,
                recorded_in=region.upper(),
                progress=report,
                camera_share=0.1 if camera_share is None else camera_share,
                trip_km=trip_km,
                upload_format=chosen or "onshore",
            )
    data: dict[str, Any] = {
        "region": result.region,
        "site": site,
        "out": str(out),
        "clips": len(result.clips),
        "rows": result.rows,
        "frames": result.frames,
        "vehicles_inserted": result.vehicles_inserted,
        "fleet_vehicles": result.fleet_vehicles,
        "fleet_arrived": result.fleet_arrived,
        "simulated_minutes": round(result.simulated_s / 60, 1),
        "network": result.network,
        "sensitive_areas": str(result.zones),
    }
    if site is not None:
        with SiteStore.open(proj, site) as opened:
            kept = opened.keep_reference_zones(result.zones.read_bytes())
        data["site_sensitive_areas"] = {"path": kept.path, "written": kept.written}

    def render(d: dict[str, Any]) -> None:
        console.print(
            f"{d['region']}: {d['clips']} clips ({d['rows']:,} rows, {d['frames']:,} camera "
            f"frames) from {d['fleet_vehicles']} "
            f"fleet vehicles among {d['vehicles_inserted']} in traffic, "
            f"{d['simulated_minutes']:g} simulated minutes -> {d['out']}"
        )

    emit(data, as_json, render)
