"""Gate throughput: decisions per second, against references measured in the same run.

A pool of distinct, seeded random requests (CN, EU and US origins; one to three data items in
random de-identification states; recipients, some of them China-linked; purposes; dates across
2026) is decided against a dozen approvals on file. Each pass decides every request once, so no
answer is ever reused. Two kinds of requests:

- ``file``: as ``gate check`` reads them, each with up to four earlier transfers;
- ``ledger``: each with a year of earlier transfers (one a day), as a site's ledger supplies
  them to the gate.

Figures, best of ``--repeat`` passes, one process:

- reference ``parse``: validating the request JSON into the request model (strictly, as the
  gate does), nothing else;
- reference ``evaluate``: the bare rulebook evaluation of the same requests (what the gate
  builds on: matching rules, counts, reasons), without approvals;
- ``decide``: :meth:`Gate.decide` on the parsed requests (evaluation, history, approvals,
  the decision with its reasons), and ``end to end``: JSON in, decision JSON out.

The ratios say what the gate costs over its references. ``main`` runs a list of sections, each
a function returning its figures; other parts of the gate (the ledger's appends and
verifications, from bench/ledger.py) add their own.

    .venv/bin/python bench/gate.py [--requests 2000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Any

import orjson

from onshore.gate import Approval, Gate, GateRequest, parse_request
from onshore.rulebook import builtin_rulebooks, evaluate

Section = Callable[[argparse.Namespace], dict[str, Any]]

RECIPIENTS = [
    ("Example Motors Inc.", "US", []),
    ("Autobahn Data GmbH", "DE", []),
    ("Dragon Drive LLC", "US", ["CN"]),
    ("Shanghai Mobility Co.", "CN", []),
    ("Maple Robotics Ltd.", "CA", []),
]
ORIGINS = {"CN": ["US", "DE", "HK", "CN"], "EU": ["US", "CN", "CA", "DE"], "US": ["CN", "DE", "US"]}
CATEGORIES = [
    "vehicle_id",
    "trajectory",
    "anonymized_motion",
    "outside_video_masked",
    "vehicle_flow",
    "model_parameters",
    "aggregate_metrics",
]
STATES = ["raw", "pseudonymized", "anonymized"]
PURPOSES = ["adas_training", "fleet_analytics", "hd_mapping"]
YEAR = date(2026, 1, 1)


def approvals() -> list[Approval]:
    """A dozen approvals of the kinds a fleet keeps on file."""
    kinds = [
        ("cn_security_assessment", "CN", 2_000_000),
        ("cn_standard_contract", "CN", 900_000),
        ("eu_scc", "EU", None),
        ("eu_dpf", "EU", None),
    ]
    out = []
    for n, (kind, origin, limit) in enumerate(kinds * 3):
        name = RECIPIENTS[n % 3][0]
        out.append(
            Approval(
                id=f"A{n}",
                type=kind,
                origin=origin,
                recipient=name,
                categories=tuple(CATEGORIES[: 3 + n % 5]),
                purposes=tuple(PURPOSES[: 1 + n % 3]),
                max_subjects=limit,
                valid_from=date(2025, 1, 1) + timedelta(days=30 * n),
                valid_to=None,
                reference=f"REF-{n}",
            )
        )
    return out


def request(rng: random.Random, history_days: int) -> dict[str, Any]:
    """One random request as JSON-ready data, with ``history_days`` daily earlier transfers
    (or up to four when 0)."""
    origin = rng.choice(list(ORIGINS))
    name, country, linked = rng.choice(RECIPIENTS)
    day = YEAR + timedelta(days=rng.randrange(365))
    data = [
        {
            "category": rng.choice(CATEGORIES),
            "subjects": rng.choice([50, 900, 5_000, 20_000, 150_000]),
            "deid_state": rng.choice(STATES),
        }
        for _ in range(rng.randint(1, 3))
    ]
    days = history_days or rng.randint(0, 4)
    history = [
        {
            "date": (day - timedelta(days=d + 1)).isoformat(),
            "destination": rng.choice(ORIGINS[origin]),
            "category": rng.choice(CATEGORIES),
            "subjects": rng.randrange(1, 400),
            "recipient": rng.choice([None, name]),
        }
        for d in range(days)
    ]
    return {
        "origin": origin,
        "destination": rng.choice(ORIGINS[origin]),
        "recipient": {"name": name, "country": country, "linked_to": linked},
        "purpose": rng.choice(PURPOSES),
        "date": day.isoformat(),
        "data": data,
        "history": history,
    }


def best(repeat: int, run: Callable[[], object]) -> float:
    """Seconds of the fastest of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def gate_section(args: argparse.Namespace) -> dict[str, Any]:
    """Decisions per second for file-like and ledger-like requests."""
    books = builtin_rulebooks()
    gate = Gate(books, approvals())
    out: dict[str, Any] = {}
    for kind, history_days in (("file", 0), ("ledger", 365)):
        rng = random.Random(args.seed)
        count = args.requests if history_days == 0 else max(args.requests // 4, 50)
        texts = [orjson.dumps(request(rng, history_days)) for _ in range(count)]
        parsed: Sequence[GateRequest] = [parse_request(t) for t in texts]
        decisions = [gate.decide(r) for r in parsed]  # warm the rulebooks' caches once

        def parse_all(texts: list[bytes] = texts) -> None:
            for text in texts:
                GateRequest.model_validate_json(text, strict=True)

        def evaluate_all(parsed: Sequence[GateRequest] = parsed) -> None:
            for r in parsed:
                evaluate(r, books)

        def decide_all(parsed: Sequence[GateRequest] = parsed) -> None:
            for r in parsed:
                gate.decide(r)

        def end_to_end(texts: list[bytes] = texts) -> None:
            for text in texts:
                orjson.dumps(gate.decide(parse_request(text)).as_dict())

        parse_s = best(args.repeat, parse_all)
        evaluate_s = best(args.repeat, evaluate_all)
        decide_s = best(args.repeat, decide_all)
        e2e_s = best(args.repeat, end_to_end)
        out[kind] = {
            "requests": count,
            "history_per_request": history_days or "0-4",
            "allowed": sum(d.allowed for d in decisions),
            "reference_parse_per_s": round(count / parse_s),
            "reference_evaluate_per_s": round(count / evaluate_s),
            "decisions_per_s": round(count / decide_s),
            "end_to_end_per_s": round(count / e2e_s),
            "decide_over_evaluate": round(evaluate_s / decide_s, 3),
            "decide_over_parse": round(parse_s / decide_s, 3),
        }
    return out


def ledger_section(args: argparse.Namespace) -> dict[str, Any]:
    """Signed appends and verified entries per second, against a bare SHA-256 + Ed25519 loop
    over the same payloads (see bench/ledger.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from ledger import measure  # bench/ledger.py

    return measure(args.entries, repeat=min(args.repeat, 3))


SECTIONS: dict[str, Section] = {"gate": gate_section, "ledger": ledger_section}
"""Each section's figures under its name."""


def render_gate(figures: dict[str, Any]) -> None:
    for kind, f in figures.items():
        print(
            f"gate, {kind} requests ({f['requests']:,} distinct, history "
            f"{f['history_per_request']} each, {f['allowed']:,} allowed)"
        )
        print(f"  reference: parse + validate request JSON  {f['reference_parse_per_s']:10,}/s")
        print(f"  reference: bare rulebook evaluate         {f['reference_evaluate_per_s']:10,}/s")
        print(
            f"  gate decide                               {f['decisions_per_s']:10,}/s"
            f"   ratio to evaluate {f['decide_over_evaluate']:.2f}, to parse "
            f"{f['decide_over_parse']:.3f}"
        )
        print(f"  gate end to end (JSON in, decision out)   {f['end_to_end_per_s']:10,}/s")


def render_ledger(figures: dict[str, Any]) -> None:
    a, v = figures["append"], figures["verify"]
    print(f"ledger, {figures['entries']:,} entries of ~{figures['payload_bytes']} payload bytes")
    print(f"  reference: SHA-256 + Ed25519 sign         {a['reference_sign_per_s']:10,}/s")
    print(
        f"  signed appends                            {a['per_s']:10,}/s   ratio {a['ratio']:.2f}"
    )
    print(f"  reference: SHA-256 + Ed25519 verify       {v['reference_verify_per_s']:10,}/s")
    print(
        f"  verified entries                          {v['per_s']:10,}/s   ratio {v['ratio']:.2f}"
    )


RENDER: dict[str, Callable[[dict[str, Any]], None]] = {
    "gate": render_gate,
    "ledger": render_ledger,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--entries", type=int, default=20_000, help="ledger entries per run")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        name: section(args) for name, section in SECTIONS.items() if name in (args.only or SECTIONS)
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"best of {args.repeat} passes, one process")
    for name, figures in results.items():
        RENDER[name](figures)


if __name__ == "__main__":
    main()
