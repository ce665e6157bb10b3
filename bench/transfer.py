"""Transfer throughput: MB/s of a transfer between two parties on loopback, against a plain copy
of the same objects over the same TLS connection, measured in the same run.

Four parties are made in a temporary folder (the three-regions example, loopback, free ports).
The destination, ``us-oregon``, runs its service as a real process (``onshore serve``); the
origin, ``eu-frankfurt``, runs in this process. The origin holds long synthetic clips (about
``--mb`` MB of stored Parquet per repetition, fresh clips for each, so that the destination
holds none of them yet) and a standard contractual clause on file for the US recipient, so
that its gate allows ``raw`` to leave.

Both figures go over one ``httpx.Client`` with the origin's certificate, kept alive: one TLS
connection (the run checks it), already open before either is timed.

- reference: the same objects' bytes, read from the origin's store and sent in the same
  chunks as one signed, streamed ``PUT /v1/probe``, which the service writes to a file as
  it comes (no hash, no sync: what ``scp`` or ``curl -T`` would do) and then drops;
- transfer: ``onshore.transfer.transfer`` timed whole: the gate's decision (the clips
  classified after ingest as a site does, their labels found by hash; the ledger checked),
  the witness exchange, ``transfer_out``, the
  offer, the objects streamed (each hashed at the origin before it leaves, then hashed, written,
  synced and renamed into place at the destination), the commit and ``transfer_confirmed``.

The streamed ``PUT`` alone is reported too, and where the rest of the time goes. The median of
``--repeat`` runs of each; the ratio is the transfer's MB/s over the reference's (the aim is
0.7 or more). MB are 10^6 bytes of stored objects.

    .venv/bin/python bench/transfer.py [--mb 300] [--steps 18000] [--repeat 3] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

from onshore.classify import classify_site
from onshore.clips.schema import CLASS_ARRAY, OBJECT_TYPE, SCHEMA, Clip, ClipMeta
from onshore.clips.tabular import clip_to_parquet
from onshore.clips.vin import make_vin
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.parties.identity import LocalParty, load_peers
from onshore.parties.init import Address, init_parties
from onshore.parties.messages import new_stamp, open_stamp, seal
from onshore.parties.tls import client_context
from onshore.settings import Project
from onshore.store import SiteStore
from onshore.transfer import transfer
from onshore.transfer.outbound import CHUNK

ORIGIN, DESTINATION = "eu-frankfurt", "us-oregon"
PURPOSE = "adas_training"
AIM = 0.7
TRACKED = 4
"""Objects the synthetic ego tracks at every step."""


# -- data ----------------------------------------------------------------------------------------


def make_clip(seed: int, steps: int) -> Clip:
    """A plausible long clip near Frankfurt: an ego at 8-16 m/s on a gently winding road,
    tracking :data:`TRACKED` objects whose positions carry sensor noise (so the Parquet does
    not compress to nothing)."""
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2026-03-02T08:00:00", "us").astype(np.int64) + seed * 3_600_000_000
    time_us = t0 + np.arange(steps, dtype=np.int64) * 100_000
    phase = np.arange(steps) / 600.0
    speed = 12 + 4 * np.sin(phase + seed) + rng.normal(0, 0.02, steps)
    heading = (45 + 30 * np.sin(phase / 3 + seed) + rng.normal(0, 0.05, steps)) % 360
    north = np.cumsum(speed * 0.1 * np.cos(np.radians(heading)))
    east = np.cumsum(speed * 0.1 * np.sin(np.radians(heading)))
    lat0, lon0 = 50.11, 8.68
    lat = lat0 + north / 111_320
    lon = lon0 + east / (111_320 * np.cos(np.radians(lat0)))
    n, f32 = steps * TRACKED, pa.float32()
    tracked = pa.StructArray.from_arrays(
        [
            pa.array(np.tile(np.arange(1, TRACKED + 1, dtype=np.int32), steps)),
            CLASS_ARRAY.take(pa.array(rng.integers(0, 3, n))),
            pa.array(np.tile(np.linspace(-20, 40, TRACKED), steps) + rng.normal(0, 0.3, n), f32),
            pa.array(np.tile(np.linspace(-3.5, 3.5, TRACKED), steps) + rng.normal(0, 0.1, n), f32),
            pa.array(rng.normal(0, 1.0, n), f32),
            pa.array(rng.normal(0, 0.2, n), f32),
        ],
        fields=list(OBJECT_TYPE),
    )
    objects = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n + 1, TRACKED, dtype=np.int32)), tracked
    ).cast(pa.list_(OBJECT_TYPE))
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
            objects,
        ],
        schema=SCHEMA,
    )
    meta = ClipMeta(
        clip_id=f"bench-{seed:05d}",
        vin=make_vin(random.Random(seed), "WVW", "ZZZ1K", 2025, "W"),
        vehicle_model="Bench Estate",
        trigger="random_sample",
        consent_training=True,
        recorded_in=ORIGIN,
    )
    return Clip(meta, table)


def write_uploads(folder: Path, first_seed: int, mb: float, steps: int) -> list[Path]:
    """Parquet uploads of clips from ``first_seed`` on, until they hold ``mb`` MB."""
    folder.mkdir(parents=True)
    paths, total, seed = [], 0, first_seed
    while total < mb * 1e6:
        data = clip_to_parquet(make_clip(seed, steps))
        path = folder / f"bench-{seed:05d}.parquet"
        path.write_bytes(data)
        paths.append(path)
        total += len(data)
        seed += 1
    return paths


def scc_on_file(origin: Project, day: date) -> None:
    """The standard contractual clauses the origin signed with the US recipient."""
    add_approval(
        origin,
        ORIGIN,
        Approval.model_validate(
            {
                "id": "SCC-BENCH",
                "type": "eu_scc",
                "origin": "EU",
                "recipient": "Onshore Mobility Inc.",
                "categories": [
                    "vehicle_id",
                    "trajectory",
                    "vehicle_flow",
                    "sensitive_area_geodata",
                ],
                "purposes": [PURPOSE],
                "max_subjects": 10_000_000,
                "valid_from": date(day.year, 1, 1).isoformat(),
                "reference": "SCC-BENCH-1",
            }
        ),
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """One repetition's clips at the origin: their ids and stored objects."""

    clips: list[str]
    paths: list[str]
    sizes: list[int]

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    @property
    def dataset(self) -> str:
        return f"raw:consent=true,clips={'+'.join(self.clips)}"


def ingest_batch(origin: Project, uploads: list[Path]) -> Batch:
    with SiteStore.open(origin) as site:
        report = ingest(site, uploads, remove_quarantined_source=False)
        if report.quarantined or report.clips != len(uploads):
            raise SystemExit(f"ingest did not take every upload: {report.as_dict()}")
        # As a site does after every ingest (``onshore classify``): the gate then finds each
        # clip's labels by its hash instead of reading every position again.
        classify_site(site)
        ids = {p.stem for p in uploads}
        records = sorted(
            (c for c in site.catalogue.clips() if c.clip_id in ids), key=lambda c: c.clip_id
        )
        sizes = [site.objects.size(r.path) for r in records]
    return Batch([r.clip_id for r in records], [r.path for r in records], sizes)


# -- the destination's service -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(project: Project, log: Path) -> subprocess.Popen[bytes]:
    """``onshore serve`` in ``project``'s folder, once it listens."""
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "onshore", "serve", "--project", str(project.root), "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise SystemExit(f"'onshore serve' did not start:\n{log.read_text()}")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (requests in flight finish), then SIGKILL if it does not stop in 30 s."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


# -- timing --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Wire:
    """Every request the shared client sends: when it started, when its answer's headers came
    back (for a streamed body: once the service read all of it), and on which connection."""

    requests: list[tuple[str, float, float]] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)
    _started: dict[int, float] = field(default_factory=dict)

    def on_request(self, request: httpx.Request) -> None:
        self._started[id(request)] = time.perf_counter()

    def on_response(self, response: httpx.Response) -> None:
        ended = time.perf_counter()
        request = response.request
        started = self._started.pop(id(request))
        self.requests.append((f"{request.method} {request.url.path}", started, ended))
        stream = response.extensions.get("network_stream")
        if stream is not None:
            self.connections.add(id(stream))

    def since(self, started: float) -> list[tuple[str, float, float]]:
        return [r for r in self.requests if r[1] >= started]


def object_chunks(origin: Project, paths: list[str]) -> Iterator[bytes]:
    """The objects' bytes from the origin's store, in the chunks a transfer sends."""
    with SiteStore.open(origin) as site:
        for path in paths:
            data = site.objects.read(path)
            for start in range(0, len(data), CHUNK):
                yield data[start : start + CHUNK]


class Probe:
    """Signed, streamed ``PUT /v1/probe`` requests over a given client, their answers checked
    as :class:`PeerClient` checks any answer: the same stamp and signature headers and the same
    chunks a transfer sends, on the same ``httpx.Client``."""

    def __init__(self, origin: Project, http: httpx.Client) -> None:
        self.local = LocalParty.of(origin)
        self.keys = self.local.keys()
        self.peer = load_peers(origin).get_peer(DESTINATION)
        self.http = http

    def send(self, chunks: Iterable[bytes], length: int) -> int:
        """Send the body; return the bytes the service says it read."""
        stamp = new_stamp(self.local.id, self.peer.id, "probe", None, head=None)
        headers = {
            **seal(stamp, self.keys),
            "content-type": "application/octet-stream",
            "content-length": str(length),
        }
        response = self.http.put("/v1/probe", content=chunks, headers=headers)
        answer, _ = open_stamp(
            response.headers,
            receiver=self.local.id,
            peers={self.peer.id: self.peer},
            skew=float(self.local.settings.clock_skew_seconds),
            body=response.content,
        )
        body = response.json()
        if response.status_code != 200 or answer.reply_to != stamp.id:
            raise SystemExit(f"the probe was refused (HTTP {response.status_code}): {body}")
        return int(body["bytes"])


def probe_seconds(probe: Probe, origin: Project, batch: Batch) -> float:
    started = time.perf_counter()
    read = probe.send(object_chunks(origin, batch.paths), batch.bytes)
    seconds = time.perf_counter() - started
    if read != batch.bytes:
        raise SystemExit(f"the probe's answer counts {read:,} bytes, not {batch.bytes:,}")
    return seconds


def _phase(path: str) -> str:
    if path.endswith("/objects"):
        return "stream"
    return {"/v1/witness": "witness", "/v1/transfers/offer": "offer"}.get(path, "commit")


def transfer_seconds(
    origin: Project, http: httpx.Client, wire: Wire, batch: Batch, day: date
) -> tuple[float, dict[str, float]]:
    """The whole transfer's seconds, and how they divide: the decision before the first request,
    each request (the objects' ``PUT`` is ``stream``), and what the origin did after."""
    started = time.perf_counter()
    report = transfer(origin, DESTINATION, batch.dataset, PURPOSE, day=day, http=http)
    seconds = time.perf_counter() - started
    if report.status != "transferred" or report.copied_bytes != batch.bytes:
        raise SystemExit(
            f"the transfer did not move every object: {report.status}, "
            f"{report.copied} objects, {report.copied_bytes:,} bytes; "
            f"{'; '.join(report.decision.reasons)}"
        )
    sent = wire.since(started)
    phases = {"decision": sent[0][1] - started}
    previous = sent[0][1]
    for request, _begun, ended in sent:
        name = _phase(request.split(" ", 1)[1])
        # Time between requests (origin-side work: transfer_out, reading answers) counts
        # with the request that follows it.
        phases[name] = phases.get(name, 0.0) + ended - previous
        previous = ended
    phases["confirm"] = started + seconds - previous
    return seconds, phases


# -- the run -------------------------------------------------------------------------------------


def measure(mb: float, *, steps: int, repeat: int, keep: bool = False) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="onshore-bench-transfer-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        addresses = {
            p: Address("127.0.0.1", free_port())
            for p in ("cn-shanghai", ORIGIN, DESTINATION, "coordinator")
        }
        parties = init_parties(
            root / "parties", addresses=addresses, federation=f"127.0.0.1:{free_port()}"
        )
        origin = parties[ORIGIN]
        day = datetime.now(UTC).date()
        scc_on_file(origin, day)
        print(f"making and ingesting {repeat} x {mb:g} MB of clips...", file=sys.stderr)
        batches = [
            ingest_batch(origin, write_uploads(root / f"uploads-{r}", r * 10_000, mb, steps))
            for r in range(repeat)
        ]
        os.sync()  # the clips' pages on disk now, not written back while a run is timed
        limit = LocalParty.of(parties[DESTINATION]).settings.max_body_bytes
        if max(b.bytes for b in batches) > limit:
            raise SystemExit(f"--mb {mb:g}: one transfer may carry at most {limit:,} bytes")
        server = serve(parties[DESTINATION], root / "destination.log")

        local = LocalParty.of(origin)
        peer = load_peers(origin).get_peer(DESTINATION)
        wire = Wire()
        http = httpx.Client(
            base_url=peer.endpoint,
            verify=client_context(local.tls, peer.tls_certificate),
            timeout=httpx.Timeout(600.0, connect=10.0),
            event_hooks={"request": [wire.on_request], "response": [wire.on_response]},
        )
        probe_s, transfer_s, stream_s, phases = [], [], [], []
        with http:
            prober = Probe(origin, http)
            # The connection and its handshake, before anything is timed.
            prober.send([b"x" * CHUNK], CHUNK)
            for r, batch in enumerate(batches):
                print(f"run {r + 1}/{repeat}: probe, then transfer...", file=sys.stderr)
                probe_s.append(probe_seconds(prober, origin, batch))
                seconds, split = transfer_seconds(origin, http, wire, batch, day)
                transfer_s.append(seconds)
                stream_s.append(split["stream"])
                phases.append(split)
        sizes = [b.bytes for b in batches]
        objects = statistics.median(len(b.paths) for b in batches)
    finally:
        if server is not None:
            stop(server)
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    def rate(seconds: list[float]) -> float:
        """The median run's MB/s (each run moves its own clips: sizes differ a little)."""
        return statistics.median(n / 1e6 / s for n, s in zip(sizes, seconds, strict=True))

    probe, whole, stream = rate(probe_s), rate(transfer_s), rate(stream_s)
    total = statistics.median(sizes)
    mid = sorted(range(repeat), key=lambda i: transfer_s[i])[repeat // 2]
    return {
        "objects": int(objects),
        "bytes": int(total),
        "object_mb": round(total / objects / 1e6, 3),
        "repeat": repeat,
        "connections": len(wire.connections),
        "reference_probe": {
            "seconds": [round(s, 3) for s in probe_s],
            "mb_per_s": round(probe, 2),
        },
        "transfer": {
            "seconds": [round(s, 3) for s in transfer_s],
            "mb_per_s": round(whole, 2),
            "phases_s_median_run": {k: round(v, 3) for k, v in phases[mid].items()},
        },
        "transfer_stream": {
            "seconds": [round(s, 3) for s in stream_s],
            "mb_per_s": round(stream, 2),
        },
        "ratio_transfer_to_reference": round(whole / probe, 3),
        "ratio_stream_to_reference": round(stream / probe, 3),
        "aim": AIM,
        "meets_aim": whole / probe >= AIM,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=300.0, help="MB of objects per transfer")
    parser.add_argument(
        "--steps", type=int, default=18_000, help="10 Hz steps per clip (18000: 30 minutes)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, fresh clips each")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.repeat < 1 or args.mb <= 0 or args.steps < 2:
        parser.error("--repeat, --mb and --steps must be positive (--steps at least 2)")
    result = measure(args.mb, steps=args.steps, repeat=args.repeat, keep=args.keep)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    probe, whole, stream = result["reference_probe"], result["transfer"], result["transfer_stream"]
    print(
        f"{result['objects']} objects of ~{result['object_mb']} MB, {result['bytes'] / 1e6:.1f} MB "
        f"per transfer, eu-frankfurt -> us-oregon on loopback over "
        f"{result['connections']} TLS connection(s) (median of {args.repeat})"
    )
    print(f"  reference: plain copy (probe) over the same TLS  {probe['mb_per_s']:8.2f} MB/s")
    print(
        f"  onshore transfer, whole                          {whole['mb_per_s']:8.2f} MB/s   "
        f"ratio {result['ratio_transfer_to_reference']:.2f} "
        f"({'meets' if result['meets_aim'] else 'below'} the aim of {AIM})"
    )
    print(
        f"  onshore transfer, objects' PUT alone             {stream['mb_per_s']:8.2f} MB/s   "
        f"ratio {result['ratio_stream_to_reference']:.2f}"
    )
    split = whole["phases_s_median_run"]
    print(
        "  where the median transfer's time went: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in split.items())
    )


if __name__ == "__main__":
    main()
