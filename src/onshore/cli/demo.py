"""``onshore demo``: the whole story so far, on the embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.markup import escape
from rich.table import Table

from onshore.cli.fleet import SiteMinutesOption, SiteVehiclesOption, TripKmOption
from onshore.cli.output import JsonOption, console, emit, err_console
from onshore.cli.store import inventory_table
from onshore.cli.train import render_funnel, render_groups

__all__ = ["register"]


def demo(
    folder: Annotated[
        Path, typer.Option("--dir", help="Folder to make the parties' folders in.")
    ] = Path("onshore-demo"),
    vehicles: SiteVehiclesOption = 150,
    minutes: SiteMinutesOption = 6.0,
    trip_km: TripKmOption = None,
    seed: Annotated[int, typer.Option(help="Seed for every simulation.")] = 7,
    rounds: Annotated[int, typer.Option(min=0, help="Federated rounds (0: no training).")] = 5,
    local_steps: Annotated[
        int, typer.Option(min=1, help="Steps per round at a site of relative throughput 1.")
    ] = 100,
    fine_tune_steps: Annotated[
        int,
        typer.Option(
            "--fine-tune-steps",
            min=0,
            help="Steps each site fine-tunes the federated model on its own data (0: none).",
        ),
    ] = 300,
    as_json: JsonOption = False,
) -> None:
    """The whole story on the embedded defaults, each party (three sites and the coordinator)
    its own process with its own folder on loopback: simulated fleets, ingest, classification,
    de-identification, the gate, transfers and reads between the parties' services, local and
    federated training, the release and its licence, reports and ledgers. Progress goes to
    stderr, also with --json."""
    from onshore.demo import run_demo

    def say(message: str) -> None:
        err_console.print(f"[bold cyan]>[/] {message}")

    result = run_demo(
        folder,
        vehicles=vehicles,
        minutes=minutes,
        trip_km=trip_km,
        seed=seed,
        rounds=rounds,
        local_steps=local_steps,
        fine_tune_steps=fine_tune_steps,
        say=say,
    )

    def render(d: dict[str, Any]) -> None:
        console.print(_parties_table(d["parties"]))
        console.print(inventory_table(d["inventory"]))
        console.print(_found_table(d["classify"]))
        console.print(_removed_table(d["deidentify"]))
        if d["transfers"]:
            console.print(_gate_table(d["transfers"]))
            _print_denials(d["transfers"])
        _print_reads(d.get("reads", []))
        if d["training"]:
            console.print(_training_table(d["training"]))
            federated = d["training"]["federated"]["regions"]
            render_groups(federated)
            fine_tuned = d["training"]["federated"].get("fine_tuned") or {}
            if fine_tuned:
                render_groups(
                    {
                        site: {**t, "baselines": federated.get(site, {}).get("baselines", {})}
                        for site, t in fine_tuned.items()
                    },
                    title="the federated model fine-tuned at each site, by kind of motion",
                )
            render_funnel({site: r.get("funnel", {}) for site, r in federated.items()})
            _print_refusals(d["training"]["federated"])
            if d["training"].get("release"):
                _print_release(d["training"]["release"])
        for report in d.get("reports", []):
            console.print(f"Report {report['report']} of {report['site']}: {report['html']}, .pdf")
        if d.get("plan"):
            from onshore.cli.plan import render as render_plan

            render_plan(d["plan"])
        console.print(
            "Ledgers: "
            + "; ".join(
                f"{v['site']} {'verified' if v['ok'] else '[red]NOT verified[/]'} "
                f"({v['entries']} entries, {v['peer_heads']} heads checked with its peers)"
                for v in d["ledgers"]
            )
        )
        _print_summary(d)

    emit(result, as_json, render)


_ERASURE: Final = {"erased": "complete", "already_erased": "done before"}
"""An erasure's status, as the summary says it."""


def _print_summary(d: dict[str, Any]) -> None:
    """What the demo did, in a few lines, and how to look at it in the console."""
    clips = sum(inv["clips"] for inv in d["inventory"])
    steps = d["transfers"]
    moved = sum(1 for s in steps if s["status"] in ("transferred", "already_transferred"))
    lines = [
        f"{clips} clips at {len(d['inventory'])} sites, classified and de-identified where "
        "they were recorded",
        f"gate: {len(steps) - moved} transfers refused, {moved} allowed, each decided at its "
        "origin and sent to the destination's service; both ledgers record what moved",
    ]
    reads = d.get("reads", [])
    if reads:
        shown = sum(1 for r in reads if r["access"]["allowed"])
        lines.append(
            f"reads from abroad: {len(reads) - shown} withheld, {shown} shown, each decided by "
            "the site's own gate"
        )
    training = d.get("training")
    if training:
        fed = training["federated"]
        ade = ", ".join(
            f"{site} {r['ade']:.3f} m" for site, r in sorted(fed["regions"].items()) if r.get("ade")
        )
        lines.append(f"federated model: {fed['rounds']} rounds, ADE {ade or 'not evaluated'}")
        tuned = ", ".join(
            f"{site} {t['ade']:.3f} m"
            for site, t in sorted((fed.get("fine_tuned") or {}).items())
            if t.get("ade")
        )
        if tuned:
            lines.append(f"fine-tuned at each site (kept there): ADE {tuned}")
        release = training.get("release")
        if release:
            lines.append(
                f"release {release['release']['version']}: "
                f"{'verified' if release['verify']['valid'] else 'NOT verified'}, "
                f"licensed to {release['licence']['licensee']} for "
                f"{', '.join(release['licence']['territories'])}"
            )
    rights = d.get("rights")
    if rights:
        erased = rights["erasure"]
        confirmed = [p for p, r in erased["recipients"].items() if r["status"] == "confirmed"]
        lines.append(
            f"a driver's rights at {erased['site']}: access answered ({rights['access']['out']}), "
            f"erasure {_ERASURE.get(erased['status'], erased['status'])} ({erased['clips']} "
            "clips; the copy at "
            f"{', '.join(confirmed) or 'no other party'} erased and confirmed)"
        )
    lines.append(f"reports: {len(d.get('reports', []))} written, each in its site's folder")
    plan = d.get("plan")
    if plan:
        lines.append(
            f"plan: {plan['recommended']} recommended, decided by {plan['decided_by']}; memo "
            f"{plan['memo']['html']}"
        )
    ok = all(v["ok"] for v in d["ledgers"])
    lines.append(f"ledgers: {'every one verified' if ok else '[red]NOT all verified[/]'}")
    console.print("[bold]Summary[/] (" + f"{d['seconds']:.0f} s)")
    for line in lines:
        console.print(f"  {line}")
    if d.get("console"):
        console.print("The parties' services stopped with the demo. To look around, start them:")
        # Commands to copy and paste: printed whole, never wrapped.
        for command in d["console"]["serve"].values():
            console.print(f"  {command} &", soft_wrap=True)
        console.print("then open the coordinator's console:")
        console.print(f"  {d['console']['command']}", soft_wrap=True)
        console.print(
            f"  http://127.0.0.1:8765/ (users and passwords in {d['console']['passwords']})"
        )


def _parties_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("party", "folder", "service", "pid", title="The parties, each its own process")
    for r in rows:
        table.add_row(r["party"], r["folder"], r["endpoint"], str(r["pid"]))
    return table


def _print_reads(reads: list[dict[str, Any]]) -> None:
    for r in reads:
        access = r["access"]
        verdict = "[green]shown[/]" if access["allowed"] else "[red]withheld[/]"
        reason = "" if access["allowed"] else f": {escape(access['decision']['reasons'][0])}"
        console.print(
            f"Read of {r['site']}'s clips by the coordinator ({escape(r['note'])}): {verdict}"
            f" ({access['how']}){reason}"
        )


def _found_table(rows: list[dict[str, Any]]) -> Table:
    categories = sorted({name for d in rows for name in d["categories"]})
    table = Table(
        "category", *(d["site"] for d in rows), title="What the clips hold (clips with each)"
    )
    for category in categories:
        table.add_row(
            category, *(str(d["categories"].get(category, {}).get("clips", 0)) for d in rows)
        )
    for subject in ("vehicles", "persons", "plates"):
        counts = [d["subjects"][subject] for d in rows]
        table.add_row(
            f"[italic]{subject} seen[/]", *("-" if n is None else f"{n:,}" for n in counts)
        )
    return table


def _removed_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="De-identified in each site's own store",
        caption="kept of the raw clips, rows and frames; rows removed in sensitive areas and "
        "at trip ends; faces and plates masked; the state and how many checks held",
    )
    for header in ("site, profile", "clips", "rows", "zones+ends", "frames", "masked", "state"):
        table.add_column(header, no_wrap=True)
    for d in rows:
        held = sum(c["held"] for c in d["checks"])
        frames = d["frames"]
        removed = d["removed"]
        table.add_row(
            f"{d['site']} {d['profile']}",
            f"{d['clips']}/{d['clips_in']}",
            f"{d['rows'] / max(d['rows_in'], 1):.0%}",
            f"{removed.get('drop_zones', 0):,} + {removed.get('trim_ends', 0):,}",
            f"{frames['kept']}/{frames['in']}",
            f"{frames['faces_masked']} f, {frames['plates_masked']} p",
            f"{d['state']} {held}/{len(d['checks'])}",
        )
    return table


def _gate_table(steps: list[dict[str, Any]]) -> Table:
    table = Table("transfer", "holds", "decision", title="The gate")
    for step in steps:
        decision = step["decision"]
        items = ", ".join(
            f"{i['category']} ({i['subjects']:,}, {i['deid_state']})"
            for i in step["dataset"]["data"]
        )
        if step["allowed"]:
            how = (
                f"under {decision['approval']['id']}"
                if decision["approval"]
                else "exempt"
                if decision["exempt"]
                else ""
            )
            verdict = f"[green]allowed[/] {how}; {step['status'].replace('_', ' ')}"
        elif decision["prohibited"]:
            verdict = "[red]prohibited[/]"
        else:
            why = []
            # The law's own verdict comes first; a consent refusal alone leads with itself.
            if "did not consent" not in decision["reasons"][0]:
                why.append(f"needs {' or '.join(decision['mechanisms']) or 'a rule'}")
            if step["dataset"]["without_consent"] and step["purpose"].endswith("_training"):
                why.append(f"{step['dataset']['without_consent']} clips lack training consent")
            verdict = "[red]denied[/]; " + "; ".join(why)
        table.add_row(
            f"{step['from']} -> {step['to']}: {step['dataset']['dataset']}\n"
            f"[dim]{escape(step['note'])}[/]",
            items,
            verdict,
        )
    return table


def _print_denials(steps: list[dict[str, Any]]) -> None:
    for step in steps:
        if step["allowed"]:
            continue
        console.print(f"[bold]Why not[/] ({escape(step['note'])}):")
        for reason in step["decision"]["reasons"][:2]:
            console.print(f"  - {escape(reason)}")


def _training_table(training: dict[str, Any]) -> Table:
    local, federated = training["local"], training["federated"]
    table = Table(
        "region (own test split)",
        "test samples",
        "constant velocity",
        "local model",
        "federated model",
        "federated / local",
        "fine-tuned at the site",
        "fine-tuned / local",
        "epsilon",
        "bytes crossed",
        title=f"The driving model ({federated['model']['name']}): ADE / FDE in metres",
        caption=f"{federated['rounds']} rounds of {federated['strategy']} with DP-SGD at "
        "each site; epsilon at delta 1e-5 spent in this run"
        + (
            f"; fine-tuned: {steps} more steps at each site on its own data, the weights kept "
            "there, only their errors sent"
            if (steps := (federated.get("options") or {}).get("fine_tune_steps"))
            else ""
        ),
    )
    tuned = federated.get("fine_tuned") or {}
    for site, fed in sorted(federated["regions"].items()):
        own = local["regions"].get(site, {})
        cv = fed["baselines"]["constant_velocity"]
        ratio = f"{fed['ade'] / own['ade']:.2f}" if own.get("ade") else "-"
        ft = tuned.get(site, {})
        eps = federated["epsilon"].get(site)
        table.add_row(
            site,
            f"{fed['samples']:,}",
            f"{cv['ade']:.3f} / {cv['fde']:.3f}",
            f"{own['ade']:.3f} / {own['fde']:.3f}" if own.get("ade") else "-",
            f"{fed['ade']:.3f} / {fed['fde']:.3f}",
            ratio,
            f"{ft['ade']:.3f} / {ft['fde']:.3f}" if ft.get("ade") else "-",
            f"{ft['ade'] / own['ade']:.2f}" if ft.get("ade") and own.get("ade") else "-",
            "-" if eps is None else f"{eps:.2f}",
            f"{federated['bytes_crossed'].get(site, 0):,}",
        )
    return table


def _print_refusals(federated: dict[str, Any]) -> None:
    refused: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    for r in federated.get("refusals", []):
        site = r.get("site") or f"node {r['node']}"
        refused.setdefault(site, []).append(r["round"])
        reasons.setdefault(site, r["detail"])
    for site, rounds in refused.items():
        console.print(
            f"[bold]{escape(site)}[/]: updates kept at the site in rounds "
            f"{', '.join(map(str, sorted(set(rounds))))}: {escape(reasons[site])}"
        )


def _print_release(story: dict[str, Any]) -> None:
    release, licence = story["release"], story["licence"]
    console.print(
        f"[bold]Release {release['version']}[/]: {release['bundle']} "
        f"({'verified' if story['verify']['valid'] else '[red]NOT verified[/]'}); made by "
        + "; ".join(
            f"{escape(p['entity'])} ({p['role']}, {p['country']})" for p in release["parties"]
        )
    )
    console.print(
        f"[bold]Licence[/] {licence['id']} to {escape(licence['licensee'])}: "
        f"{', '.join(licence['territories'])}, {', '.join(licence['purposes'])}, model years "
        f"{licence['model_years']}, until {licence['expires']}"
    )
    for load in story["loads"]:
        where = f"{load['territory']} model year {load['model_year']}"
        if load["loaded"]:
            console.print(f"  load in {where}: [green]allowed[/]")
        else:
            console.print(f"  load in {where}: [red]refused[/] - {escape(load['reason'])}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
