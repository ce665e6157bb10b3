"""Ledger throughput: signed appends per second and verified entries per second, each against a
bare SHA-256 + Ed25519 loop over the very same canonical entries, measured in the same run.

Appends go into a fresh site ledger on SQLite (the default catalogue), ``--batch`` entries per
transaction through ``Ledger.append_many``: canonical JSON, hash, signature, chain link, insert,
head update, commit. The reference hashes and signs the same encoded entries and does nothing
else. ``verify`` is timed whole on the resulting ledger (read every row, recompute every hash,
check links, formats, canonical payloads and every signature against the pinned key); its
reference hashes and verifies the same entries with a prepared key. One append per transaction
is measured too, for scale: there the commit, not the crypto, sets the pace. Best of
``--repeat``; the ratios are onshore's rate over the bare loop's (the aim is 0.5 or more).

    .venv/bin/python bench/ledger.py [--n 20000] [--batch 1000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from onshore.ledger import Entry, Ledger, verify
from onshore.ledger.entry import SIGNATURE_CONTEXT
from onshore.sites.keystore import SiteKeys, create_keystore
from onshore.store.catalogue import Catalogue

SITE = "cn-shanghai"


def payload(i: int) -> dict[str, Any]:
    """A gate decision about the size of a real one: rules, reasons, counts, what moved."""
    return {
        "allowed": i % 3 != 0,
        "request": {
            "origin": "CN",
            "destination": "EU",
            "purpose": "adas_training",
            "date": "2026-11-29",
            "recipient": "Onshore Mobility Europe GmbH",
        },
        "rules": [
            {"id": "cn.pi.export.threshold", "source": "PIPL art. 38", "confidence": "checked"},
            {"id": "eu.adequacy", "source": "GDPR art. 45", "confidence": "checked"},
        ],
        "reasons": [f"{1000 + i} subjects in the calendar year, under the 100,000 threshold"],
        "subjects_in_window": {"cn.pi.export.threshold": 1000 + i},
        "objects": [
            {"path": f"clips/{i % 256:02x}/{i:064x}.parquet", "sha256": f"{i:064x}"}
            for _ in range(3)
        ],
    }


def _fresh(root: Path, run: int) -> tuple[Catalogue, SiteKeys]:
    keys = create_keystore(root / f"keys-{run}")
    return Catalogue(f"sqlite:///{root / f'catalogue-{run}.sqlite'}", SITE), keys


def _time_appends(
    root: Path, run: int, n: int, batch: int
) -> tuple[float, Ledger, Catalogue, SiteKeys]:
    catalogue, keys = _fresh(root, run)
    ledger = Ledger.open(catalogue, keys)
    items = [("gate_decision", payload(i)) for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, batch):
        ledger.append_many(items[i : i + batch])
    return time.perf_counter() - started, ledger, catalogue, keys


def _time_single_appends(root: Path, n: int) -> float:
    catalogue, keys = _fresh(root, -1)
    ledger = Ledger.open(catalogue, keys)
    started = time.perf_counter()
    for i in range(n):
        ledger.append("gate_decision", payload(i))
    seconds = time.perf_counter() - started
    catalogue.close()
    return seconds


def _reference_sign(keys: SiteKeys, encoded: list[bytes]) -> float:
    key = keys.signing_key
    started = time.perf_counter()
    for data in encoded:
        key.sign(SIGNATURE_CONTEXT + hashlib.sha256(data).digest())
    return time.perf_counter() - started


def _reference_verify(keys: SiteKeys, entries: list[Entry]) -> float:
    key = keys.public_key
    pairs = [(e.encoded(), bytes.fromhex(e.signature)) for e in entries]
    started = time.perf_counter()
    for data, signature in pairs:
        key.verify(signature, SIGNATURE_CONTEXT + hashlib.sha256(data).digest())
    return time.perf_counter() - started


def measure(n: int, *, batch: int = 1000, repeat: int = 3, single: int = 300) -> dict[str, Any]:
    """Appends and verifications per second of ``n`` entries, each with its bare-crypto
    reference measured in the same run; the best of ``repeat`` runs of each."""
    root = Path(tempfile.mkdtemp(prefix="onshore-bench-ledger-"))
    try:
        append_s, verify_s, ref_sign_s, ref_verify_s = [], [], [], []
        for run in range(repeat):
            seconds, ledger, catalogue, keys = _time_appends(root, run, n, batch)
            append_s.append(seconds)
            entries = ledger.entries()[1:]  # the genesis was not part of the timed appends
            ref_sign_s.append(_reference_sign(keys, [e.encoded() for e in entries]))
            started = time.perf_counter()
            report = verify(ledger, current_key=keys.public_key)
            verify_s.append(time.perf_counter() - started)
            if not report.ok or report.entries != n + 1:
                raise SystemExit(f"the benchmark's own ledger does not verify: {report.problems}")
            ref_verify_s.append(_reference_verify(keys, entries))
            catalogue.close()
        single_s = _time_single_appends(root, single) if single else 0.0
        mean_payload = sum(len(e.payload) for e in entries) / len(entries)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    append, ref_sign = n / min(append_s), n / min(ref_sign_s)
    verified, ref_verify = (n + 1) / min(verify_s), n / min(ref_verify_s)
    return {
        "entries": n,
        "batch": batch,
        "payload_bytes": round(mean_payload),
        "append": {
            "per_s": round(append),
            "reference_sign_per_s": round(ref_sign),
            "ratio": round(append / ref_sign, 3),
        },
        "verify": {
            "per_s": round(verified),
            "reference_verify_per_s": round(ref_verify),
            "ratio": round(verified / ref_verify, 3),
        },
        "append_one_per_transaction": {
            "entries": single,
            "per_s": round(single / single_s) if single else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="entries per run")
    parser.add_argument("--batch", type=int, default=1000, help="entries per transaction")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.n, batch=args.batch, repeat=args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    a, v = result["append"], result["verify"]
    print(
        f"{args.n:,} ledger entries of ~{result['payload_bytes']} payload bytes, "
        f"{args.batch} per transaction (best of {args.repeat})"
    )
    print(f"  reference: SHA-256 + Ed25519 sign     {a['reference_sign_per_s']:>9,} /s")
    print(f"  onshore signed appends               {a['per_s']:>9,} /s   ratio {a['ratio']:.2f}")
    print(f"  reference: SHA-256 + Ed25519 verify   {v['reference_verify_per_s']:>9,} /s")
    print(f"  onshore verified entries             {v['per_s']:>9,} /s   ratio {v['ratio']:.2f}")
    single = result["append_one_per_transaction"]
    if single["per_s"] is not None:
        print(f"  (one append per transaction:         {single['per_s']:>9,} /s, commit-bound)")


if __name__ == "__main__":
    main()
