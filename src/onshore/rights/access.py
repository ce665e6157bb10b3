"""A driver's access request: everything the site holds about a vehicle, and what was sent where
and when, written to a folder in open formats.

The folder holds ``clips/<clip>.parquet`` (each clip as stored: positions, motion, objects),
``frames/<clip>/<camera>-<time>.<format>`` (the camera images themselves; a video camera's
frames as one stream, ``frames/<clip>/<camera>.h264`` and the time of each frame beside it),
``deidentified/<profile>/<clip>.parquet`` (the site's de-identified versions), ``vehicle.json``
(the catalogue's records: clips, labels with their evidence, consent and its withdrawals, erasures
made), ``sent.json`` (from the ledger: each transfer that carried any of it, to whom, when, for
what purpose, under which decision) and ``manifest.json`` (every file with its size and
SHA-256). The request is recorded in the ledger, the vehicle named by its keyed hash.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from onshore.clips.codec import is_video
from onshore.errors import ConfigError, UnknownVehicle
from onshore.gate.site import OpenSite
from onshore.rights.erase import erasures, transfers_carrying
from onshore.rights.vin import check_vin, vehicle_key
from onshore.settings import Project
from onshore.store.catalogue import DeidentifiedRecord

__all__ = ["access_vehicle"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:120]


def _frame_files(folder: str, data: bytes) -> dict[str, bytes]:
    """A clip's stored frames as files a driver can open: each still as its image
    (``<camera>-<time>.<format>``), each video camera as its stream (``<camera>.<codec>``, the
    access units in order, which players open as a raw H.264 or H.265 stream) with the time of
    each of its frames beside it (``<camera>.<codec>.times.json``)."""
    table = pq.read_table(pa.BufferReader(data))
    files: dict[str, bytes] = {}
    streams: dict[str, tuple[str, list[bytes], list[str]]] = {}
    for camera, time, kind, image in zip(
        table["camera"].to_pylist(),
        table["time"].to_pylist(),
        table["format"].to_pylist(),
        table["data"].to_pylist(),
        strict=True,
    ):
        if is_video(kind):
            stream = streams.setdefault(camera, (kind, [], []))
            stream[1].append(image)
            stream[2].append(time.isoformat())
            continue
        stamp = time.strftime("%Y%m%dT%H%M%S%f")
        files[f"{folder}/{_safe(camera)}-{stamp}.{_safe(kind)}"] = image
    for camera, (kind, packets, times) in streams.items():
        name = f"{folder}/{_safe(camera)}.{_safe(kind)}"
        files[name] = b"".join(packets)
        files[f"{name}.times.json"] = orjson.dumps(
            {"camera": camera, "format": kind, "frames": times}, option=orjson.OPT_INDENT_2
        )
    return files


def access_vehicle(
    project: Project, vin: str, out: Path, *, site_id: str | None = None
) -> dict[str, Any]:
    """Write what the site holds of ``vin`` to ``out`` (a new or empty folder); returns the
    summary. Raises :class:`InvalidVin`, :class:`UnknownVehicle`, or :class:`ConfigError` when
    ``out`` holds files already."""
    vin = check_vin(vin)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out {out}: not an empty folder",
            hint="name a new folder: an access request's answer is written whole, on its own",
        )
    with OpenSite.open(project, site_id) as site:
        catalogue, objects = site.store.catalogue, site.store.objects
        key = vehicle_key(site.keys.hmac_secret.reveal(), vin)
        clips = sorted(catalogue.clips_of([vin]), key=lambda c: (c.start_time, c.clip_id))
        erased = [e for e in erasures(site) if e["vehicle"] == key]
        if not clips and not erased and not catalogue.outputs_of_vehicle(vin):
            raise UnknownVehicle(
                f"{site.id} holds no data of vehicle {vin}, and erased none",
                hint="check the VIN; an access request is answered by the site that recorded it",
            )
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, bytes] = {}
        ids = [c.clip_id for c in clips]
        paths: dict[str, str] = {}
        for clip in clips:
            name = f"clips/{_safe(clip.clip_id)}.parquet"
            written[name] = objects.read(clip.path)
            paths[clip.path] = name
        frame_count = 0
        for frames in catalogue.frames(ids):
            frame_count += frames.frames
            data = objects.read(frames.path)
            paths[frames.path] = f"frames/{_safe(frames.clip_id)}"
            written.update(_frame_files(f"frames/{_safe(frames.clip_id)}", data))
        outputs = _unique(catalogue.deidentified_of(ids) + catalogue.outputs_of_vehicle(vin))
        for output in outputs:
            name = f"deidentified/{_safe(output.profile)}/{_safe(output.clip_id)}.parquet"
            written[name] = objects.read(output.path)
            paths[output.path] = name
            masked = orjson.loads(output.detail).get("frames")
            if isinstance(masked, dict) and masked.get("path"):
                frames_name = f"deidentified/{_safe(output.profile)}/{_safe(output.clip_id)}"
                written[f"{frames_name}.frames.parquet"] = objects.read(str(masked["path"]))
                paths[str(masked["path"])] = f"{frames_name}.frames.parquet"
        labels: dict[str, list[dict[str, Any]]] = {}
        for record in catalogue.labels_of(ids):
            labels.setdefault(record.clip_id, []).append(
                {"category": record.category, "count": record.count, "evidence": record.evidence}
            )
        sent = _sent(site, paths)
        vehicle = {
            "site": site.id,
            "vin": vin,
            "clips": [
                {
                    "clip_id": c.clip_id,
                    "vehicle_model": c.vehicle_model,
                    "trigger": c.trigger,
                    "recorded_in": c.recorded_in,
                    "start_time": c.start_time.isoformat(),
                    "end_time": c.end_time.isoformat(),
                    "positions": c.rows,
                    "objects_tracked": c.objects,
                    "consent_training": c.consent_training,
                    "ingested_at": c.ingested_at.isoformat() if c.ingested_at else None,
                    "labels": labels.get(c.clip_id, []),
                    "file": paths[c.path],
                }
                for c in clips
            ],
            "deidentified": [
                {
                    "profile": o.profile,
                    "clip_id": o.clip_id,
                    "state": o.state,
                    "positions": o.rows,
                    "file": paths[o.path],
                }
                for o in outputs
            ],
            "consent_withdrawals": [
                {k: w[k] for k in ("purpose", "withdrawn_at")} for w in catalogue.withdrawals(vin)
            ],
            "erasures": erased,
        }
        written["vehicle.json"] = orjson.dumps(vehicle, option=orjson.OPT_INDENT_2)
        written["sent.json"] = orjson.dumps(sent, option=orjson.OPT_INDENT_2)
        manifest: list[dict[str, Any]] = []
        for name, data in sorted(written.items()):
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            manifest.append(
                {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )
        (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        os.sync()
        total = sum(len(data) for data in written.values())
        entry = site.ledger.append(
            "access_request",
            {"vehicle": key, "files": len(manifest), "bytes": total, "transfers": len(sent)},
        )
        return {
            "site": site.id,
            "vehicle": key,
            "out": str(out),
            "clips": len(clips),
            "frames": frame_count,
            "deidentified": len(outputs),
            "transfers": len(sent),
            "files": len(manifest),
            "bytes": total,
            "ledger": {site.id: entry.seq},
        }


def _unique(outputs: list[DeidentifiedRecord]) -> list[DeidentifiedRecord]:
    """Each output once (found by its clip and by its vehicle)."""
    return list({(o.profile, o.clip_id): o for o in outputs}.values())


def _sent(site: OpenSite, paths: dict[str, str]) -> list[dict[str, Any]]:
    """Each transfer (from the ledger) that carried any of the vehicle's objects."""
    out = []
    for carried in transfers_carrying(site, set(paths)):
        data, receipt = carried.entry.data, carried.receipt
        out.append(
            {
                "transfer": data.get("transfer"),
                "to": data.get("to"),
                "recipient": data.get("recipient"),
                "destination": data.get("destination"),
                "purpose": data.get("purpose"),
                "sent_at": carried.entry.time,
                "received_confirmed_at": receipt.time if receipt is not None else None,
                "decision": {
                    k: (data.get("decision") or {}).get(k)
                    for k in ("allowed", "approval", "reasons")
                },
                "files": [paths[p] for p in carried.paths],
                "ledger_seq": carried.entry.seq,
            }
        )
    return out
