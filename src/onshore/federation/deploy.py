"""Running the federation across data centres with Flower's deployment engine: a SuperLink at
the coordinator (:func:`serve`), a SuperNode next to each site's data (:func:`join`), and runs
submitted to the SuperLink (:func:`run_deployed`). Each is a party's process, started in that
party's folder with only that party's keys.

- TLS: the SuperLink presents the coordinator's own certificate (its identity's); a site's
  SuperNode trusts exactly that certificate, from the coordinator's identity on file.
- SuperNode authentication: each site's SuperNode signs with its own key (``keys/node.key``);
  the SuperLink admits only the keys the coordinator registered, those of the sites on file
  (:func:`register_sites`), and the coordinator knows which node is which site by them.
- What runs: Flower starts ``flwr-clientapp`` and ``flwr-serverapp`` by name for each task;
  onshore's own programs come first on the processes' ``PATH``
  (:mod:`onshore.federation.runner`): they run only onshore's installed apps, and only for runs
  whose options carry the coordinator's signature.

Each SuperLink and SuperNode is a separate process in a process group of its own, so that
:meth:`FlowerProcess.stop` ends it with every process Flower started under it (SuperExec, the
ServerApp, ClientApps): :mod:`onshore.federation.processes` starts, watches and stops them
(``FlowerProcess``, ``find_flower``, ``foreground`` and ``stop`` are re-exported here); the
certificates are :mod:`onshore.parties.tls`'s.

What lives in a party's folder::

    federation/bin/       onshore's flwr-clientapp (site) or flwr-serverapp (coordinator)
    federation/flower/    FLWR_HOME of the SuperLink or SuperNode
    federation/logs/      superlink.log, supernode.log
    federation/nodes.json the coordinator's record of which SuperNode is which site
    runs/<run>/app/       the Flower app a run submits (its signed options in the run config)
    runs/<run>/flower/    FLWR_HOME of the run's ``flwr run``
    runs/<run>/flower.log what ``flwr run --stream`` printed
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

import orjson

from onshore.errors import ConfigError, FileSystemError, NotAParty, TrainingError
from onshore.federation.options import RUN_CONFIG_KEY, SIGNATURE_KEY, FederatedOptions
from onshore.federation.processes import (
    FlowerProcess,
    check_port_free,
    find_flower,
    foreground,
    free_port,
    join_address,
    logged_reason,
    probe_address,
    process_environment,
    reap_group,
    signal_group,
    split_address,
    start_process,
    stop,
)
from onshore.federation.run import prepare_run
from onshore.federation.runner import sign_options, write_programs
from onshore.files import read_json, write_atomically, write_json
from onshore.forecast.runs import RunFolder
from onshore.parties.identity import LocalParty, load_peers
from onshore.parties.tls import NODE_KEY_FILE, check_certificate
from onshore.settings import Project

__all__ = [
    "DEFAULT_PORT",
    "NODES_FILE",
    "FlowerProcess",
    "find_flower",
    "foreground",
    "join",
    "local_federation",
    "node_sites",
    "register_sites",
    "run_deployed",
    "serve",
    "stop",
    "write_app",
]

FEDERATION_DIR: Final = "federation"
FLOWER_DIR: Final = "federation/flower"
LOGS_DIR: Final = "federation/logs"
BIN_DIR: Final = "federation/bin"
NODES_FILE: Final = "federation/nodes.json"
"""At the coordinator: ``{site: {"node_id", "key"}}`` for every SuperNode it registered."""
DEFAULT_PORT: Final = 9092
"""The SuperLink's port: Fleet (SuperNodes), Control (``flwr run``) and ServerAppIo share it."""
CONNECTION: Final = "onshore"
"""The name of the SuperLink connection in a run's Flower configuration."""
_WILDCARDS: Final = ("0.0.0.0", "::", "")
# --- SuperLink and SuperNodes -------------------------------------------------------------------


def _coordinator(project: Project) -> LocalParty:
    local = LocalParty.of(project)
    if not project.is_coordinator:
        raise NotAParty(
            f"{project.root} is the folder of site {local.id}: the SuperLink runs at the "
            "coordinator",
            hint="run 'onshore federation serve' in the coordinator's folder, and "
            "'onshore site join' here",
        )
    return local


def _federation_address(project: Project) -> str:
    """The SuperLink's address as sites reach it: ``[party] federation`` of the coordinator's
    folder, else its endpoint's host on port 9092."""
    local = LocalParty.of(project)
    if local.settings.federation:
        return local.settings.federation
    host = local.settings.url.removeprefix("https://").rsplit(":", 1)[0]
    return f"{host}:{DEFAULT_PORT}"


def serve(
    project: Project,
    *,
    host: str | None = None,
    port: int | None = None,
    timeout: float = 60.0,
) -> FlowerProcess:
    """Start the coordinator's SuperLink and return it once it listens and every site on file
    is registered (:func:`register_sites`). It presents the coordinator's own TLS certificate
    and admits only registered SuperNodes. ``host``/``port``: where it listens (default: the
    federation address of the coordinator's identity; a name listens on every address).

    Raises :class:`~onshore.errors.NotAParty` outside the coordinator's folder,
    :class:`ConfigError` when Flower is not installed, the port is taken, or the SuperLink ends
    or stays silent at its start (with what it logged).
    """
    local = _coordinator(project)
    binary = find_flower("flower-superlink")
    advertised_host, advertised_port = split_address(_federation_address(project))
    port = advertised_port if port is None else port
    if host is None:
        host = advertised_host if _is_address(advertised_host) else "0.0.0.0"
    tls = local.tls
    check_certificate(tls.cert.read_bytes(), str(tls.cert))
    check_port_free(host, port)
    home = project.root / FLOWER_DIR / "superlink"
    home.mkdir(parents=True, exist_ok=True)
    log = project.root / LOGS_DIR / "superlink.log"
    programs = write_programs(project.root / BIN_DIR, "coordinator")
    command = [
        str(binary),
        "--ssl-ca-certfile",
        str(tls.cert),
        "--ssl-certfile",
        str(tls.cert),
        "--ssl-keyfile",
        str(tls.key),
        "--enable-supernode-auth",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    env = process_environment(home, programs=programs, project=project)
    process, offset = start_process(command, env=env, log=log, cwd=project.root)
    link = FlowerProcess(
        "superlink", join_address(host, port), log, process, probe_address(host, port), offset
    )
    try:
        link.wait_ready(timeout)
        register_sites(project, f"{probe_address(host, port)[0]}:{port}")
    except BaseException:
        link.stop()
        raise
    return link


def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _control_home(project: Project, address: str) -> Path:
    """A FLWR_HOME whose default connection is the coordinator's SuperLink at ``address``."""
    local = LocalParty.of(project)
    home = project.root / FLOWER_DIR / "control"
    write_atomically(
        home / "config.toml",
        (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f"address = {_toml_string(address)}\n"
            f"root-certificates = {_toml_string(str(local.tls.cert))}\n"
        ).encode(),
    )
    return home


def register_sites(project: Project, address: str) -> dict[str, dict[str, Any]]:
    """Register every site on file with the coordinator's SuperLink at ``address``: its
    SuperNode key, from its identity. Writes :data:`NODES_FILE` (which node is which site) and
    returns it. A site whose identity carries no SuperNode key is left out (it cannot join)."""
    flwr = find_flower("flwr")
    env = process_environment(_control_home(project, address))
    folder = project.root / FEDERATION_DIR / "nodes"
    folder.mkdir(parents=True, exist_ok=True)
    known = dict(read_json(project.root / NODES_FILE) or {})
    registered = {str(n.get("key")): n for n in _list_nodes(flwr, env, project)}
    nodes: dict[str, dict[str, Any]] = {}
    for peer in load_peers(project).sites():
        if not peer.node_key:
            continue
        key_file = folder / f"{peer.id}.pub"
        key_file.write_text(peer.node_key + "\n", encoding="ascii")
        found = registered.get(_key_id(peer.node_key))
        if found is not None:
            node_id = int(found["node_id"])
        else:
            done = subprocess.run(
                [str(flwr), "supernode", "register", str(key_file), CONNECTION, "--format", "json"],
                env=env,
                cwd=project.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            answer = _json_tail(done.stdout)
            if done.returncode != 0 or not answer.get("success"):
                previous = known.get(peer.id)
                if previous is not None and previous.get("key") == _key_id(peer.node_key):
                    node_id = int(previous["node_id"])
                else:
                    raise ConfigError(
                        f"the SuperLink did not register {peer.id}'s SuperNode: "
                        f"{(done.stderr or done.stdout).strip()[-300:]}",
                        hint=f"see {project.root / LOGS_DIR / 'superlink.log'}",
                    )
            else:
                node_id = int(answer["node-id"])
        nodes[peer.id] = {"node_id": node_id, "key": _key_id(peer.node_key)}
    write_json(project.root / NODES_FILE, nodes)
    return nodes


def _key_id(openssh: str) -> str:
    """A SuperNode key as Flower lists it: its base64 body."""
    parts = openssh.split()
    return parts[1] if len(parts) > 1 else openssh


def _json_tail(text: str) -> dict[str, Any]:
    """The JSON object ``flwr ... --format json`` printed last."""
    start = text.rfind("\n{")
    start = 0 if start < 0 and text.startswith("{") else start
    try:
        value = orjson.loads(text[start:].strip()) if start >= 0 else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _list_nodes(flwr: Path, env: dict[str, str], project: Project) -> list[dict[str, Any]]:
    """The SuperNodes the SuperLink knows, with their keys (empty when it cannot say)."""
    done = subprocess.run(
        [str(flwr), "supernode", "list", CONNECTION, "--format", "json"],
        env=env,
        cwd=project.root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    answer = _json_tail(done.stdout)
    nodes = answer.get("nodes") if isinstance(answer.get("nodes"), list) else []
    out = []
    for node in nodes or []:
        if isinstance(node, dict) and "node-id" in node:
            key = node.get("owner-public-key") or node.get("public-key") or ""
            out.append({"node_id": node["node-id"], "key": _key_id(str(key))})
    return out


def node_sites(project: Project) -> dict[int, str]:
    """Which registered SuperNode is which site (empty outside a coordinator that served)."""
    nodes = read_json(project.root / NODES_FILE) or {}
    return {int(v["node_id"]): str(site) for site, v in nodes.items() if "node_id" in v}


def join(
    project: Project,
    *,
    superlink: str | None = None,
    port: int | None = None,
    timeout: float | None = 60.0,
) -> FlowerProcess:
    """Start this site's SuperNode: it connects to the coordinator's SuperLink (``superlink``,
    default the federation address in the coordinator's identity) over TLS, trusting only the
    coordinator's certificate, and authenticates with the site's SuperNode key; returns it once
    the SuperLink has admitted it (:attr:`FlowerProcess.node_id`). Its ClientApps find the site
    and its folder in the node config, and run only what :mod:`onshore.federation.runner`
    allows. ``port``: the SuperNode's own API on loopback (default: a free one).
    ``timeout=None`` returns at once; :meth:`FlowerProcess.wait_ready` waits later.

    Raises :class:`~onshore.errors.NotAParty` outside a site's folder,
    :class:`~onshore.errors.PeerNotFound` without the coordinator's identity on file,
    :class:`ConfigError` when Flower is not installed, or when the SuperNode ends or has not
    joined within ``timeout`` (with what it logged: an unreachable SuperLink, a certificate it
    does not trust, a key the coordinator did not register).
    """
    local = LocalParty.of(project)
    if project.is_coordinator:
        raise NotAParty(
            "the coordinator holds no data to train on",
            hint="run 'onshore site join' in a site's folder",
        )
    coordinator = load_peers(project).coordinator
    if coordinator is None:
        from onshore.errors import PeerNotFound

        raise PeerNotFound(
            f"{project.root}: no coordinator among the peers on file",
            hint="add the coordinator's identity with 'onshore party trust FILE'",
        )
    superlink = superlink or coordinator.federation
    if not superlink:
        raise ConfigError("the coordinator's identity names no SuperLink; pass --superlink")
    split_address(superlink)
    root = str(project.root.resolve())
    if "'" in root:  # the node config quotes it so
        raise ConfigError(f"the party's folder {root} has a quote in its name; rename it")
    key = local.keystore / NODE_KEY_FILE
    if not key.is_file():
        raise ConfigError(
            f"{key} is missing: the site has no SuperNode key",
            hint="restore the site's keystore",
        )
    binary = find_flower("flower-supernode")
    home = project.root / FLOWER_DIR / "supernode"
    home.mkdir(parents=True, exist_ok=True)
    trusted = project.root / FEDERATION_DIR / "coordinator.crt"
    write_atomically(trusted, coordinator.tls_certificate.encode())
    log = project.root / LOGS_DIR / "supernode.log"
    api_port = port or free_port("127.0.0.1")
    programs = write_programs(project.root / BIN_DIR, "site")
    command = [
        str(binary),
        "--root-certificates",
        str(trusted),
        "--superlink",
        superlink,
        "--auth-supernode-private-key",
        str(key),
        "--node-config",
        f"site='{local.id}' project='{root}'",
        "--host",
        "127.0.0.1",
        "--port",
        str(api_port),
    ]
    env = process_environment(home, programs=programs, project=project)
    process, offset = start_process(command, env=env, log=log, cwd=project.root)
    node = FlowerProcess(
        "supernode", superlink, log, process, ("127.0.0.1", api_port), offset, site=local.id
    )
    if timeout is not None:
        node.wait_ready(timeout)
    return node


# --- Runs -------------------------------------------------------------------------------------


def run_deployed(
    project: Project,
    options: FederatedOptions,
    *,
    superlink: str | None = None,
    say: Callable[[str], None] = lambda _m: None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Train ``options.model`` across ``options.sites`` on the coordinator's SuperLink and
    return the run's summary, as :func:`~onshore.federation.run.run_federated` does in
    simulation. The run's options are signed with the coordinator's key: sites run nothing
    else.

    ``project`` is the coordinator's folder: the SuperLink runs with it (``onshore federation
    serve``), and the ServerApp writes the summary to ``<project>/runs/<run>/federated.json``,
    which is read back here. ``superlink``: its address (default: the federation address of
    the coordinator's identity). Each site's SuperNode should have joined (``onshore site
    join``); the first round waits ``options.join_timeout`` for them, then goes on with those
    that did. A run that finished earlier is read back. ``say`` hears of each round as the
    coordinator's ledger records it. ``timeout``: seconds before the run is stopped.

    Raises :class:`~onshore.errors.NotAParty` outside the coordinator's folder,
    :class:`ConfigError` for options that differ from an earlier run of that id or a bad
    address, and :class:`TrainingError` when the run fails or ends without a summary (with the
    end of Flower's log and where the rest is).
    """
    local = _coordinator(project)
    superlink = superlink or _federation_address(project)
    split_address(superlink)
    flwr = find_flower("flwr")
    options, done = prepare_run(project, options, say)
    if done is not None:
        return done
    run = RunFolder.of(project, options.run)
    folder = run.path
    signature = sign_options(options.to_json(), local.keys())
    app = write_app(folder / "app", options, signature)
    home = folder / "flower"
    write_atomically(
        home / "config.toml",
        (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f"address = {_toml_string(superlink)}\n"
            f"root-certificates = {_toml_string(str(local.tls.cert))}\n"
        ).encode(),
    )
    log = folder / "flower.log"
    begun = log.stat().st_size if log.exists() else 0
    earlier_rounds = folder / "rounds.json"
    stale = earlier_rounds.stat().st_mtime_ns if earlier_rounds.exists() else -1
    say(
        f"federated run {options.run} on the SuperLink at {superlink}: "
        f"{len(options.sites)} sites, {options.rounds} rounds of {options.strategy}, "
        f"{options.model.name}" + (", DP-SGD at every site" if options.dp else ", without DP")
    )
    say(
        f"sites have {options.join_timeout:g} s to connect before round 1, and each round "
        f"{options.timeout:g} s to answer; a site that does not is left out and named"
    )
    env = process_environment(home)
    command = [str(flwr), "run", str(app), CONNECTION, "--stream"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
        start_new_session=True,
    )
    run_id: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=_copy_output, args=(process.stdout, log, run_id), daemon=True)
    reader.start()
    announced, shown = False, 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while process.poll() is None:
            if run_id and not announced:
                say(f"Flower run {run_id[0]} started; Flower's log: {log}")
                announced = True
            shown = _say_rounds(folder, options, shown, say, stale)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)
    except (KeyboardInterrupt, TimeoutError) as exc:
        _stop_run(flwr, env, folder, run_id)
        signal_group(process, signal.SIGTERM)
        reap_group(process, 10.0)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TrainingError(
            f"federated run {options.run} did not finish within {timeout:g} s; it was stopped "
            f"({logged_reason(log, begun)})",
            hint=f"check that the sites' SuperNodes joined (onshore site join) and see {log}",
        ) from None
    finally:
        reader.join(timeout=5.0)
        process.stdout.close()
    _say_rounds(folder, options, shown, say, stale)
    summary = run.read("federated.json")
    if summary is None:
        raise TrainingError(
            f"federated run {options.run} ended without a result: {logged_reason(log, begun)}",
            hint=f"Flower's log is {log}, the SuperLink's {LOGS_DIR}/superlink.log in the "
            f"coordinator's folder; is 'onshore federation serve' running at {superlink}? The "
            "rounds done so far are in the coordinator's ledger and the run's rounds.json",
        )
    return dict(summary)


def write_app(folder: Path, options: FederatedOptions, signature: str = "") -> Path:
    """Write the Flower app a run submits: onshore's apps, and the run's options and the
    coordinator's ``signature`` of them in its run config. Returns ``folder``."""
    text = (
        "# Written by onshore for one federated run; `flwr run` builds it into a FAB.\n"
        "[build-system]\n"
        'requires = ["hatchling"]\n'
        'build-backend = "hatchling.build"\n\n'
        "[project]\n"
        'name = "onshore-federation"\n'
        'version = "1.0.0"\n'
        f"description = {_toml_string(f'onshore federated run {options.run}')}\n"
        'license = "Apache-2.0"\n'
        "dependencies = []\n\n"
        "[tool.flwr.app]\n"
        'publisher = "onshore"\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "onshore.federation.apps:server_app"\n'
        'clientapp = "onshore.federation.apps:client_app"\n\n'
        "[tool.flwr.app.config]\n"
        f"{RUN_CONFIG_KEY} = {_toml_string(options.to_json())}\n"
        f"{SIGNATURE_KEY} = {_toml_string(signature)}\n"
    )
    write_atomically(folder / "pyproject.toml", text.encode())
    return folder


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string: JSON's escapes are TOML's, except that TOML wants
    DEL escaped too."""
    return orjson.dumps(value).decode().replace("\x7f", "\\u007f")


def _copy_output(stream: IO[bytes], log: Path, run_id: list[str]) -> None:
    """Copy what ``flwr run`` prints to ``log``, and note the run's id when it is given."""
    with open(log, "ab") as out, contextlib.suppress(ValueError, OSError):  # closed under us
        for line in iter(stream.readline, b""):
            out.write(line)
            out.flush()
            match = re.search(rb"Successfully started run (\d+)", line)
            if match and not run_id:
                run_id.append(match.group(1).decode())


def _say_rounds(
    folder: Path, options: FederatedOptions, shown: int, say: Callable[[str], None], since: int
) -> int:
    """Say the rounds of ``rounds.json`` after the first ``shown``, unless the file is older
    than ``since`` (an earlier attempt's); returns how many have been said."""
    path = folder / "rounds.json"
    try:
        if path.stat().st_mtime_ns <= since:
            return shown
        rounds = read_json(path) or []
    except (OSError, FileSystemError):
        return shown
    for record in rounds[shown:]:
        accepted = ", ".join(a["site"] for a in record["accepted"]) or "none"
        refused = "; ".join(
            f"{r.get('site') or 'node ' + str(r.get('node'))}: {r.get('reason')}"
            for r in record["refused"]
        )
        say(
            f"round {record['round']}/{options.rounds} {record['kind']}: accepted {accepted}"
            + (f"; refused {refused}" if refused else "")
        )
    return max(shown, len(rounds))


def _stop_run(flwr: Path, env: dict[str, str], cwd: Path, run_id: list[str]) -> None:
    """Ask the SuperLink to stop the run, so that it does not go on without anyone waiting."""
    if not run_id:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [str(flwr), "stop", run_id[0], CONNECTION],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )


@contextlib.contextmanager
def local_federation(
    coordinator: Project, sites: Sequence[Project], *, port: int | None = None
) -> Iterator[tuple[FlowerProcess, list[FlowerProcess]]]:
    """The coordinator's SuperLink and each site's SuperNode, each started in its own party's
    folder on this machine, stopped on exit (SuperNodes first): what the demo, a drill or a
    test of the deployment needs."""
    address = _federation_address(coordinator)
    host, advertised = split_address(address)
    link = serve(coordinator, port=port or advertised)
    nodes: list[FlowerProcess] = []
    try:
        for site in sites:
            nodes.append(join(site, superlink=f"{host}:{port or advertised}", timeout=None))
        for node in nodes:
            node.wait_ready()
        yield link, nodes
    finally:
        stop(*nodes, link)
