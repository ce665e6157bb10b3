"""The federation across data centres, each party from its own folder: the coordinator's
SuperLink presents its own certificate and admits only the SuperNodes of the sites on file; a
site's SuperNode trusts only its coordinator; a run carries the coordinator's signature and a
site runs nothing else, nor any app but onshore's; a site that is gone is dropped and named; the
serve and join commands stop what they started. Real processes on loopback, over TLS."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, make_clip, make_parties
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import Clip
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError, NotAParty, PeerNotFound
from onshore.federation import deploy
from onshore.federation.options import FederatedOptions
from onshore.federation.runner import REFUSED_KIND, app_problem, options_problem, sign_options
from onshore.forecast.nets import ModelSpec
from onshore.ingest import ingest
from onshore.ledger import Ledger, verify
from onshore.parties.identity import LocalParty
from onshore.settings import Project
from onshore.sites import init_project
from onshore.store import SiteStore
from onshore.store.catalogue import Catalogue
from test_federation import both_splits

SITES = ("cn-shanghai", "eu-frankfurt", "us-oregon")
COORD = "coordinator"
PLACES = {
    "cn-shanghai": (31.23, 121.47),
    "eu-frankfurt": (50.11, 8.68),
    "us-oregon": (45.52, -122.68),
}
Parties = dict[str, Project]


def _flower() -> None:
    try:
        deploy.find_flower("flower-superlink")
    except ConfigError:
        pytest.skip("Flower's flower-superlink is not installed beside Python or on PATH")


def _group_members(group: int) -> list[int]:
    """Live processes of a process group (Linux)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _coordinator_entries(project: Project, kind: str) -> list[dict[str, Any]]:
    coordinator = project.settings.coordinator
    catalogue = Catalogue(project.catalogue_url(coordinator), coordinator.id)
    try:
        return [e.data for e in Ledger.open(catalogue).entries(kind=kind)]
    finally:
        catalogue.close()


def _site_entries(project: Project, kind: str) -> list[dict[str, Any]]:
    with SiteStore.open(project) as site:
        return [e.data for e in Ledger.open(site.catalogue).entries(kind=kind)]


# -- what a site runs ----------------------------------------------------------------------------


def _app(folder: Path, components: dict[str, str], files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True)
    lines = ["[tool.flwr.app.components]"] + [f'{k} = "{v}"' for k, v in components.items()]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    (folder / ".info").mkdir()
    (folder / ".info" / "CONTENT").write_text("x")
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return folder


def test_a_site_runs_only_onshore_s_apps_for_runs_its_coordinator_signed(
    parties: Parties, tmp_path: Path
) -> None:
    ours = {
        "serverapp": "onshore.federation.apps:server_app",
        "clientapp": "onshore.federation.apps:client_app",
    }
    assert app_problem(_app(tmp_path / "ours", ours)) is None
    evil = _app(tmp_path / "evil", {"serverapp": "evil:app", "clientapp": "evil:app"})
    assert "not onshore's" in str(app_problem(evil))
    smuggled = _app(tmp_path / "smuggled", ours, {"onshore.py": "import os"})
    assert "files of its own" in str(app_problem(smuggled))
    options = FederatedOptions(run="r", sites=SITES).to_json()
    keys = LocalParty.of(parties[COORD]).keys()
    signed = {"onshore-options": options, "onshore-signature": sign_options(options, keys)}
    assert options_problem(signed, keys.public_key) is None
    stranger = LocalParty.of(parties[SITES[0]]).keys()
    forged = {**signed, "onshore-signature": sign_options(options, stranger)}
    assert "stranger's run" in str(options_problem(forged, keys.public_key))
    changed = {**signed, "onshore-options": options.replace('"rounds":10', '"rounds":99')}
    assert "stranger's run" in str(options_problem(changed, keys.public_key))
    assert "not signed" in str(options_problem({"onshore-options": options}, keys.public_key))
    assert "not an onshore run" in str(options_problem({}, keys.public_key))


def test_join_and_serve_refuse_what_is_not_their_party(parties: Parties, tmp_path: Path) -> None:
    lab = init_project(tmp_path / "lab", "three-regions")
    with pytest.raises(NotAParty):
        deploy.join(lab, timeout=5)
    with pytest.raises(NotAParty):
        deploy.join(parties[COORD], timeout=5)
    with pytest.raises(NotAParty, match="coordinator"):
        deploy.serve(parties[SITES[0]])
    lonely = make_parties(tmp_path / "lonely", only="us-oregon")["us-oregon"]
    with pytest.raises(PeerNotFound, match="no coordinator"):
        deploy.join(lonely, timeout=5)
    with pytest.raises(ConfigError, match="not a SuperLink address"):
        deploy.join(parties[SITES[0]], superlink="http://nowhere", timeout=5)


def test_serve_refuses_a_port_in_use(parties: Parties) -> None:
    _flower()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot serve"):
            deploy.serve(parties[COORD], host="127.0.0.1", port=port)


# -- a federation of real processes --------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Parties:
    """Four parties, each site holding a few vehicles' drives in its own region, ingested and
    de-identified for training, with a train and a test split."""
    root = tmp_path_factory.mktemp("deploy")
    parties = make_parties(root / "parties")
    for i, site_id in enumerate(SITES):
        project = parties[site_id]
        law = project.site(site_id).jurisdiction
        uploads = root / "uploads" / site_id
        uploads.mkdir(parents=True)
        lat, lon = PLACES[site_id]
        for seed in range(10 * i, 10 * i + 3):
            # 140 s at 12 m/s: what is left once de-identification trims each trip's ends.
            clip = make_clip(seed, steps=1400, lat0=lat, lon0=lon, recorded_in=law)
            write_mcap(clip, uploads / f"clip-{seed}.mcap")
        with SiteStore.open(project) as site:
            assert ingest(site, [uploads]).quarantined == []
            secret = LocalParty.of(project).keys().hmac_secret
            deidentify_site(site, resolve_profile("training", {}), secret=secret)

        def more(n: int, lat: float = lat, lon: float = lon, law: str = law) -> list[Clip]:
            return [make_clip(500 + n, steps=1400, lat0=lat, lon0=lon, recorded_in=law)]

        both_splits(project, site_id, more, root)
    from datetime import date

    from onshore.federation.site import model_parameters_assessment
    from onshore.gate.record import add_approval

    cn = parties["cn-shanghai"]
    add_approval(
        cn,
        "cn-shanghai",
        model_parameters_assessment(
            cn, approval_id="CAC-MP", reference="CAC-SA-MP", valid_from=date(2026, 1, 1)
        ),
    )
    return parties


def _options(run: str, **changes: Any) -> FederatedOptions:
    values: dict[str, Any] = {
        "run": run,
        "sites": SITES,
        "model": ModelSpec("past_mlp"),
        "rounds": 2,
        "local_steps": 5,
        "batch_size": 32,
        "dp": True,
        "join_timeout": 30.0,
        "timeout": 60.0,
    }
    values.update(changes)
    return FederatedOptions(**values)


@pytest.mark.slow
def test_three_sites_train_from_their_own_folders_over_tls(federation: Parties) -> None:
    _flower()
    coordinator = federation[COORD]
    said: list[str] = []
    with deploy.local_federation(coordinator, [federation[s] for s in SITES]) as (link, nodes):
        groups = [link.pid, *(n.pid for n in nodes)]
        # Each site's SuperNode was registered by its key: the coordinator knows which is which.
        assert {n.site: n.node_id for n in nodes} == {
            site: node for node, site in deploy.node_sites(coordinator).items()
        }
        host, port = link.address.rsplit(":", 1)
        # Only TLS is served, with the coordinator's own certificate.
        cert = LocalParty.of(coordinator).tls.cert
        with socket.create_connection((host, int(port))) as raw:
            tls = ssl.create_default_context(cafile=str(cert))
            with tls.wrap_socket(raw, server_hostname=host) as conn:
                assert conn.version() is not None
        with (
            socket.create_connection((host, int(port))) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname=host)
        summary = deploy.run_deployed(
            coordinator, _options("deployed"), say=said.append, timeout=300
        )
    assert all(_group_members(group) == [] for group in groups), "a process was left running"
    assert summary["run"] == "deployed" and summary["rounds"] == 2
    assert set(summary["regions"]) == set(SITES)
    for region in summary["regions"].values():
        assert region["ade"] is not None and region["samples"] > 0
    assert summary["refusals"] == []
    assert all(summary["bytes_crossed"][s] > 0 for s in SITES)
    assert summary["lineage"], "no update was used"
    assert sum(line.startswith("round ") for line in said) == 4
    rounds = json.loads((coordinator.root / "runs" / "deployed" / "rounds.json").read_text())
    logged = _coordinator_entries(coordinator, "federated_round")
    assert [(e["run"], e["round"], e["kind"]) for e in logged] == [
        ("deployed", r["round"], r["kind"]) for r in rounds
    ]
    # Each site's updates are in its own ledger, each with its gate's decision.
    for site in SITES:
        updates = _site_entries(federation[site], "federated_update")
        assert len([u for u in updates if u["run"] == "deployed"]) == 4
    coord = coordinator.settings.coordinator
    catalogue = Catalogue(coordinator.catalogue_url(coord), coord.id)
    try:
        assert verify(Ledger.open(catalogue)).ok
    finally:
        catalogue.close()
    # A finished run is read back, not trained again.
    again = deploy.run_deployed(coordinator, _options("deployed"), superlink="127.0.0.1:1")
    assert again == summary


def _flwr_run(app: Path, coordinator: Project, link: deploy.FlowerProcess, home: Path) -> str:
    """Submit ``app`` to the coordinator's SuperLink as anyone holding its public certificate
    could; returns what ``flwr run`` printed."""
    cert = LocalParty.of(coordinator).tls.cert
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "x"\n\n[superlink.x]\n'
        f'address = "{link.address}"\nroot-certificates = "{cert}"\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    done = subprocess.run(
        [str(deploy.find_flower("flwr")), "run", str(app), "x", "--stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done.stdout + done.stderr


def _stranger_app(folder: Path, clientapp: str, options: str = "", signature: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "stranger"\nversion = "1.0.0"\ndescription = "x"\n'
        'license = "Apache-2.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "stranger"\n\n'
        "[tool.flwr.app.components]\n"
        f'serverapp = "{clientapp.split(":")[0]}:server"\n'
        f'clientapp = "{clientapp}"\n\n'
        "[tool.flwr.app.config]\n"
        f"onshore-options = {json.dumps(options)}\n"
        f"onshore-signature = {json.dumps(signature)}\n"
    )
    return folder


@pytest.mark.slow
def test_a_stranger_s_app_and_an_unsigned_run_are_refused(
    federation: Parties, tmp_path: Path
) -> None:
    """Anyone holding the coordinator's public certificate can submit a run with flwr run; the
    coordinator's SuperLink runs only onshore's own ServerApp, and only for runs it signed:
    both are refused there and recorded, and no site sends anything."""
    _flower()
    coordinator = federation[COORD]
    before = {s: len(_site_entries(federation[s], "federated_update")) for s in SITES}
    with deploy.local_federation(coordinator, [federation[s] for s in SITES]) as (link, _nodes):
        evil = _stranger_app(tmp_path / "evil", "evil:app")
        (evil / "evil.py").write_text(
            "import os\nfrom flwr.serverapp import ServerApp\nfrom flwr.clientapp import "
            "ClientApp\nserver = ServerApp()\napp = ClientApp()\n"
        )
        _flwr_run(evil, coordinator, link, tmp_path / "home-evil")
        options = _options("strangers").to_json()
        unsigned = _stranger_app(
            tmp_path / "unsigned", "onshore.federation.apps:client_app", options
        )
        # The stranger names onshore's own apps, with options it made and no signature.
        text = (
            (unsigned / "pyproject.toml")
            .read_text()
            .replace(
                'serverapp = "onshore.federation.apps:server"',
                'serverapp = "onshore.federation.apps:server_app"',
            )
        )
        (unsigned / "pyproject.toml").write_text(text)
        _flwr_run(unsigned, coordinator, link, tmp_path / "home-unsigned")
    refused = _coordinator_entries(coordinator, REFUSED_KIND)
    reasons = " | ".join(str(r["reason"]) for r in refused)
    assert "files of its own" in reasons, reasons
    assert "not signed" in reasons, reasons
    assert not (coordinator.root / "runs" / "strangers" / "federated.json").exists()
    after = {s: len(_site_entries(federation[s], "federated_update")) for s in SITES}
    assert after == before  # nothing left any site


@pytest.mark.slow
def test_a_site_that_is_gone_is_dropped_after_the_stated_timeout_and_named(
    federation: Parties,
) -> None:
    _flower()
    coordinator = federation[COORD]
    with deploy.local_federation(coordinator, [federation[s] for s in SITES]) as (_link, nodes):
        gone = next(n for n in nodes if n.site == "us-oregon")
        os.killpg(gone.pid, signal.SIGKILL)
        summary = deploy.run_deployed(
            coordinator,
            _options("gone", rounds=1, join_timeout=10.0, timeout=20.0),
            timeout=300,
        )
    refusals = [r for r in summary["refusals"] if r.get("site") == "us-oregon"]
    assert refusals, summary["refusals"]
    assert {r["reason"] for r in refusals} <= {"no_reply", "not_connected"}
    if any(r["reason"] == "no_reply" for r in refusals):
        # The model went to it and nothing came back: those bytes crossed all the same.
        assert summary["bytes_crossed"]["us-oregon"] > 0
    assert {"cn-shanghai", "eu-frankfurt"} <= set(summary["regions"])


@pytest.mark.slow
def test_serve_and_join_commands_run_until_stopped(federation: Parties) -> None:
    """``onshore federation serve`` and ``onshore site join`` as operators run them, each in
    its own party's folder: each prints what it started, runs until interrupted, and leaves
    nothing behind."""
    _flower()
    cli = [sys.executable, "-m", "onshore"]
    coordinator, site = federation[COORD], federation["us-oregon"]
    serve = subprocess.Popen(
        [*cli, "federation", "serve", "--project", str(coordinator.root), "--json"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    join = None
    link: dict[str, Any] = {}
    node: dict[str, Any] = {}
    try:
        link = _first_json(serve)
        assert set(link["sites"]) == set(SITES) and link["join"] == "onshore site join"
        join = subprocess.Popen(
            [*cli, "site", "join", "--project", str(site.root), "--json"],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        node = _first_json(join)
        assert node["site"] == "us-oregon" and node["node_id"] == link["sites"]["us-oregon"]
        join.send_signal(signal.SIGINT)
        assert join.wait(timeout=90) == 0  # stop: SIGTERM, 10 s, SIGKILL; slow when loaded
        assert _group_members(node["pid"]) == []
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0
        assert _group_members(link["pid"]) == []
    finally:
        for process in (join, serve):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process is not None and process.stdout is not None:
                process.stdout.close()
        # Killed, the commands cannot stop what they started in groups of their own.
        for started in (node, link):
            pid = started.get("pid") if isinstance(started, dict) else None
            if isinstance(pid, int) and _group_members(pid):
                os.killpg(pid, signal.SIGKILL)


def _first_json(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The JSON document a command prints when it has started (it then runs on)."""
    assert process.stdout is not None
    text = ""
    while True:
        line = process.stdout.readline()
        assert line, f"the command ended before printing its JSON: {text}"
        text += line
        if line.startswith("}"):
            data = json.loads(text)
            assert isinstance(data, dict)
            return data


def test_a_site_s_clientapp_process_refuses_and_records_foreign_apps_and_unsigned_runs(
    parties: Parties, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``flwr-clientapp`` runs at a site (onshore's own program): a FAB carrying code or
    naming other apps, or a run whose options the coordinator did not sign, gets an error
    reply and a federated_run_refused entry in the site's ledger."""
    from types import SimpleNamespace

    import flwr.common.config
    from flwr.app import Message, MessageType, RecordDict

    from onshore.federation import runner

    site = parties["us-oregon"]
    ours = {
        "serverapp": "onshore.federation.apps:server_app",
        "clientapp": "onshore.federation.apps:client_app",
    }
    folders = {
        "evil": _app(tmp_path / "evil", ours, {"evil.py": "print('files')"}),
        "ours": _app(tmp_path / "ours", ours),
    }
    monkeypatch.setattr(flwr.common.config, "get_project_dir", lambda _i, _v, h: folders[h])
    load = runner._load_client_app_fn()
    context = SimpleNamespace(
        node_config={"site": "us-oregon", "project": str(site.root)},
        run_id=42,
        run_config={"onshore-options": FederatedOptions(run="r", sites=SITES).to_json()},
    )
    from flwr.supercore.task_identity import TaskIdentity

    # What Flower's task loop sets before it asks for the app.
    monkeypatch.setattr(TaskIdentity, "_run_id", 42)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 7)
    message = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    for fab in ("evil", "ours"):
        reply = load("onshore.onshore-federation", "1.0.0", fab)(message, context)
        assert reply.has_error() and "refused" in reply.error.reason
    reasons = [str(e["reason"]) for e in _site_entries(site, REFUSED_KIND)]
    assert len(reasons) == 2
    assert "files of its own" in reasons[0] and "not signed" in reasons[1]


@pytest.mark.parametrize("role", ["coordinator", "site"])
def test_a_task_whose_flower_process_is_gone_stops(role: str, tmp_path: Path) -> None:
    """onshore's ``flwr-serverapp`` and ``flwr-clientapp`` end with the Flower process that
    started them: a SuperExec stopped outright must not leave its ServerApp running."""
    import time

    from onshore.federation.runner import write_programs

    program = write_programs(tmp_path / "bin", role) / (
        "flwr-serverapp" if role == "coordinator" else "flwr-clientapp"
    )
    # Nothing listens at the address: the task keeps retrying it until it is stopped.
    address = f"127.0.0.1:{free_port()}"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"task = subprocess.Popen([{str(program)!r}, '--runtime-api-address', {address!r},"
            " '--token', 'x', '--insecure'])\n"
            "print(task.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    task = int(parent.stdout.readline())
    try:
        time.sleep(3)
        assert _alive(task), "the task ended on its own before its parent did"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(task) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(task), "the task outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        if _alive(task):
            os.kill(task, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, or a process that is gone, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
