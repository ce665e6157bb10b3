"""The federation across data centres: certificates onshore makes (a valid chain, the right
names, private keys kept private, never overwritten unasked), clear refusals of bad input before
anything starts, the CLI's serve and join stopping what they started, and a SuperLink and three
SuperNodes as separate processes on loopback training two rounds over TLS."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from conftest import make_clip
from onshore.cli.app import app
from onshore.clips.mcap import write_mcap
from onshore.clips.schema import Clip
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import ConfigError, FileSystemError, SiteNotFound, TrainingError
from onshore.federation import deploy
from onshore.federation.options import FederatedOptions
from onshore.ledger import Ledger, verify
from onshore.model.nets import ModelSpec
from onshore.settings import Project
from onshore.sites import init_project
from onshore.sites.keystore import load_keystore
from onshore.store import SiteStore
from onshore.store.catalogue import Catalogue
from onshore.store.ingest import ingest
from test_federation import both_splits

SITES = ("cn-shanghai", "eu-frankfurt", "us-oregon")
PLACES = {
    "cn-shanghai": (31.23, 121.47),
    "eu-frankfurt": (50.11, 8.68),
    "us-oregon": (45.52, -122.68),
}

runner = CliRunner()


def _flower() -> None:
    try:
        deploy.find_flower("flower-superlink")
    except ConfigError:
        pytest.skip("Flower's flower-superlink is not installed beside Python or on PATH")


def _handshake(certs: deploy.Certificates, server_hostname: str) -> None:
    """A TLS handshake in memory, as a SuperNode makes it: trusting only ca.crt, checking the
    server's name."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    client_ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    wires = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(wires[0], wires[1], server_hostname=server_hostname)
    server = server_ctx.wrap_bio(wires[2], wires[3], server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end, out, into in (
            ("client", client, wires[1], wires[2]),
            ("server", server, wires[3], wires[0]),
        ):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            into.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not complete")


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


# --- Certificates ------------------------------------------------------------------------------


def test_certificates_chain_names_and_private_keys(tmp_path: Path) -> None:
    hosts = ["localhost", "127.0.0.1", "superlink.example.com"]
    certs = deploy.make_certificates(tmp_path / "certs", hosts)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in (certs.ca_key, certs.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    # What a SuperNode does: trust ca.crt alone, and check the name it dialled.
    for name in hosts:
        _handshake(certs, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, "elsewhere.example.com")
    other = deploy.make_certificates(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):  # another federation's CA
        _handshake(_mixed(certs, other, tmp_path / "mixed"), "localhost")
    loaded = deploy.load_certificates(certs.folder)
    assert loaded.hosts == ("localhost", "superlink.example.com", "127.0.0.1")
    assert loaded.expires == certs.expires


def _mixed(
    server: deploy.Certificates, ca: deploy.Certificates, folder: Path
) -> deploy.Certificates:
    """``server``'s certificate and key beside another federation's ca.crt."""
    folder.mkdir()
    mixed = deploy.Certificates(folder, server.hosts, server.expires)
    mixed.server_cert.write_bytes(server.server_cert.read_bytes())
    mixed.server_key.write_bytes(server.server_key.read_bytes())
    mixed.ca_cert.write_bytes(ca.ca_cert.read_bytes())
    return mixed


def test_certificates_are_never_replaced_unasked(tmp_path: Path) -> None:
    certs = deploy.make_certificates(tmp_path)
    before = certs.ca_key.read_bytes(), certs.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match="exist already") as caught:
        deploy.make_certificates(tmp_path)
    assert caught.value.hint is not None and "--force" in caught.value.hint
    assert (certs.ca_key.read_bytes(), certs.ca_cert.read_bytes()) == before
    again = deploy.make_certificates(tmp_path, overwrite=True)
    assert again.ca_key.read_bytes() != before[0]
    assert again.ca_key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("hosts", [[], ["http://superlink"], ["superlink:9092"], ["a b"], [""]])
def test_bad_hosts_are_refused(tmp_path: Path, hosts: list[str]) -> None:
    with pytest.raises(ConfigError):
        deploy.make_certificates(tmp_path, hosts)
    assert not (tmp_path / "ca.key").exists()


def test_missing_certificates_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileSystemError, match=r"ca\.crt.*server\.key") as caught:
        deploy.load_certificates(tmp_path)
    assert caught.value.hint is not None and "onshore federation certs" in caught.value.hint


def test_certs_command(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    args = ["federation", "certs", "--certs", str(folder), "--hosts", "localhost,10.0.0.5"]
    result = runner.invoke(app, [*args, "--hosts", "superlink.example.com", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["hosts"] == ["localhost", "10.0.0.5", "superlink.example.com"]
    assert Path(made["ca_cert"]).is_file() and Path(made["server_key"]).is_file()
    result = runner.invoke(app, [*args, "--json"])
    assert isinstance(result.exception, ConfigError)


# --- Bad input is refused before anything starts -----------------------------------------------


def test_join_refuses_an_unknown_site_a_missing_ca_and_a_bad_address(
    project: Project, tmp_path: Path
) -> None:
    certs = deploy.make_certificates(tmp_path / "certs")
    with pytest.raises(SiteNotFound, match="xx-nowhere") as unknown:
        deploy.join(project, "xx-nowhere", "127.0.0.1:9092", certs.ca_cert)
    assert unknown.value.hint is not None and "cn-shanghai" in unknown.value.hint
    with pytest.raises(FileSystemError, match=r"ca\.crt") as missing:
        deploy.join(project, "eu-frankfurt", "127.0.0.1:9092", tmp_path / "ca.crt")
    assert missing.value.hint is not None and "onshore federation serve" in missing.value.hint
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        deploy.join(project, "eu-frankfurt", "127.0.0.1:9092", certs.server_key)
    for address in ("127.0.0.1", "https://127.0.0.1:9092", "127.0.0.1:0", "host:99999"):
        with pytest.raises(ConfigError, match="not a SuperLink address"):
            deploy.join(project, "eu-frankfurt", address, certs.ca_cert)
    assert not (project.root / deploy.LOGS_DIR).exists(), "nothing was started"
    options = FederatedOptions(run="r", sites=("eu-frankfurt", "xx-nowhere"))
    with pytest.raises(SiteNotFound):
        deploy.run_deployed(project, options, "127.0.0.1:9092", certs.ca_cert)
    with pytest.raises(FileSystemError):
        deploy.run_deployed(
            project,
            FederatedOptions(run="r2", sites=("eu-frankfurt",)),
            "127.0.0.1:9092",
            tmp_path / "nowhere.crt",
        )


def test_site_join_command_reports_an_unknown_site(project: Project, tmp_path: Path) -> None:
    certs = deploy.make_certificates(tmp_path / "certs")
    args = ["site", "join", "xx-nowhere", "--superlink", "127.0.0.1:9092"]
    result = runner.invoke(
        app,
        [*args, "--root-certificates", str(certs.ca_cert), "--project", str(project.root)],
    )
    assert isinstance(result.exception, SiteNotFound)


def test_serve_refuses_a_port_in_use(project: Project) -> None:
    _flower()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}") as caught:
            deploy.serve(project, "127.0.0.1", port)
    assert caught.value.hint is not None and "--port" in caught.value.hint


@pytest.mark.slow
def test_a_run_that_cannot_reach_its_superlink_says_so(project: Project, tmp_path: Path) -> None:
    _flower()
    certs = deploy.make_certificates(tmp_path / "certs")
    options = FederatedOptions(run="nowhere", sites=("eu-frankfurt",), model=ModelSpec("past_mlp"))
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(TrainingError, match="ended without a result") as caught:
        deploy.run_deployed(project, options, address, certs.ca_cert, timeout=120)
    assert "Connection to the SuperLink is unavailable" in caught.value.message
    assert caught.value.hint is not None and f"serve running at {address}" in caught.value.hint


# --- Separate processes on loopback ------------------------------------------------------------


@pytest.mark.slow
def test_serve_and_join_commands_run_until_stopped(project: Project, tmp_path: Path) -> None:
    """``onshore federation serve`` and ``onshore site join`` as a coordinator and a site run
    them: each prints where things are, runs until interrupted, and leaves nothing behind; a
    SuperNode that does not trust the federation's CA cannot join."""
    _flower()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = [sys.executable, "-m", "onshore"]
    where = ["--project", str(project.root), "--json"]
    serve = subprocess.Popen(
        [*cli, "federation", "serve", "--port", str(port), *where],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    join = None
    link: dict[str, object] = {}
    node: dict[str, object] = {}
    try:
        link = _first_json(serve)
        assert link["address"] == f"127.0.0.1:{port}"
        assert link["join"]["us-oregon"] == (
            f"onshore site join us-oregon --superlink 127.0.0.1:{port} --root-certificates ca.crt"
        )
        command = [*cli, "site", "join", "us-oregon", "--superlink", link["address"]]
        join = subprocess.Popen(
            [*command, "--root-certificates", link["ca_cert"], *where],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        node = _first_json(join)
        assert node["site"] == "us-oregon" and node["role"] == "supernode us-oregon"
        assert f"Activated node_id={node['node_id']}" in Path(str(link["log"])).read_text()
        # A SuperNode that trusts another CA is refused, and says why.
        other = deploy.make_certificates(tmp_path / "other")
        with pytest.raises(ConfigError, match="CERTIFICATE_VERIFY_FAILED") as refused:
            deploy.join(project, "eu-frankfurt", str(link["address"]), other.ca_cert, timeout=30)
        assert refused.value.hint is not None and "ca.crt" in refused.value.hint
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


def _first_json(process: subprocess.Popen[str]) -> dict[str, object]:
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


@pytest.fixture(scope="module")
def sites_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project whose three sites each hold three vehicles' drives in their own region,
    ingested and de-identified for training."""
    root = tmp_path_factory.mktemp("deploy")
    project = init_project(root / "proj", "three-regions")
    for i, site_id in enumerate(SITES):
        law = project.site(site_id).jurisdiction
        uploads = root / "uploads" / site_id
        uploads.mkdir(parents=True)
        lat, lon = PLACES[site_id]
        for seed in range(10 * i, 10 * i + 3):
            # 140 s at 12 m/s: what is left once de-identification trims each trip's ends.
            clip = make_clip(seed, steps=1400, lat0=lat, lon0=lon, recorded_in=law)
            write_mcap(clip, uploads / f"clip-{seed}.mcap")
        with SiteStore.open(project, site_id) as site:
            assert ingest(site, [uploads]).quarantined == []
            secret = load_keystore(project.keystore_path(project.site(site_id))).hmac_secret
            deidentify_site(site, resolve_profile("training", {}), secret=secret)

        def more(n: int, lat: float = lat, lon: float = lon, law: str = law) -> list[Clip]:
            return [make_clip(500 + n, steps=1400, lat0=lat, lon0=lon, recorded_in=law)]

        both_splits(project, site_id, more, root)
    return project


@pytest.mark.slow
def test_three_sites_train_two_rounds_over_tls(sites_project: Project) -> None:
    _flower()
    project = sites_project
    options = FederatedOptions(
        run="deployed",
        sites=SITES,
        model=ModelSpec("past_mlp"),
        rounds=2,
        local_steps=5,
        batch_size=32,
        dp=True,
    )
    said: list[str] = []
    with deploy.local_federation(project, SITES) as (link, nodes):
        assert link.certificates is not None
        ca = link.certificates.ca_cert
        groups = [link.pid, *(n.pid for n in nodes)]
        host, port = link.address.rsplit(":", 1)
        # Only TLS is served, and only to those who trust the federation's CA.
        with socket.create_connection((host, int(port))) as raw:
            tls = ssl.create_default_context(cafile=str(ca))
            with tls.wrap_socket(raw, server_hostname=host) as conn:
                assert conn.version() is not None
        with (
            socket.create_connection((host, int(port))) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname=host)
        summary = deploy.run_deployed(
            project, options, link.address, ca, say=said.append, timeout=300
        )
    assert all(_group_members(group) == [] for group in groups), "a process was left running"

    assert summary["run"] == "deployed" and summary["rounds"] == 2
    assert set(summary["regions"]) == set(SITES)
    for region in summary["regions"].values():
        assert region["ade"] is not None and region["samples"] > 0
    rounds = json.loads((project.root / "runs" / "deployed" / "rounds.json").read_text())
    assert [(r["round"], r["kind"]) for r in rounds] == [
        (1, "train"),
        (1, "evaluate"),
        (2, "train"),
        (2, "evaluate"),
    ]
    for record in rounds:  # every site answered every phase, over TLS, through its gate
        answered = {a["site"] for a in record["accepted"]} | {r["site"] for r in record["refused"]}
        assert answered == set(SITES), record
    assert summary["lineage"], "no update was used"
    assert sum(line.startswith("round ") for line in said) == 4

    coordinator = project.settings.coordinator
    catalogue = Catalogue(project.catalogue_url(coordinator), coordinator.id)
    try:
        ledger = Ledger.open(catalogue)
        logged = [e.data for e in ledger.entries(kind="federated_round")]
        assert [(e["run"], e["round"], e["kind"]) for e in logged] == [
            ("deployed", r["round"], r["kind"]) for r in rounds
        ]
        seqs = summary["coordinator_ledger"]
        assert ledger.entry(seqs["started"]).kind == "federated_run_started"  # type: ignore[union-attr]
        assert ledger.entry(seqs["finished"]).kind == "federated_run_finished"  # type: ignore[union-attr]
        assert verify(ledger).ok
    finally:
        catalogue.close()

    # A finished run is read back, not trained again.
    again = deploy.run_deployed(project, options, "127.0.0.1:1", ca)
    assert again == summary
