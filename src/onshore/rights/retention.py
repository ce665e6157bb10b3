"""The storage periods of ``[sites.<id>] retention`` enforced.

A retention run deletes what the site has kept longer than its period allows, each period
counted from when the data was stored (as the settings say): raw clips ingested more than
``raw_days`` ago, with their camera frames, labels and the detections made of them (their
de-identified outputs stay, under their own period), and de-identified outputs first stored
more than ``deidentified_days`` ago, with their masked frames. Cached training samples are
dropped when anything goes (they are built again from what is left). The upload files whose
clips are gone are marked ``expired``, so the same upload is never ingested again, and are
deleted from the inbox they were ingested from if they are still there with the same content.

One ``retention_run`` entry lists every object deleted (``erased``), in the transaction that
removes their catalogue rows; the objects go after it, and a run after a crash deletes what an
earlier run listed and left. ``store verify`` and ``ledger verify`` tell these objects from lost
ones. Each party applies its own periods to what it holds.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson

from onshore.classify.scan import DETECTIONS_DIR
from onshore.forecast.dataset import CACHE_DIR
from onshore.gate.site import OpenSite
from onshore.rights.erase import delete_upload
from onshore.settings import Project

__all__ = ["run_retention"]


def run_retention(
    project: Project,
    *,
    as_of: date | None = None,
    dry_run: bool = False,
    site_id: str | None = None,
) -> dict[str, Any]:
    """Delete what the site's storage periods no longer allow on ``as_of`` (today by default);
    with ``dry_run``, only say what that would be. Returns the summary the CLI prints."""
    day = as_of or datetime.now(UTC).date()
    with OpenSite.open(project, site_id, keys=not dry_run) as site:
        periods = site.settings.retention
        catalogue, objects = site.store.catalogue, site.store.objects
        moment = datetime.combine(day, time(0, 0), tzinfo=UTC)
        summary: dict[str, Any] = {
            "site": site.id,
            "as_of": day.isoformat(),
            "dry_run": dry_run,
            "raw_days": periods.raw_days,
            "deidentified_days": periods.deidentified_days,
            "raw": {"clips": 0, "objects": 0, "bytes": 0, "stored_before": None},
            "deidentified": {"outputs": 0, "objects": 0, "stored_before": None},
            "ledger": {},
        }
        if periods.raw_days is None and periods.deidentified_days is None:
            summary["note"] = (
                f"{site.id} has no storage period configured ([sites.{site.id}] retention = "
                "{ raw_days = N, deidentified_days = N }): nothing is deleted"
            )
            return summary
        if not dry_run:
            _finish_earlier(site)
        clips = []
        if periods.raw_days is not None:
            cutoff = moment - timedelta(days=periods.raw_days)
            clips = catalogue.clips_stored_before(cutoff)
            summary["raw"]["stored_before"] = cutoff.date().isoformat()
        outputs = []
        if periods.deidentified_days is not None:
            cutoff = moment - timedelta(days=periods.deidentified_days)
            outputs = catalogue.outputs_stored_before(cutoff)
            summary["deidentified"]["stored_before"] = cutoff.date().isoformat()
        erased: list[dict[str, str]] = []
        frames = catalogue.frames([c.clip_id for c in clips])
        erased += [{"path": c.path, "sha256": c.sha256} for c in clips]
        erased += [{"path": f.path, "sha256": f.sha256} for f in frames]
        raw_objects = len(erased)
        for output in outputs:
            erased.append({"path": output.path, "sha256": output.sha256})
            masked = orjson.loads(output.detail).get("frames")
            if isinstance(masked, dict) and masked.get("path"):
                erased.append({"path": str(masked["path"]), "sha256": str(masked["sha256"])})
        summary["raw"].update(
            clips=len(clips),
            objects=raw_objects,
            bytes=sum(c.bytes for c in clips),
        )
        summary["deidentified"].update(outputs=len(outputs), objects=len(erased) - raw_objects)
        if dry_run or not erased:
            return summary
        derived = [
            p
            for f in frames
            for p in objects.find(f"{DETECTIONS_DIR}/{f.sha256[:2]}")
            if p.rsplit("/", 1)[-1].startswith(f.sha256)
        ]
        sources = {c.source_sha256: catalogue.file(c.source_sha256) for c in clips}
        uploads: list[tuple[str, str]] = []
        with catalogue.transaction() as conn:
            entry = site.ledger.append(
                "retention_run",
                {
                    "as_of": day.isoformat(),
                    "raw_days": periods.raw_days,
                    "deidentified_days": periods.deidentified_days,
                    "clips": len(clips),
                    "outputs": len(outputs),
                    "erased": erased,
                    "derived": derived,
                },
                conn=conn,
            )
            if outputs:
                catalogue.forget_outputs(conn, outputs)
            if clips:
                catalogue.forget_clips(
                    conn, [c.clip_id for c in clips], keep_outputs=True, status="expired"
                )
                for digest in catalogue.files_with_status(conn, sources, "expired"):
                    upload = sources[digest]
                    if upload is not None and upload.path:
                        uploads.append((upload.path, digest))
        for path in [e["path"] for e in erased] + derived + list(objects.find(CACHE_DIR)):
            objects.delete(path)
        for path, digest in uploads:
            delete_upload(Path(path), digest)
        summary["raw"]["uploads"] = len(uploads)
        summary["scrubbed"] = catalogue.scrub()
        summary["ledger"] = {site.id: entry.seq}
        return summary


def _finish_earlier(site: OpenSite) -> None:
    """Delete what the last run listed and a crash left in the store."""
    last = site.ledger.entries(kind="retention_run")
    if not last:
        return
    data = last[-1].data
    for path in [e["path"] for e in data.get("erased", [])] + list(data.get("derived", [])):
        site.store.objects.delete(path)
