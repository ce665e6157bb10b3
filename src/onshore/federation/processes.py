"""Flower's processes as onshore runs them: each SuperLink and SuperNode the leader of a process
group of its own (:class:`FlowerProcess`), so that stopping it ends every process Flower started
under it (SuperExec, the ServerApp, ClientApps); started with onshore's task programs first on
their ``PATH`` and a Flower home of their own; watched until they listen (and a SuperNode has
joined); and, when one fails, the reason read back from its log.

The deployment commands that start them are in :mod:`onshore.federation.deploy`; the
certificates they present and trust, in :mod:`onshore.parties.tls`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from onshore.errors import ConfigError, TrainingError
from onshore.settings import Project

__all__ = [
    "FlowerProcess",
    "check_port_free",
    "find_flower",
    "foreground",
    "free_port",
    "join_address",
    "logged_reason",
    "probe_address",
    "process_environment",
    "reap_group",
    "signal_group",
    "split_address",
    "start_process",
    "stop",
]

_NODE_ID: Final = re.compile(r"SuperNode ID: (\d+)")
"""What a SuperNode logs once the SuperLink has registered it."""
_COLOUR: Final = re.compile(r"\x1b\[[0-9;]*m")
_ERROR: Final = re.compile(r"^\s*(?:[\d/]+ [\d:]+:)?ERROR\s*:")
_NOT_ERROR: Final = re.compile(r"^\s*(?:[\d/]+ [\d:]+:)?(?:DEBUG|INFO|WARNING)\s*:|For more")
_LOG_PREFIX: Final = re.compile(r"^\s*(?:[\d/]+ [\d:]+:)?(?:DEBUG|INFO|WARNING|ERROR)\s*:\s*")


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
            last = logged_reason(self.log, self.log_from)
            self.stop()
            raise ConfigError(f"the {self.role} did not start: {last}", hint=f"see {self.log}")
        while self.kind == "supernode" and self.node_id is None:
            joined = _NODE_ID.search(_read_from(self.log, self.log_from))
            if joined:
                self.node_id = int(joined.group(1))
            elif self.process.poll() is not None or time.monotonic() > deadline:
                last = logged_reason(self.log, self.log_from)
                self.stop()
                raise ConfigError(
                    f"the SuperNode of {self.site} did not join the SuperLink at "
                    f"{self.address} within {timeout:g} s: {last}",
                    hint="check that 'onshore federation serve' runs at the coordinator, that "
                    "the address is one its certificate names, and that the coordinator "
                    f"registered this site (its identity on file there); see {self.log}",
                )
            else:
                time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> int:
        """End the process and every process under it; returns the leader's exit status."""
        signal_group(self.process, signal.SIGTERM)
        return reap_group(self.process, timeout)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "pid": self.pid,
            "address": self.address,
            "log": str(self.log),
            **({"site": self.site, "node_id": self.node_id} if self.site else {}),
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
            signal_group(process.process, signal.SIGTERM)
        for process in batch:
            reap_group(process.process, timeout)


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
    last = logged_reason(process.log, process.log_from)
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


def process_environment(
    flwr_home: Path, *, programs: Path | None = None, project: Project | None = None
) -> dict[str, str]:
    """What Flower's processes need: onshore's task programs (``programs``, see
    :mod:`onshore.federation.runner`) then this Python's first on PATH (the SuperLink and
    SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp by name), a home of
    their own, the party's folder, and no run-time installation of an app's dependencies (it
    would fetch another torch)."""
    env = dict(os.environ)
    first = [str(programs)] if programs is not None else []
    env["PATH"] = os.pathsep.join([*first, str(Path(sys.executable).parent), env.get("PATH", "")])
    if project is not None:
        env["ONSHORE_PROJECT"] = str(project.root)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_process(
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


def signal_group(process: subprocess.Popen[bytes], signum: int) -> bool:
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


def reap_group(process: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for the leader to end (killing the group after ``timeout``), then for what it left
    in its group, and reap it."""
    if process.returncode is not None:
        return process.returncode
    if not _exited(process.pid, timeout):
        signal_group(process, signal.SIGKILL)
        _exited(process.pid, timeout)
    # The leader is a zombie until reaped, so the group's id cannot have been reused: what is
    # still in it was started by it. Give it a moment to go, then make it go.
    deadline = time.monotonic() + 3.0
    while _group_lives(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_group(process, signal.SIGKILL)
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


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
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


def probe_address(host: str, port: int) -> tuple[str, int]:
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


def split_address(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:/\[\]]+):(\d{1,5})", address)
    port = int((match.group(2) or match.group(4)) if match else 0)
    if match is None or not 0 < port < 65536:
        raise ConfigError(
            f"{address!r} is not a SuperLink address",
            hint="give it as HOST:PORT, e.g. superlink.example.com:9092 or [::1]:9092",
        )
    return match.group(1) or match.group(3), port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def logged_reason(log: Path, offset: int = 0) -> str:
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
