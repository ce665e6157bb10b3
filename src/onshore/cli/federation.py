"""``onshore federation serve`` and ``onshore site join``: the federation across data centres.
The coordinator serves a SuperLink with its own certificate, admitting only the SuperNodes of
the sites on file; each site joins it from its own folder, trusting only the coordinator's
certificate and authenticating with its own SuperNode key."""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Any

import typer

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.settings import load_project

__all__ = ["app", "site_app"]

app = typer.Typer(
    help="The federation across data centres: the coordinator's SuperLink.",
    no_args_is_help=True,
)
site_app = typer.Typer(help="A site's part in the federation.", no_args_is_help=True)


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on (default: the federation address of this coordinator's "
            "identity; 0.0.0.0 for every interface).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Port for SuperNodes and runs alike (default: the federation address's).",
            show_default=False,
        ),
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the coordinator's SuperLink until Ctrl-C, in the coordinator's folder: TLS with its
    own certificate, SuperNode authentication, every site on file registered. Each site then
    runs 'onshore site join' in its own folder."""
    from onshore.federation import deploy
    from onshore.parties.identity import load_peers

    proj = load_project(project)
    link = deploy.serve(proj, host=host, port=port)
    try:
        nodes = deploy.node_sites(proj)
        data = {
            **link.as_dict(),
            "sites": {site: node for node, site in nodes.items()},
            "join": "onshore site join",
            "train": "onshore train --mode federated",
            "peers": sorted(p.id for p in load_peers(proj).sites()),
        }

        def render(d: dict[str, Any]) -> None:
            console.print(
                f"SuperLink at {d['address']} (pid {d['pid']}, TLS, SuperNode authentication), "
                f"log {d['log']}"
            )
            registered = ", ".join(f"{s} (node {n})" for s, n in d["sites"].items())
            console.print(f"Registered SuperNodes: {registered or 'none'}")
            console.print("In each site's folder, run:")
            console.print(f"  {d['join']}", soft_wrap=True)
            console.print("Then, in this folder, train:")
            console.print(f"  {d['train']}", soft_wrap=True)
            console.print("Ctrl-C stops the SuperLink.")

        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
        emit(data, as_json, render)
        sys.stdout.flush()
        deploy.foreground(link)
    except KeyboardInterrupt:  # Ctrl-C: before foreground took over the signals, or in it
        link.stop()
    except BaseException:
        link.stop()
        raise
    if not as_json:
        err_console.print("SuperLink stopped")


@site_app.command()
def join(
    superlink: Annotated[
        str | None,
        typer.Option(
            "--superlink",
            help="The coordinator's SuperLink, HOST:PORT (default: from its identity on file).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="This SuperNode's own API port on loopback (default: a free one).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(min=1.0, help="Seconds to wait for the SuperLink to admit this node."),
    ] = 60.0,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run this site's SuperNode until Ctrl-C, in the site's folder: it trains here on the
    site's data when the coordinator asks, runs only onshore's apps for runs the coordinator
    signed, and sends only what the site's gate lets go."""
    from onshore.federation import deploy

    proj = load_project(project)
    node = deploy.join(proj, superlink=superlink, port=port, timeout=timeout)
    try:

        def render(d: dict[str, Any]) -> None:
            console.print(
                f"SuperNode of {d['site']} (pid {d['pid']}) joined the SuperLink at "
                f"{d['address']} over TLS as node {d['node_id']}; log {d['log']}"
            )
            console.print("Ctrl-C stops it.")

        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
        emit({**node.as_dict(), "project": str(proj.root)}, as_json, render)
        sys.stdout.flush()
        deploy.foreground(node)
    except KeyboardInterrupt:  # Ctrl-C: before foreground took over the signals, or in it
        node.stop()
    except BaseException:
        node.stop()
        raise
    if not as_json:
        err_console.print("SuperNode stopped")
