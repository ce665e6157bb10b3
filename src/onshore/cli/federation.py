"""``onshore federation`` and ``onshore site join``: the federation across data centres. The
coordinator serves a SuperLink over TLS with certificates onshore makes; each site joins it with
a SuperNode next to its data, trusting the coordinator's CA certificate."""

from __future__ import annotations

import ipaddress
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from onshore.cli.output import JsonOption, ProjectOption, console, emit, err_console
from onshore.settings import load_project

__all__ = ["app", "site_app"]

app = typer.Typer(
    help="The federation across data centres: the coordinator's SuperLink and its certificates.",
    no_args_is_help=True,
)
site_app = typer.Typer(help="A site's part in the federation.", no_args_is_help=True)

CertsOption = Annotated[
    Path | None,
    typer.Option(
        "--certs",
        help="Certificate folder (default: the project's federation/certs).",
        show_default=False,
    ),
]
HostsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--hosts",
        help="Names and addresses sites reach the SuperLink at, for its certificate (repeat, "
        "or separate by commas; default: localhost, 127.0.0.1 and --host).",
        show_default=False,
    ),
]


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port for SuperNodes and runs alike.")
    ] = 9092,
    certs: CertsOption = None,
    hosts: HostsOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the coordinator's SuperLink over TLS until Ctrl-C. Certificates are made when the
    folder has none; give each site ca.crt and the join command printed here."""
    from onshore.federation import deploy

    proj = load_project(project)
    link = deploy.serve(proj, host, port, certs, hosts=_hosts(hosts))
    try:
        assert link.certificates is not None
        address = _advertised(host, port, link.certificates.hosts)
        ca = link.certificates.ca_cert
        data = {
            **link.as_dict(),
            "address": address,
            "ca_cert": str(ca),
            "join": {
                site: shlex.join(
                    [
                        "onshore",
                        "site",
                        "join",
                        site,
                        "--superlink",
                        address,
                        "--root-certificates",
                        "ca.crt",
                    ]
                )
                for site in proj.settings.sites
            },
        }

        def render(d: dict[str, Any]) -> None:
            console.print(f"SuperLink at {d['address']} (pid {d['pid']}, TLS), log {d['log']}")
            console.print(f"CA certificate: {d['ca_cert']}")
            console.print("Copy it to each site as ca.crt, and run there:")
            for command in d["join"].values():
                console.print(f"  {command}")
            console.print(
                f"Then train: onshore train --mode federated --superlink {d['address']} "
                f"--root-certificates {d['ca_cert']}"
            )
            console.print("Ctrl-C stops the SuperLink.")

        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
        emit(data, as_json, render)
        sys.stdout.flush()
    except BaseException:
        link.stop()
        raise
    try:
        deploy.foreground(link)
    except KeyboardInterrupt:  # interrupted before foreground took over the signals
        link.stop()
    if not as_json:
        err_console.print("SuperLink stopped")


@app.command("certs")
def make_certs(
    hosts: HostsOption = None,
    certs: CertsOption = None,
    days: Annotated[int, typer.Option(min=1, help="Days the certificates are valid.")] = 365,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace certificates that exist (sites must then get the new ca.crt)."
        ),
    ] = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make the federation's CA and the SuperLink's server certificate (EC P-256; private
    keys readable by their owner only). Sites get ca.crt; the keys stay here."""
    from onshore.federation import deploy

    folder = certs or load_project(project).root / deploy.CERTS_DIR
    made = deploy.make_certificates(
        folder, _hosts(hosts) or deploy.DEFAULT_HOSTS, overwrite=force, days=days
    )

    def render(d: dict[str, Any]) -> None:
        console.print(f"Certificates in {d['folder']}, valid for {', '.join(d['hosts'])}")
        console.print(f"  until {d['expires']}")
        console.print(f"  give each site {d['ca_cert']}; keep the .key files here")

    emit(made.as_dict(), as_json, render)


@site_app.command()
def join(
    site: Annotated[str, typer.Argument(help="The site this SuperNode serves, next to its data.")],
    superlink: Annotated[
        str, typer.Option("--superlink", help="The coordinator's SuperLink, as HOST:PORT.")
    ],
    root_certificates: Annotated[
        Path,
        typer.Option("--root-certificates", help="The coordinator's CA certificate (its ca.crt)."),
    ],
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
        typer.Option(min=1.0, help="Seconds to wait for the SuperLink to register this node."),
    ] = 60.0,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run this site's SuperNode until Ctrl-C: it trains at the site on the site's data when
    the coordinator asks, and only what the site's gate lets go leaves."""
    from onshore.federation import deploy

    proj = load_project(project)
    node = deploy.join(proj, site, superlink, root_certificates, port=port, timeout=timeout)
    try:

        def render(d: dict[str, Any]) -> None:
            console.print(
                f"SuperNode of {site} (pid {d['pid']}) joined the SuperLink at {d['address']} "
                f"over TLS as node {d['node_id']}; log {d['log']}"
            )
            console.print("Ctrl-C stops it.")

        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
        emit({**node.as_dict(), "site": site, "project": str(proj.root)}, as_json, render)
        sys.stdout.flush()
    except BaseException:
        node.stop()
        raise
    try:
        deploy.foreground(node)
    except KeyboardInterrupt:  # interrupted before foreground took over the signals
        node.stop()
    if not as_json:
        err_console.print("SuperNode stopped")


def _hosts(hosts: list[str] | None) -> list[str] | None:
    if not hosts:
        return None
    return [h.strip() for item in hosts for h in item.split(",") if h.strip()]


def _advertised(host: str, port: int, names: tuple[str, ...]) -> str:
    """The address sites should dial: ``host``, or when it is a wildcard the first name in the
    certificate that is not loopback."""
    if host not in ("0.0.0.0", "::", ""):
        chosen = host
    else:
        outside = [n for n in names if not _loopback(n)]
        chosen = (outside or list(names) or ["127.0.0.1"])[0]
    return f"[{chosen}]:{port}" if ":" in chosen else f"{chosen}:{port}"


def _loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
