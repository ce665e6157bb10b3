"""Running the federation across data centres with Flower's deployment engine: a SuperLink at
the coordinator (:func:`serve`), a SuperNode next to each site's data (:func:`join`), both over
TLS with certificates onshore makes (:func:`make_certificates`), and runs submitted to the
SuperLink (:func:`run_deployed`).

Each SuperLink and SuperNode is a separate process in a process group of its own, so that
:meth:`FlowerProcess.stop` ends it with every process Flower started under it (SuperExec, the
ServerApp, ClientApps). Flower never installs packages here: the apps are onshore's own
(:mod:`onshore.federation.apps`), already installed next to Flower.

What lives in the coordinator's project folder::

    federation/certs/     ca.crt (give it to every site), ca.key, server.pem, server.key
    federation/flower/    FLWR_HOME of the SuperLink and of each SuperNode started here
    federation/logs/      superlink.log, supernode-<site>.log
    runs/<run>/app/       the Flower app a run submits (its options in the run config)
    runs/<run>/flower/    FLWR_HOME of the run's ``flwr run``: the SuperLink's address and CA
    runs/<run>/flower.log what ``flwr run --stream`` printed
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from onshore.errors import ConfigError, FileSystemError, TrainingError
from onshore.federation.options import RUN_CONFIG_KEY, FederatedOptions
from onshore.federation.run import prepare_run
from onshore.model.local import RUNS_DIR, _read_json, _write_atomically
from onshore.settings import Project

__all__ = [
    "CERTS_DIR",
    "DEFAULT_PORT",
    "Certificates",
    "FlowerProcess",
    "find_flower",
    "foreground",
    "join",
    "load_certificates",
    "local_federation",
    "make_certificates",
    "run_deployed",
    "serve",
    "stop",
    "write_app",
]

CERTS_DIR: Final = "federation/certs"
"""Where :func:`serve` keeps the federation's certificates, under the coordinator's project."""
FLOWER_DIR: Final = "federation/flower"
LOGS_DIR: Final = "federation/logs"
DEFAULT_PORT: Final = 9092
"""The SuperLink's port: Fleet (SuperNodes), Control (``flwr run``) and ServerAppIo share it."""
DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1")
CONNECTION: Final = "onshore"
"""The name of the SuperLink connection in a run's Flower configuration."""
_WILDCARDS: Final = ("0.0.0.0", "::", "")
_NODE_ID: Final = re.compile(r"SuperNode ID: (\d+)")
"""What a SuperNode logs once the SuperLink has registered it."""
_COLOUR: Final = re.compile(r"\x1b\[[0-9;]*m")
_ERROR: Final = re.compile(r"^\s*(?:[\d/]+ [\d:]+:)?ERROR\s*:")
_NOT_ERROR: Final = re.compile(r"^\s*(?:[\d/]+ [\d:]+:)?(?:DEBUG|INFO|WARNING)\s*:|For more")
_LOG_PREFIX: Final = re.compile(r"^\s*(?:[\d/]+ [\d:]+:)?(?:DEBUG|INFO|WARNING|ERROR)\s*:\s*")


# --- Certificates ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificates:
    """The federation's certificate authority and the SuperLink's server certificate, as PEM
    files in one folder. Sites get ``ca.crt`` only; the keys never leave the coordinator."""

    folder: Path
    hosts: tuple[str, ...]
    """The names and addresses the server certificate is valid for (its SAN)."""
    expires: dt.datetime

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "ca_cert": str(self.ca_cert),
            "ca_key": str(self.ca_key),
            "server_cert": str(self.server_cert),
            "server_key": str(self.server_key),
            "hosts": list(self.hosts),
            "expires": self.expires.isoformat(timespec="seconds"),
        }


def make_certificates(
    folder: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    overwrite: bool = False,
    days: int = 365,
) -> Certificates:
    """Make a certificate authority (EC P-256) and a server certificate it signs, valid for
    ``hosts`` (DNS names or IP addresses) for ``days``; private keys are written 0600.

    Raises :class:`ConfigError` for a host that is not a name or an address, or when keys are
    already in ``folder`` (they may be in use: sites trust that CA) unless ``overwrite``.
    """
    names = _subject_alt_names(hosts)
    folder = folder.resolve()
    certs = Certificates(folder, tuple(hosts), dt.datetime.now(dt.UTC))
    existing = [p for p in (certs.ca_key, certs.server_key) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"certificates exist already in {folder}",
            hint="sites trust that CA; pass --force to replace it (then give every site the "
            "new ca.crt)",
        )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onshore federation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(certs.ca_key, ca_key)
    _write_private(certs.server_key, server_key)
    _write_atomically(certs.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    _write_atomically(certs.server_cert, server.public_bytes(serialization.Encoding.PEM))
    return Certificates(folder, tuple(hosts), end.replace(microsecond=0))


def load_certificates(folder: Path) -> Certificates:
    """The certificates :func:`make_certificates` left in ``folder``.

    Raises :class:`FileSystemError` when ca.crt, server.pem or server.key is missing,
    :class:`ConfigError` when the server certificate cannot be read.
    """
    folder = folder.resolve()
    certs = Certificates(folder, (), dt.datetime.now(dt.UTC))
    # The CA's key is not needed to serve, and is best kept elsewhere once certificates exist.
    missing = [
        p.name for p in (certs.ca_cert, certs.server_cert, certs.server_key) if not p.is_file()
    ]
    if missing:
        raise FileSystemError(
            f"{folder}: no {', '.join(missing)}",
            hint="make them with onshore federation certs",
        )
    server = _read_certificate(certs.server_cert)
    try:
        san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    hosts = [*san.get_values_for_type(x509.DNSName)]
    hosts += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return Certificates(folder, tuple(hosts), server.not_valid_after_utc)


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise ConfigError("a server certificate needs at least one host name or address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ConfigError(
                f"{host!r} is not a host name or an IP address",
                hint="give names as DNS names (superlink.example.com) without scheme or port",
            )
        names.append(x509.DNSName(host))
    return names


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 so the key is never readable by others, not even between write and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileSystemError(
            f"cannot read the certificate {path}: {exc.strerror or exc}",
            hint="copy ca.crt from the coordinator (onshore federation serve prints where it is)",
        ) from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a PEM certificate: {exc}",
            hint="give the coordinator's ca.crt, as onshore federation certs wrote it",
        ) from exc


# --- Processes ----------------------------------------------------------------------------------


@dataclass(slots=True)
class FlowerProcess:
    """A SuperLink or SuperNode onshore started: the leader of a process group of its own."""

    kind: Literal["superlink", "supernode"]
    address: str
    """The SuperLink's address (``host:port``): the one served, or the one joined."""
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ready_at: tuple[str, int]
    """Where the process accepts connections once it runs (the SuperLink's port, a
    SuperNode's own API)."""
    log_from: int = 0
    """Where this process's part of :attr:`log` begins."""
    site: str | None = None
    """The site a SuperNode serves."""
    certificates: Certificates | None = None
    """A SuperLink's certificates."""
    node_id: int | None = None
    """The id the SuperLink gave a SuperNode when it joined."""

    @property
    def role(self) -> str:
        return "superlink" if self.kind == "superlink" else f"supernode {self.site}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once the process accepts connections and, for a SuperNode, has joined its
        SuperLink. Otherwise stop it and raise :class:`ConfigError` with the last thing it
        logged."""
        deadline = time.monotonic() + timeout
        if not _wait_for_port(self.process, *self.ready_at, timeout):
            last = _logged_reason(self.log, self.log_from)
            self.stop()
            raise ConfigError(f"the {self.role} did not start: {last}", hint=f"see {self.log}")
        while self.kind == "supernode" and self.node_id is None:
            joined = _NODE_ID.search(_read_from(self.log, self.log_from))
            if joined:
                self.node_id = int(joined.group(1))
            elif self.process.poll() is not None or time.monotonic() > deadline:
                last = _logged_reason(self.log, self.log_from)
                self.stop()
                raise ConfigError(
                    f"the SuperNode of {self.site} did not join the SuperLink at "
                    f"{self.address} within {timeout:g} s: {last}",
                    hint="check that onshore federation serve runs there, that the address "
                    "is one its certificate names, and that --root-certificates is the "
                    f"coordinator's ca.crt; see {self.log}",
                )
            else:
                time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> int:
        """End the process and every process under it; returns the leader's exit status."""
        _signal_group(self.process, signal.SIGTERM)
        return _reap_group(self.process, timeout)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "pid": self.pid,
            "address": self.address,
            "log": str(self.log),
            **({"site": self.site, "node_id": self.node_id} if self.site else {}),
            **({"certificates": self.certificates.as_dict()} if self.certificates else {}),
        }

    def __enter__(self) -> FlowerProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def stop(*processes: FlowerProcess, timeout: float = 10.0) -> None:
    """Stop ``processes``: the SuperNodes together, then the SuperLinks (a SuperNode that
    outlived its SuperLink would keep trying to say goodbye to it)."""
    for kind in ("supernode", "superlink"):
        batch = [p for p in processes if p.kind == kind]
        for process in batch:
            _signal_group(process.process, signal.SIGTERM)
        for process in batch:
            _reap_group(process.process, timeout)


def foreground(process: FlowerProcess) -> int:
    """Wait while ``process`` runs; when this process is interrupted (Ctrl-C or SIGTERM), stop
    it and return its exit status.

    Raises :class:`TrainingError` when it ends on its own (with the end of its log).
    """

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a process started in the background inherits SIGINT ignored, and would
    # otherwise never hear Ctrl-C (or a supervisor's interrupt).
    previous = signal.signal(signal.SIGTERM, interrupted)
    previous_int = signal.signal(signal.SIGINT, interrupted)
    try:
        while not _exited(process.pid, 3600.0, poll=0.5):  # unreaped: its group can be stopped
            pass
    except KeyboardInterrupt:
        return process.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    status = process.stop()
    last = _logged_reason(process.log, process.log_from)
    raise TrainingError(
        f"the {process.role} ended by itself (exit status {status}): {last}",
        hint=f"see {process.log}",
    )


def find_flower(name: str) -> Path:
    """Flower's program ``name`` (``flower-superlink``, ``flower-supernode``, ``flwr``): the one
    installed beside this Python first, else the first on ``PATH``.

    Raises :class:`ConfigError` when neither exists.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} not found beside {sys.executable} or on PATH",
            hint="install Flower 1.42 in onshore's environment (pip install 'flwr==1.42.*')",
        )
    return Path(found)


def _environment(flwr_home: Path) -> dict[str, str]:
    """What Flower's processes need: this Python's programs first on PATH (the SuperLink and
    SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp by name), a home of
    their own, and no run-time installation of an app's dependencies (it would fetch another
    torch)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(
    command: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command`` in a session of its own, appending its output to ``log``; returns it
    and where its output begins in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {dt.datetime.now(dt.UTC).isoformat()} {' '.join(command)}\n".encode())
        out.flush()
        offset = out.tell()
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return process, offset


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> bool:
    """Send ``signum`` to the process group ``process`` leads (``start_new_session``: its pid is
    the group's id); whether the group still exists. Once the leader is reaped, its id may be
    reused, so a reaped leader's group is never signalled."""
    if process.returncode is not None:
        return False
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _reap_group(process: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for the leader to end (killing the group after ``timeout``), then for what it left
    in its group, and reap it."""
    if process.returncode is not None:
        return process.returncode
    if not _exited(process.pid, timeout):
        _signal_group(process, signal.SIGKILL)
        _exited(process.pid, timeout)
    # The leader is a zombie until reaped, so the group's id cannot have been reused: what is
    # still in it was started by it. Give it a moment to go, then make it go.
    deadline = time.monotonic() + 3.0
    while _group_lives(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(process, signal.SIGKILL)
    return process.wait()


def _group_lives(group: int) -> bool:
    """Whether a process of ``group`` still runs (zombies, the leader's among them, do not)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a group of zombies still counts
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _exited(pid: int, timeout: float, *, poll: float = 0.05) -> bool:
    """Whether ``pid`` (a child) exited within ``timeout``; it is left unreaped."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the SuperLink's server
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc}",
                hint="another program (an earlier SuperLink?) listens there; stop it or "
                "choose another --port",
            ) from exc


def _probe(host: str, port: int) -> tuple[str, int]:
    """Where to knock to see a server listening on ``host:port`` is up."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host), port


def _wait_for_port(process: subprocess.Popen[bytes], host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` accepts connections within ``timeout`` while ``process`` lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def _split_address(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:/\[\]]+):(\d{1,5})", address)
    port = int((match.group(2) or match.group(4)) if match else 0)
    if match is None or not 0 < port < 65536:
        raise ConfigError(
            f"{address!r} is not a SuperLink address",
            hint="give it as HOST:PORT, e.g. superlink.example.com:9092 or [::1]:9092",
        )
    return match.group(1) or match.group(3), port


# --- SuperLink and SuperNodes -------------------------------------------------------------------


def serve(
    project: Project,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    certs_dir: Path | None = None,
    *,
    hosts: Sequence[str] | None = None,
    timeout: float = 60.0,
) -> FlowerProcess:
    """Start a SuperLink for ``project``'s coordinator on ``host:port`` over TLS and return it
    once the port accepts connections. Its certificates are in ``certs_dir`` (default:
    ``<project>/federation/certs``), made there when absent, valid for ``hosts`` (default:
    localhost, 127.0.0.1 and ``host`` when it is a name or an address other than a wildcard).

    Raises :class:`ConfigError` when Flower is not installed, the certificate has expired, the
    port is taken, or the SuperLink ends or stays silent at its start (with what it logged).
    """
    binary = find_flower("flower-superlink")
    folder = (certs_dir or project.root / CERTS_DIR).resolve()
    if any((folder / name).exists() for name in ("ca.crt", "ca.key", "server.key")):
        certs = load_certificates(folder)
        if certs.expires <= dt.datetime.now(dt.UTC):
            raise ConfigError(
                f"the SuperLink's certificate in {folder} expired on {certs.expires:%Y-%m-%d}",
                hint="make new ones with onshore federation certs --force, and give every "
                "site the new ca.crt",
            )
    else:
        wanted = list(hosts or DEFAULT_HOSTS)
        if not hosts and host not in _WILDCARDS and host not in wanted:
            wanted.append(host)
        certs = make_certificates(folder, wanted)
    _check_port_free(host, port)
    home = project.root / FLOWER_DIR / "superlink"
    home.mkdir(parents=True, exist_ok=True)
    log = project.root / LOGS_DIR / "superlink.log"
    command = [
        str(binary),
        "--ssl-ca-certfile",
        str(certs.ca_cert),
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    process, offset = _start(command, env=_environment(home), log=log, cwd=project.root)
    link = FlowerProcess(
        "superlink",
        _join_address(host, port),
        log,
        process,
        _probe(host, port),
        offset,
        certificates=certs,
    )
    link.wait_ready(timeout)
    return link


def join(
    project: Project,
    site_id: str,
    superlink: str,
    root_certificate: Path,
    *,
    port: int | None = None,
    timeout: float | None = 60.0,
) -> FlowerProcess:
    """Start a SuperNode for ``site_id`` that connects to the SuperLink at ``superlink``
    (``host:port``) over TLS, trusting ``root_certificate`` (the coordinator's ``ca.crt``), and
    return it once the SuperLink has registered it (:attr:`FlowerProcess.node_id`). Its
    ClientApps find the site and its project folder in the node config. ``port``: the
    SuperNode's own API on loopback, for its ClientApps (default: a free one, so that SuperNodes
    of several sites can share a machine). ``timeout=None`` returns at once;
    :meth:`FlowerProcess.wait_ready` waits later.

    Raises :class:`SiteNotFound` for a site ``project`` does not declare,
    :class:`FileSystemError` or :class:`ConfigError` for a CA certificate that is missing or is
    not one, :class:`ConfigError` for an address that is not ``host:port``, when Flower is not
    installed, or when the SuperNode ends or has not joined within ``timeout`` (with what it
    logged: an unreachable SuperLink, a certificate it does not trust).
    """
    project.site(site_id)
    _split_address(superlink)
    root_certificate = root_certificate.resolve()
    _read_certificate(root_certificate)
    root = str(project.root.resolve())
    if "'" in root:  # the node config quotes it so
        raise ConfigError(f"the project folder {root} has a quote in its name; rename it")
    binary = find_flower("flower-supernode")
    home = project.root / FLOWER_DIR / site_id
    home.mkdir(parents=True, exist_ok=True)
    log = project.root / LOGS_DIR / f"supernode-{site_id}.log"
    api_port = port or _free_port("127.0.0.1")
    command = [
        str(binary),
        "--root-certificates",
        str(root_certificate),
        "--superlink",
        superlink,
        "--node-config",
        f"site='{site_id}' project='{root}'",
        "--host",
        "127.0.0.1",
        "--port",
        str(api_port),
    ]
    process, offset = _start(command, env=_environment(home), log=log, cwd=project.root)
    node = FlowerProcess(
        "supernode", superlink, log, process, ("127.0.0.1", api_port), offset, site=site_id
    )
    if timeout is not None:
        node.wait_ready(timeout)
    return node


def _join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _logged_reason(log: Path, offset: int = 0) -> str:
    """Why a Flower process failed or stalls, from what it logged after ``offset``: the first
    error it logged (the exception a traceback ends with, the text of an error box, an ERROR
    line and its explanation), else its last line; without colours, times and levels."""
    size = log.stat().st_size if log.exists() else 0
    text = _read_from(log, max(offset, size - 65536))
    lines = [_COLOUR.sub("", line) for line in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            return _raised(lines[i:])
        if line.lstrip().startswith("╭─ Error"):
            box = itertools.takewhile(lambda x: not x.lstrip().startswith("╰"), lines[i + 1 :])
            return " ".join(x.strip().strip("│").strip() for x in box)
        if _ERROR.match(line):
            after = lines[i + 1 : i + 8]
            if any(x.startswith("Traceback") for x in after):
                continue
            said = [x for x in [line, *after] if x.strip() and not _NOT_ERROR.match(x)]
            return " ".join(_LOG_PREFIX.sub("", x).strip() for x in said)
    for line in reversed(lines):
        line = _LOG_PREFIX.sub("", line).strip()
        if line:
            return line
    return "it wrote nothing"


def _raised(traceback: list[str]) -> str:
    """The exception a traceback ends with; the last of a chain of them."""
    raised = ""
    for line in traceback[1:]:
        if not line.strip() or line[0].isspace() or line.startswith("Traceback"):
            continue
        if line.startswith(("The above exception", "During handling")):
            raised = ""
        elif raised:
            break
        else:
            raised = line.strip()
    return raised


# --- Runs -------------------------------------------------------------------------------------


def run_deployed(
    project: Project,
    options: FederatedOptions,
    superlink: str,
    root_certificate: Path,
    *,
    say: Callable[[str], None] = lambda _m: None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Train ``options.model`` across ``options.sites`` on the SuperLink at ``superlink``
    (``host:port``, over TLS, trusting ``root_certificate``) and return the run's summary, as
    :func:`~onshore.federation.run.run_federated` does in simulation.

    ``project`` is the coordinator's: the SuperLink runs on this machine with it (``onshore
    federation serve``), since the ServerApp writes the summary to
    ``<project>/runs/<run>/federated.json``, which is read back here. Each site's SuperNode
    must have joined (``onshore site join``); the first round waits for all of them. A run
    that finished earlier is read back. ``say`` hears of each round as the coordinator's
    ledger records it. ``timeout``: seconds before the run is stopped (default: none).

    Raises :class:`SiteNotFound` for a site the project does not declare, :class:`ConfigError`
    for options that differ from an earlier run of that id, a bad address or CA certificate,
    and :class:`TrainingError` when the run fails or ends without a summary (with the end of
    Flower's log and where the rest is).
    """
    for site in options.sites:
        project.site(site)
    _split_address(superlink)
    root_certificate = root_certificate.resolve()
    _read_certificate(root_certificate)
    flwr = find_flower("flwr")
    options, done = prepare_run(project, options, say)
    if done is not None:
        return done
    folder = project.root / RUNS_DIR / options.run
    app = write_app(folder / "app", options)
    home = folder / "flower"
    _write_atomically(
        home / "config.toml",
        (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f"address = {_toml_string(superlink)}\n"
            f"root-certificates = {_toml_string(str(root_certificate))}\n"
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
    env = _environment(home)
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
        _signal_group(process, signal.SIGTERM)
        _reap_group(process, 10.0)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TrainingError(
            f"federated run {options.run} did not finish within {timeout:g} s; it was stopped "
            f"({_logged_reason(log, begun)})",
            hint="check that every site's SuperNode has joined (the first round waits for all "
            f"of them) and see {log}",
        ) from None
    finally:
        reader.join(timeout=5.0)
        process.stdout.close()
    _say_rounds(folder, options, shown, say, stale)
    summary = _read_json(folder / "federated.json")
    if summary is None:
        raise TrainingError(
            f"federated run {options.run} ended without a result: {_logged_reason(log, begun)}",
            hint=f"Flower's log is {log}, the SuperLink's {LOGS_DIR}/superlink.log in the "
            f"coordinator's project; is onshore federation serve running at {superlink}? The "
            "rounds done so far are in the coordinator's ledger and the run's rounds.json",
        )
    return dict(summary)


def write_app(folder: Path, options: FederatedOptions) -> Path:
    """Write the Flower app a run submits: onshore's apps, and the run's options in its run
    config. Returns ``folder``."""
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
    )
    _write_atomically(folder / "pyproject.toml", text.encode())
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
        rounds = _read_json(path) or []
    except (OSError, orjson.JSONDecodeError):
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
    project: Project,
    sites: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[tuple[FlowerProcess, list[FlowerProcess]]]:
    """A SuperLink and a SuperNode for each of ``sites``, all on this machine, stopped on exit
    (SuperNodes first): what a drill or a test of the deployment needs."""
    link = serve(project, host, port or _free_port(host))
    nodes: list[FlowerProcess] = []
    try:
        assert link.certificates is not None
        for site in sites:
            nodes.append(join(project, site, link.address, link.certificates.ca_cert, timeout=None))
        for node in nodes:
            node.wait_ready()
        yield link, nodes
    finally:
        stop(*nodes, link)
