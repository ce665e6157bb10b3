"""The demo: the whole story, each party its own process with its own folder, on loopback.

``onshore demo`` makes four party folders (``cn-shanghai``, ``eu-frankfurt``, ``us-oregon`` and
``coordinator``), starts each party's service (``onshore serve``) as a process of its own, and
then plays the story as the parties' operators would, one command in one party's folder at a
time, every crossing going through the services, as a deployment across data centres does:

1. each site simulates its region's fleet with SUMO, ingests, classifies and de-identifies it,
   in its own folder;
2. the gate: raw Chinese clips to the US site are refused, an assessment is put on file at the
   Chinese site, and what it then lets through (and what it still does not) is transferred
   between the sites' services;
3. a read from abroad: the coordinator asks the Chinese site for a page of its clips, the site's
   gate withholds it, an assessment for remote queries is put on file, and the page is shown;
4. training: each site's model alone, then China's gate asked about model updates (an
   assessment put on file), then federated training on Flower's deployment engine (the
   coordinator's SuperLink, a SuperNode per site), DP-SGD at every site;
5. the release: signed, verified against the sites' ledgers through their services, licensed
   to a partner for the EU and China once the sites' gates consent, checked for loads;
6. each site's report for its regulator, the parties' ledgers witnessed and verified, and a
   console user per role.

The driver holds no party's keys and opens no party's store: it runs ``onshore`` commands with
``--project`` and ``--json`` and reads what they print. Every process it started is stopped at
the end, or when it is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson

from onshore.errors import ConfigError, DemoError
from onshore.processes import STOP_WITH_ENV
from onshore.settings import CONFIG_NAME

__all__ = ["DEMO_USERS", "run_demo"]

_CN, _US, _EU, _COORD = "cn-shanghai", "us-oregon", "eu-frankfurt", "coordinator"
_SITES: Final = (_CN, _EU, _US)
_PURPOSE: Final = "adas_training"
_VERSION: Final = "1.0.0"
_PARTNER: Final = "Partner Motors GmbH"
_PARTNER_COUNTRY: Final = "DE"
_TERRITORIES: Final = ("EU", "CN")
_MODEL_YEARS: Final = "2026-2028"
_COMMAND_TIMEOUT: Final = 1200.0
DEMO_USERS: Final = "demo-users.txt"
"""Under each party's ``console/``: its console users and their passwords (mode 0600)."""


Say = Callable[[str], None]


@dataclass(slots=True)
class _Processes:
    """The background processes the demo started: stopped in reverse order, by PID."""

    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def add(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.started.append((name, process))

    def stop(self, name: str | None = None, timeout: float = 30.0) -> None:
        chosen = [(n, p) for n, p in self.started if name is None or n == name]
        for _, process in reversed(chosen):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
        for n, process in reversed(chosen):
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(10)
            self.started.remove((n, process))


def _command(args: Sequence[str], project: Path | None) -> list[str]:
    out = [sys.executable, "-m", "onshore", *args]
    if project is not None:
        out += ["--project", str(project)]
    return [*out, "--json"]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ONSHORE_PROJECT", None)  # every command names its party's folder
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("COLUMNS", "120")
    # Every command ends with the demo, even one killed outright (SIGKILL, out of memory):
    # no party is left serving in the background.
    env[STOP_WITH_ENV] = str(os.getpid())
    return env


def _json(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        start = text.rfind("\n{")
        return orjson.loads(text[start:]) if start >= 0 else None


def _relay(stream: IO[bytes], say: Say | None, sink: list[str]) -> None:
    """A command's progress to ``say``; its error line (which its JSON holds too) only to
    ``sink``, so that a refusal the demo expects is told by the demo, once."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        sink.append(line)
        if say is not None and line.strip() and not line.startswith(("error [", "  hint: ")):
            say(f"  {line.strip().removeprefix('> ').strip()}")


def _run(
    args: Sequence[str],
    project: Path | None,
    *,
    ok: Sequence[int] = (0,),
    say: Say | None = None,
    stdin: str | None = None,
    timeout: float = _COMMAND_TIMEOUT,
) -> tuple[int, Any]:
    """Run ``onshore ARGS --project PROJECT --json``; its progress (stderr) goes to ``say``.
    Returns its exit status and the JSON it printed. Raises :class:`DemoError` for a status
    not in ``ok``."""
    command = _command(args, project)
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(),
    )
    err: list[str] = []
    assert process.stderr is not None and process.stdout is not None
    relay = threading.Thread(target=_relay, args=(process.stderr, say, err), daemon=True)
    relay.start()
    # stderr belongs to the relay; stdout is read here (communicate would read both).
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin.encode())
        process.stdin.close()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        out = process.stdout.read()
        process.wait()
    finally:
        timer.cancel()
        relay.join(timeout=5)
    if expired.is_set():
        raise DemoError(f"onshore {' '.join(args)} took longer than {timeout:g} s")
    data = _json(out.decode("utf-8", "replace"))
    if process.returncode not in ok:
        where = f" in {project.name}" if project is not None else ""
        said = (data or {}).get("message") if isinstance(data, dict) else None
        raise DemoError(
            f"onshore {' '.join(args)}{where} failed (exit {process.returncode}): "
            f"{said or ' '.join(err[-3:]) or 'no output'}",
            hint=(data or {}).get("hint") if isinstance(data, dict) else None,
        )
    return process.returncode, data


def _start(
    processes: _Processes,
    name: str,
    args: Sequence[str],
    project: Path,
    *,
    log: Path,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Start ``onshore ARGS`` in the background (its stderr to ``log``) and return the JSON it
    prints once ready."""
    return _ready(processes, _launch(processes, name, args, project, log=log), timeout=timeout)


@dataclass
class _Launched:
    """A background command started by :func:`_launch`, not yet known to be ready."""

    name: str
    args: Sequence[str]
    project: Path
    log: Path
    process: subprocess.Popen[bytes]
    found: list[Any]


def _launch(
    processes: _Processes, name: str, args: Sequence[str], project: Path, *, log: Path
) -> _Launched:
    """Start ``onshore ARGS`` in the background, its stderr to ``log``. Call it from the
    thread that outlives the process (the main one): a command started by the demo stops when
    the thread that started it ends (see :mod:`onshore.processes`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as err:
        process = subprocess.Popen(
            _command(args, project),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_environment(),
        )
    processes.add(name, process)
    lines: list[str] = []
    found: list[Any] = []

    def read() -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            lines.append(raw.decode("utf-8", "replace"))
            data = _json("".join(lines)) if lines[0].lstrip().startswith("{") else None
            if isinstance(data, dict):
                found.append(data)
                break
        # Keep draining, so a chatty process never blocks on a full pipe.
        for _ in iter(process.stdout.readline, b""):
            pass

    threading.Thread(target=read, daemon=True).start()
    return _Launched(name, args, project, log, process, found)


def _ready(processes: _Processes, launched: _Launched, *, timeout: float = 120.0) -> dict[str, Any]:
    """The JSON ``launched`` prints once ready; raises DemoError (and stops it) if it ends or
    says nothing for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    process, log = launched.process, launched.log
    while not launched.found:
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            processes.stop(launched.name)
            raise DemoError(
                f"onshore {' '.join(launched.args)} in {launched.project.name} did not start: "
                + (" ".join(tail) or "it said nothing"),
                hint=f"see {log}",
            )
        time.sleep(0.1)
    return dict(launched.found[0])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parties(folder: Path, say: Say) -> dict[str, Path]:
    """The party folders under ``folder``: made on the first run, reused after."""
    if (folder / CONFIG_NAME).exists():
        raise ConfigError(
            f"{folder} holds a lab project (one onshore.toml for every site), not party folders",
            hint="give the demo a new --dir; it makes a folder per party",
        )
    wanted = {p: folder / p for p in (*_SITES, _COORD)}
    if all((path / CONFIG_NAME).exists() for path in wanted.values()):
        say(f"reusing the parties in {folder}")
        return wanted
    say(f"creating four parties in {folder}: a folder, keys and a service each")
    args = ["init", str(folder), "--example", "three-regions", "--parties"]
    for party in wanted:
        args += ["--address", f"{party}=127.0.0.1:{_free_port()}"]
    args += ["--federation", f"127.0.0.1:{_free_port()}"]
    _run(args, None)
    return wanted


def run_demo(
    folder: Path,
    *,
    vehicles: int = 150,
    minutes: float = 6.0,
    trip_km: float | None = None,
    seed: int = 7,
    rounds: int = 5,
    local_steps: int = 100,
    fine_tune_steps: int = 300,
    model: str = "object_encoder",
    say: Say = lambda _m: None,
) -> dict[str, Any]:
    """Run the demo in ``folder`` (reusing the parties already there) and return what it did."""
    started = time.perf_counter()
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    parties = _parties(folder, say)
    processes = _Processes()
    previous = signal.getsignal(signal.SIGTERM)

    def terminated(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)
    try:
        # The services start side by side: waiting for each before starting the next would
        # only add up their start-ups.
        launched = {}
        for party, path in parties.items():
            say(f"{party}: starting its service")
            log = path / "logs" / "serve.err"
            launched[party] = _launch(processes, f"serve {party}", ["serve"], path, log=log)
        services = []
        for party, path in parties.items():
            ready = _ready(processes, launched[party])
            services.append(
                {
                    "party": party,
                    "folder": str(path),
                    "endpoint": ready["endpoint"],
                    "pid": ready["pid"],
                }
            )
        stages = _sites(parties, vehicles, minutes, trip_km, seed, say)
        transfers = _gate(parties, say)
        reads = _reads(parties, say)
        training = (
            _train(parties, processes, rounds, local_steps, fine_tune_steps, model, say)
            if rounds
            else None
        )
        rights = _rights(parties, reads, training, say)
        reports = _reports(parties, say)
        plan = _plan(parties, say)
        say("witnessing: each party exchanges ledger heads with its peers")
        for path in parties.values():
            _run(["ledger", "witness"], path)
        say("verifying every party's ledger, and the heads its peers hold")
        with ThreadPoolExecutor(max_workers=len(parties)) as pool:
            ledgers = list(
                pool.map(
                    lambda path: _run(["ledger", "verify"], path, ok=(0, 11))[1], parties.values()
                )
            )
        console = _console_users(parties, say)
    finally:
        say("stopping the parties' processes")
        processes.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return {
        "project": str(folder),
        "parties": services,
        **stages,
        "transfers": transfers,
        "reads": reads,
        "rights": rights,
        "training": training,
        "reports": reports,
        "plan": plan,
        "ledgers": ledgers,
        "console": console,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _sites(
    parties: dict[str, Path],
    vehicles: int,
    minutes: float,
    trip_km: float | None,
    seed: int,
    say: Say,
) -> dict[str, list[Any]]:
    """Each site's own work, in its own folder, the sites side by side."""

    def one(site: str) -> dict[str, Any]:
        path = parties[site]
        uploads = path / "uploads"
        say(f"{site}: simulating {vehicles} vehicles departing over {minutes:g} min")
        _run(
            [
                "fleet",
                "simulate",
                "--out",
                str(uploads),
                "--vehicles",
                str(vehicles),
                "--minutes",
                f"{minutes:g}",
                "--seed",
                str(seed),
                *(["--trip-km", f"{trip_km:g}"] if trip_km is not None else []),
            ],
            path,
        )
        say(f"{site}: ingesting")
        _, ingested = _run(["ingest", str(uploads)], path)
        say(f"{site}: classifying (faces and plates in the camera frames)")
        _, classified = _run(["classify"], path)
        deidentified = []
        for profile in ("training", "export"):
            say(f"{site}: de-identifying ({profile})")
            deidentified.append(_run(["deidentify", "--profile", profile], path)[1])
        _, inventory = _run(["inventory"], path)
        return {
            "ingest": ingested,
            "classify": classified,
            "deidentify": deidentified,
            "inventory": inventory,
        }

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(one, _SITES))
    return {
        "ingest": [d["ingest"] for d in done],
        "classify": [d["classify"] for d in done],
        "deidentify": [x for d in done for x in d["deidentify"]],
        "inventory": [d["inventory"] for d in done],
    }


def _approval(
    path: Path,
    say: Say,
    *,
    approval_id: str,
    kind: str,
    recipient: str,
    categories: Sequence[str],
    purpose: str,
    reference: str,
    today: date,
) -> None:
    """Put an approval on file in a site's folder (``onshore approvals add``)."""
    args = [
        "approvals",
        "add",
        "--id",
        approval_id,
        "--type",
        kind,
        "--recipient",
        recipient,
        "--purpose",
        purpose,
        "--max-subjects",
        "100000",
        "--valid-from",
        date(today.year, 1, 1).isoformat(),
        "--reference",
        reference,
    ]
    for category in categories:
        args += ["--category", category]
    code, data = _run(args, path, ok=(0, 12))
    if code:
        say(f"({data.get('message') if isinstance(data, dict) else 'not added'})")


def _entity(parties: dict[str, Path], party: str) -> str:
    """A party's legal entity, as its identity (public) says."""
    _, peers = _run(["party", "peers"], parties[_CN if party != _CN else _EU])
    for peer in peers:
        if peer["id"] == party:
            return str(peer["entity"])
    raise DemoError(f"no identity of {party} on file")


def _gate(parties: dict[str, Path], say: Say) -> list[dict[str, Any]]:
    """The gate's part of the story: what it refuses, what an approval changes, and what it
    still refuses, each transfer run at its origin and sent to the destination's service."""
    today = datetime.now(UTC).date()
    steps: list[dict[str, Any]] = []

    def attempt(origin: str, destination: str, dataset: str, note: str) -> None:
        say(f"transfer {dataset} {origin} -> {destination}: {note}")
        code, data = _run(
            [
                "transfer",
                "--to",
                destination,
                "--dataset",
                dataset,
                "--purpose",
                _PURPOSE,
                "--date",
                today.isoformat(),
            ],
            parties[origin],
            ok=(0, 2, 10),
        )
        if code == 2:  # e.g. a tiny fleet whose export kept no clip
            say(f"skipped: {data.get('message') if isinstance(data, dict) else data}")
            return
        steps.append({"note": note, **data})

    attempt(_CN, _US, "raw", "raw Chinese clips to the US, no approval on file")
    say(f"{_CN}: putting a CAC security assessment on file for de-identified training data")
    _approval(
        parties[_CN],
        say,
        approval_id="CAC-DEMO-2026-001",
        kind="cn_security_assessment",
        recipient=_entity(parties, _US),
        categories=["anonymized_motion", "outside_video_masked"],
        purpose=_PURPOSE,
        reference="CAC-SA-2026-0417 (demo)",
        today=today,
    )
    attempt(_CN, _US, "raw", "raw clips again: the approval does not cover them")
    attempt(_CN, _US, "export", "the anonymised export, consent or not: not for training")
    attempt(_CN, _US, "export:consent=true", "the consenting drivers' anonymised export: approved")
    attempt(_EU, _US, "export:consent=true", "anonymised European data: no longer personal data")
    attempt(
        _EU,
        _US,
        "training:consent=true",
        "pseudonymised European data: personal data, no SCC on file",
    )
    return steps


def _reads(parties: dict[str, Path], say: Say) -> list[dict[str, Any]]:
    """A read from abroad: the coordinator asks each site for a page of its clips; China's
    gate withholds it until an assessment for remote queries is on file."""
    today = datetime.now(UTC).date()
    found: list[dict[str, Any]] = []

    def ask(site: str, note: str) -> None:
        say(f"coordinator reads {site}'s clips: {note}")
        _, data = _run(["read", site, "clips", "--user", "engineer"], parties[_COORD], ok=(0, 10))
        access = data["access"]
        say(
            f"{site}: {'shown' if access['allowed'] else 'withheld'} ({access['how']})"
            + ("" if access["allowed"] else f" - {access['decision']['reasons'][0]}")
        )
        rows = (data.get("data") or {}).get("rows") or []
        consenting = list(dict.fromkeys(r["vin"] for r in rows if r.get("consent")))
        found.append({"site": site, "note": note, "access": access, "consenting": consenting})

    ask(_CN, "personal data from China, no assessment for remote queries")
    say(f"{_CN}: putting a CAC security assessment on file for remote queries")
    _approval(
        parties[_CN],
        say,
        approval_id="CAC-DEMO-2026-003",
        kind="cn_security_assessment",
        recipient=_entity(parties, _COORD),
        categories=["vehicle_id", "trajectory", "sensitive_area_geodata"],
        purpose="remote_query",
        reference="CAC-SA-2026-0612 (demo)",
        today=today,
    )
    ask(_CN, "the same page, with the assessment on file")
    ask(_US, "US data read from Germany")
    ask(_EU, "German data read in Germany: no border crossed")
    return found


def _rights(
    parties: dict[str, Path],
    reads: list[dict[str, Any]],
    training: dict[str, Any] | None,
    say: Say,
) -> dict[str, Any] | None:
    """A driver's rights at the site that recorded their vehicle: what is held of it and where
    it went (an access request), then an erasure that reaches the copy sent abroad; the model
    released before stays as it is, and verifying it lists the erasure."""
    vins = [vin for r in reads if r["site"] == _CN for vin in r.pop("consenting", [])]
    for r in reads:
        r.pop("consenting", None)
    # The answer is the driver's: it is written beside the parties, not in the site's folder,
    # with the request the driver made (a rerun of the demo makes the same one again).
    folder = parties[_CN].parent / "driver"
    request = folder / "request.json"
    held: dict[str, Any] | None = None
    chosen = None
    if request.is_file():
        asked = orjson.loads(request.read_bytes())
        chosen, held = asked["vin"], asked["access"]
        say(f"{_CN}: the driver asks again for the erasure they asked for before")
    for n, vin in enumerate(dict.fromkeys(vins) if chosen is None else ()):
        if n == 8:
            break
        out = folder / f"access-{n + 1}"
        if out.exists():
            shutil.rmtree(out)
        _, held = _run(["access", "--vin", vin, "--out", str(out)], parties[_CN])
        if held["transfers"]:
            chosen = vin
            request.write_bytes(orjson.dumps({"vin": vin, "access": held}))
            request.chmod(0o600)
            break
    if chosen is None or held is None:
        say(f"{_CN}: no consenting driver's data went abroad; no erasure to show")
        return None
    say(
        f"{_CN}: a driver asked what is held of their vehicle: {held['clips']} clips, "
        f"{held['frames']} frames, {held['deidentified']} de-identified outputs, sent abroad "
        f"in {held['transfers']} transfer(s); written to {held['out']}"
    )
    say(f"{_CN}: the driver asks for erasure; the copy in {_US} is erased too")
    _, erased = _run(
        ["erase", "--vin", chosen, "--reason", "demo request"], parties[_CN], ok=(0, 19)
    )
    for peer, got in erased["recipients"].items():
        say(f"{peer}: {got['objects']} objects received from {_CN} erased ({got['status']})")
    done = {"erased": "complete", "incomplete": "incomplete (a recipient did not confirm)"}
    say(
        f"{_CN}: erasure {done.get(erased['status'], erased['status'])}: {erased['clips']} "
        f"clips, {erased['objects']} objects; the ledgers name the vehicle by a keyed hash only"
        if erased["status"] != "already_erased"
        else f"{_CN}: already erased on {erased['finished_at']}: nothing more is held of it"
    )
    released = ((training or {}).get("release") or {}).get("release") or {}
    verified = None
    if released.get("bundle"):
        _, verified = _run(["release", "verify", released["bundle"]], parties[_COORD], ok=(0, 14))
        erasures = (verified.get("lineage") or {}).get("erasures_after_training") or {}
        say(
            f"release verify {released['version']}: "
            + ("valid" if verified["valid"] else "NOT valid")
            + "; erasures after its training: "
            + (", ".join(f"{site} {len(found)}" for site, found in erasures.items()) or "none")
            + " (the model stays as released: no unlearning)"
        )
    return {"access": held, "erasure": erased, "release_verify": verified}


def _train(
    parties: dict[str, Path],
    processes: _Processes,
    rounds: int,
    local_steps: int,
    fine_tune_steps: int,
    model: str,
    say: Say,
) -> dict[str, Any]:
    """Each site's model alone, then the federated model over the deployment engine, fine-tuned
    at each site at the end."""
    say(f"training {model} at each site alone ({rounds * local_steps} steps)")
    local: dict[str, Any] = {"run": "demo-local", "mode": "local", "regions": {}}

    def alone(site: str) -> dict[str, Any]:
        _, summary = _run(
            [
                "train",
                "--mode",
                "local",
                "--model",
                model,
                "--steps",
                str(rounds * local_steps),
                "--run",
                "demo-local",
            ],
            parties[site],
        )
        return dict(summary)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for summary in pool.map(alone, _SITES):
            local["regions"].update(summary.get("regions", {}))
    model_gate = _model_parameters_gate(parties, say)
    coordinator = parties[_COORD]
    say("coordinator: starting its SuperLink (TLS, SuperNode authentication)")
    _start(
        processes,
        "superlink",
        ["federation", "serve"],
        coordinator,
        log=coordinator / "logs" / "federation-serve.err",
    )

    joining = []
    for site in _SITES:
        say(f"{site}: joining with its SuperNode")
        log = parties[site] / "logs" / "site-join.err"
        joining.append(
            _launch(processes, f"supernode {site}", ["site", "join"], parties[site], log=log)
        )
    for launched in joining:
        _ready(processes, launched)
    say(f"federated training: {rounds} rounds across the sites, DP-SGD at each")
    try:
        _, federated = _run(
            [
                "train",
                "--mode",
                "federated",
                "--model",
                model,
                "--rounds",
                str(rounds),
                "--local-steps",
                str(local_steps),
                "--fine-tune-steps",
                str(fine_tune_steps),
                # Small batches keep DP-SGD's sampling rate, and so epsilon, low on small sites.
                "--batch-size",
                "64",
                "--run",
                "demo-federated",
                "--round-timeout",
                "300",
                "--join-timeout",
                "60",
            ],
            coordinator,
            say=say,
        )
    finally:
        for site in _SITES:
            processes.stop(f"supernode {site}")
        processes.stop("superlink")
    release = _release(parties, say) if federated.get("lineage") else None
    return {"local": local, "federated": federated, "model_gate": model_gate, "release": release}


def _model_parameters_gate(parties: dict[str, Path], say: Say) -> dict[str, Any]:
    """China's gate on its model updates, asked before the run: without an assessment that
    covers model parameters it refuses them; one is put on file, and they may leave."""
    _, before = _run(
        ["gate", "outbound", "--category", "model_parameters", "--purpose", _PURPOSE],
        parties[_CN],
        ok=(0, 10),
    )
    recipient = before["request"]["recipient"]
    say(
        f"{_CN}: model parameters to the coordinator ({recipient['name']}, "
        f"{recipient['country']}): {'allowed' if before['allowed'] else 'denied'}"
        + ("" if before["allowed"] else f" - {before['reasons'][0]}")
    )
    if not before["allowed"]:
        say(f"{_CN}: putting a CAC security assessment for model parameters on file")
        _approval(
            parties[_CN],
            say,
            approval_id="CAC-DEMO-2026-002",
            kind="cn_security_assessment",
            recipient=recipient["name"],
            categories=["model_parameters"],
            purpose=_PURPOSE,
            reference="CAC-SA-2026-0533 (demo)",
            today=datetime.now(UTC).date(),
        )
    return {"site": _CN, "before": before}


def _release(parties: dict[str, Path], say: Say) -> dict[str, Any]:
    """Release the federated run, verify it with the sites' services, license it to a
    partner for the EU and China once the sites consent, and check three loads."""
    coordinator = parties[_COORD]
    today = datetime.now(UTC).date()
    say(f"releasing the federated run as {_VERSION}: a signed bundle with its card and lineage")
    code, _ = _run(
        ["release", "create", "--run", "demo-federated", "--version", _VERSION],
        coordinator,
        ok=(0, 14),
        say=say,
    )
    created = code == 0
    if not created:
        say(f"release {_VERSION} exists from an earlier run of the demo; reusing it")
    bundle = coordinator / "releases" / _VERSION / f"model-{_VERSION}.onshore"
    _, verified = _run(["release", "verify", str(bundle)], coordinator, ok=(0, 14))
    say(
        "release verify (lineage vouched for by each site): "
        + ("valid" if verified["valid"] else f"NOT valid ({verified['problems'][0]})")
    )
    grant = [
        "license",
        "grant",
        "--release",
        _VERSION,
        "--licensee",
        _PARTNER,
        "--licensee-country",
        _PARTNER_COUNTRY,
        "--territories",
        ",".join(_TERRITORIES),
        "--purposes",
        "adas",
        "--model-years",
        _MODEL_YEARS,
        "--expires",
        date(today.year + 2, 12, 31).isoformat(),
    ]
    say(f"licensing {_VERSION} to {_PARTNER} for {', '.join(_TERRITORIES)} ({_MODEL_YEARS})")
    code, licence = _run(grant, coordinator, ok=(0, 15), say=say)
    first_refusal, added = None, []
    if code == 15:
        first_refusal = {"message": licence["message"], "territories": licence["territories"]}
        say(f"refused: {licence['message']}")
        added = _approve_for_partner(parties, licence["territories"], today, say)
        say("licensing again: each contributing site asked again for its consent")
        _, licence = _run(grant, coordinator, say=say)
    for territory in licence["territories"]:
        say(f"{territory['territory']}: {territory['reasons'][0]}")
    loads = []
    for territory, model_year in (("DE", 2027), ("CN", 2028), ("US", 2027)):
        say(f"checking a load of {_VERSION} in a {territory} vehicle of model year {model_year}")
        code, report = _run(
            [
                "license",
                "verify",
                licence["id"],
                "--territory",
                territory,
                "--model-year",
                str(model_year),
            ],
            coordinator,
            ok=(0, 16, 17),
        )
        check = report.get("check") or {}
        loads.append(
            {
                "territory": territory,
                "model_year": model_year,
                "loaded": code == 0,
                "error": None
                if code == 0
                else ("licence.prohibited" if code == 17 else "licence.refused"),
                "reason": (report.get("reasons") or ["-"])[0],
                "check": check,
            }
        )
        say(f"{'allowed' if code == 0 else 'refused'}: {(report.get('reasons') or ['-'])[0]}")
    terms = licence["terms"]
    return {
        "release": {
            "version": _VERSION,
            "bundle": str(bundle),
            "run": "demo-federated",
            "manifest_sha256": verified.get("manifest_sha256"),
            "created": created,
            "parties": verified.get("parties", []),
        },
        "verify": verified,
        "first_grant_refused": first_refusal,
        "approvals_added": added,
        "licence": {
            "path": licence["licence"],
            "id": licence["id"],
            "licensee": terms["licensee"]["name"],
            "territories": list(terms["territories"]),
            "purposes": list(terms["purposes"]),
            "model_years": f"{terms['model_years']['first']}-{terms['model_years']['last']}",
            "expires": terms["expires"],
            "consents": [c["statement"]["site"] for c in terms.get("consents", ())],
            "decisions": licence["territories"],
        },
        "loads": loads,
        "us_rule_applies": any(load["error"] == "licence.prohibited" for load in loads),
    }


def _approve_for_partner(
    parties: dict[str, Path], territories: list[dict[str, Any]], today: date, say: Say
) -> list[dict[str, Any]]:
    """At each site whose gate refused the grant for want of an approval, one of the mechanisms
    its decision names, covering the partner: what the site's compliance officer does."""
    added: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for territory in territories:
        for item in territory["decisions"]:
            decision = item["decision"]
            if decision["allowed"] or not decision.get("mechanisms"):
                continue
            site, mechanism = item["site"], decision["mechanisms"][0]
            if (site, mechanism) in seen:
                continue
            seen.add((site, mechanism))
            approval_id = f"DEMO-LICENCE-{site}-{mechanism}".upper()
            say(f"{site}: putting a {mechanism} on file for model parameters to {_PARTNER}")
            _approval(
                parties[site],
                say,
                approval_id=approval_id,
                kind=mechanism,
                recipient=_PARTNER,
                categories=["model_parameters"],
                purpose=item["purpose"],
                reference=f"{mechanism} for the licensed model (demo)",
                today=today,
            )
            added.append({"site": site, "id": approval_id, "type": mechanism})
    return added


_REPORTS: Final = {_CN: "cn-annual", _EU: "eu-transfers", _US: "us-bulk-data"}
"""The report each site's regulator asks of it."""


def _reports(parties: dict[str, Path], say: Say) -> list[dict[str, str]]:
    """Each site's report for its regulator, from its own ledger, in its own folder."""
    written = []
    for site, kind in _REPORTS.items():
        say(f"{site}: writing the {kind} report")
        _, data = _run(["report", kind], parties[site])
        written.append({"site": site, "report": kind, **data["paths"]})
    return written


def _plan(parties: dict[str, Path], say: Say) -> dict[str, Any]:
    """The carmaker's decision for the demo's project, at the coordinator: each site asked
    through its service what it holds and what its gate would decide."""
    say("coordinator: planning: transfer the data out, train where it lies, or both")
    _, plan = _run(["plan"], parties[_COORD], say=say)
    return dict(plan)


def _console_users(parties: dict[str, Path], say: Say) -> dict[str, Any]:
    """A console user per role: the coordinator's engineer and auditor, and each site's
    operator in the site's own console; passwords in each party's
    ``console/demo-users.txt`` (0600), never printed; a rerun keeps them."""
    wanted = [(_COORD, "engineer", "coordinator-engineer"), (_COORD, "auditor", "auditor")]
    wanted += [(site, f"operator-{site}", "site-operator") for site in _SITES]

    def add(party: str) -> None:
        """The users of ``party``, one after another (they share its console's store)."""
        path = parties[party]
        _, listed = _run(["console", "users", "list"], path)
        known = {u["name"] for u in listed}
        passwords = path / "console" / DEMO_USERS
        for name, role in ((n, r) for p, n, r in wanted if p == party and n not in known):
            password = secrets.token_urlsafe(12)
            args = ["console", "users", "add", name, "--role", role, "--password-stdin"]
            if role == "site-operator":
                args += ["--site", party]
            _run(args, path, stdin=password + "\n")
            fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as out:
                out.write(f"{name}\t{role}\t{party}\t{password}\n")

    # Each party's console is its own: they are made side by side.
    with ThreadPoolExecutor(max_workers=len(parties)) as pool:
        list(pool.map(add, dict.fromkeys(p for p, _, _ in wanted)))
    users = [
        {
            "name": name,
            "role": role,
            "party": party,
            "passwords": str(parties[party] / "console" / DEMO_USERS),
        }
        for party, name, role in wanted
    ]
    say(f"console users, one per role; their passwords are in each party's console/{DEMO_USERS}")
    return {
        "users": users,
        "passwords": str(parties[_COORD] / "console" / DEMO_USERS),
        "command": f"onshore console --project {parties[_COORD]}",
        "serve": {party: f"onshore serve --project {path}" for party, path in parties.items()},
    }
