"""The plan as a decision memo a board can read (HTML and PDF), every figure with its source:
the rule and rulebook a site's gate decided by, the approval on file, the catalogue query, the
lead time's source, or the run that measured a model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onshore.reports.model import Figure, Report, Source, TableBlock
from onshore.reports.render import write_report

__all__ = ["memo_report", "write_memo"]


def write_memo(plan: Mapping[str, Any], out: Path) -> dict[str, str]:
    """Write the memo of ``plan`` to ``out`` (``plan.html``, ``plan.pdf``)."""
    return {kind: str(path) for kind, path in write_report(memo_report(plan), out).items()}


def memo_report(plan: Mapping[str, Any]) -> Report:
    """The memo's figures, tables and notes."""
    coordinator = plan["coordinator"]["id"]
    options = {o["id"]: o for o in plan["options"]}
    best = options[plan["recommended"]]
    report = Report(
        kind="plan",
        site=coordinator,
        title="Transfer the data out, or train where it lies: the plan",
        scope=(
            f"markets {', '.join(plan['markets'])}, model years {plan['model_years'][0]}-"
            f"{plan['model_years'][-1]}, horizon {plan['horizon']}, purpose {plan['purpose']}, "
            f"as of {plan['today']}"
        ),
        generated=plan["generated"],
    )
    plan_source = Source(coordinator, "plan", detail=f"plans/{plan['plan']}/plan.json")
    report.figures.append(
        Figure("recommended", "Recommended option", best["title"], (plan_source,))
    )
    report.figures.append(Figure("decided_by", "Decided by", plan["decided_by"], (plan_source,)))
    report.figures.append(
        Figure("centre", "Training site for the data moved", plan["centre"], (plan_source,))
    )
    for option in plan["options"]:
        report.figures.append(
            Figure(
                f"{option['id']}.vehicles",
                f"{option['title']}: vehicles whose data trains the model by the horizon",
                option["vehicles"],
                tuple(_catalogue(site) for site in option["included"]),
            )
        )
        report.figures.append(
            Figure(
                f"{option['id']}.start",
                f"{option['title']}: earliest start",
                option["start"],
                tuple(_law_sources(option)),
            )
        )
    report.tables.append(_side_by_side(plan))
    report.tables.append(_law(plan))
    report.tables.append(_models(plan))
    report.tables.append(_markets(plan))
    report.tables.append(_renewals(plan))
    report.tables.append(_approvals(plan))
    report.notes.extend(
        [
            "Options are ranked by the data each can use by the horizon, then the persons and "
            "vehicles whose personal data would cross a border, then the day the model is "
            "ready, then the markets and model years it can be licensed for, then its "
            "expected ADE.",
            "Each decision is the site's own gate's, under its rulebooks and the approvals on "
            "file, asked of the site and recorded nowhere: asking is not sending.",
            "Lead times come from the rulebooks, each with its source and confidence; an "
            "'unchecked' one needs a lawyer's look before it is relied on.",
            "Expected errors marked 'measured' come from this project's own runs; the others "
            "are estimates, with their basis.",
        ]
    )
    for site_id, site in plan["sites"].items():
        if site.get("error"):
            report.notes.append(f"{site_id} did not answer: {site['error']}")
    return report


def _catalogue(site: str) -> Source:
    return Source(site, "catalogue", detail="consenting drivers' clips and their outputs")


def _law_sources(option: Mapping[str, Any]) -> list[Source]:
    out = []
    for site_id, row in option["sites"].items():
        law = row.get("law")
        if not law:
            continue
        for rule in law["rules"][:1]:
            out.append(Source(site_id, "rule", detail=f"{rule['id']}: {rule['source']}"))
        if law.get("lead_time"):
            lead = law["lead_time"]
            out.append(
                Source(
                    site_id,
                    "rulebook",
                    detail=f"lead time of {law['via']}: {lead['typical']} ({lead['source']}; "
                    f"{lead['confidence']})",
                )
            )
        if law.get("approval"):
            approval = law["approval"]
            out.append(
                Source(
                    site_id,
                    "approval",
                    detail=f"{approval['id']} ({approval['type']}, {approval['reference']})",
                )
            )
    return out


def _days(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _side_by_side(plan: Mapping[str, Any]) -> TableBlock:
    rows, sources = [], []
    for o in plan["options"]:
        rows.append(
            (
                o["title"],
                ", ".join(o["included"]) or "none",
                o["start"],
                o["ready"],
                f"{o['vehicles']:,}",
                f"{o['personal_subjects_crossing']:,}",
                f"{sum(o['bytes_crossing'].values()):,}",
                _days(o["compute"]["seconds"]) + " at " + ", ".join(o["compute"]["where"]),
                str(o["licensable_market_years"]),
            )
        )
        sources.append(tuple(_law_sources(o)) or (Source(plan["coordinator"]["id"], "plan"),))
    return TableBlock(
        "The options side by side",
        (
            "option",
            "sites by the horizon",
            "start",
            "model ready",
            "vehicles",
            "personal data crossing (subjects)",
            "bytes crossing",
            "training",
            "market-years licensable",
        ),
        tuple(rows),
        tuple(sources),
    )


def _law(plan: Mapping[str, Any]) -> TableBlock:
    rows, sources = [], []
    for o in plan["options"]:
        for site_id, row in o["sites"].items():
            law = row.get("law")
            if law is None:
                verdict, needs, approval, earliest = "-", "-", "-", row.get("earliest") or "-"
            else:
                verdict = (
                    "prohibited"
                    if law["prohibited"]
                    else "exempt"
                    if law["exempt"]
                    else "allowed"
                    if law["allowed"]
                    else "needs an approval"
                )
                needs = " or ".join(law["mechanisms"]) or "-"
                approval = law["approval"]["id"] if law.get("approval") else "-"
                earliest = law.get("earliest") or "never (by this rulebook)"
                if law.get("lead_time"):
                    earliest += f" ({law['via']}: {law['lead_time']['typical']})"
            crossing = ", ".join(
                f"{i['category']} ({i['subjects']:,}, {i['deid_state']})"
                for i in row["data"].get("items", [])
            )
            if row["data"].get("moved") == "model_parameters":
                crossing = "model updates"
            elif law is None:
                crossing = "-"
            rows.append(
                (o["id"], site_id, row["role"], crossing or "-", verdict, needs, approval, earliest)
            )
            one = _law_sources({"sites": {site_id: row}})
            sources.append(tuple(one) or (_catalogue(site_id),))
    return TableBlock(
        "The law, per option and site (each site's gate)",
        (
            "option",
            "site",
            "role",
            "what crosses (subjects, state)",
            "decision",
            "mechanism needed",
            "approval used",
            "earliest",
        ),
        tuple(rows),
        tuple(sources),
    )


def _models(plan: Mapping[str, Any]) -> TableBlock:
    rows, sources = [], []
    for o in plan["options"]:
        for region, m in o["model"].items():
            ade = "-" if m.get("ade") is None else f"{m['ade']:.3f} m"
            if m.get("fine_tuned_ade") is not None:
                ade += f" ({m['fine_tuned_ade']:.3f} m fine-tuned at the site)"
            rows.append((o["id"], region, ade, m["basis"]))
            sources.append((Source(plan["coordinator"]["id"], "run", detail=m["basis"]),))
    return TableBlock(
        "Expected ADE per region", ("option", "region", "ADE", "basis"), tuple(rows), tuple(sources)
    )


def _markets(plan: Mapping[str, Any]) -> TableBlock:
    rows, sources = [], []
    for o in plan["options"]:
        for market, years in o["markets"].items():
            allowed = [y for y, v in years.items() if v["allowed"]]
            refused = {y: v for y, v in years.items() if not v["allowed"]}
            reason = next(iter(refused.values()))["reason"] if refused else "-"
            rows.append(
                (
                    o["id"],
                    market,
                    ", ".join(allowed) or "none",
                    ", ".join(refused) or "none",
                    reason,
                )
            )
            rule = next((v.get("rule") for v in refused.values() if v.get("rule")), None)
            sources.append(
                (Source(market, "rule", detail=rule),)
                if rule
                else (Source(plan["coordinator"]["id"], "plan"),)
            )
    return TableBlock(
        "Markets and model years each model could be licensed for",
        ("option", "market", "model years allowed", "refused", "why"),
        tuple(rows),
        tuple(sources),
    )


def _renewals(plan: Mapping[str, Any]) -> TableBlock:
    rows, sources = [], []
    for o in plan["options"]:
        for r in o["renewals"]:
            rows.append(
                (o["id"], r["site"], r["approval"]["id"], r["renew_by"] or "-", r["valid_until"])
            )
            sources.append((Source(r["site"], "approval", detail=r["approval"]["reference"]),))
    return TableBlock(
        "Renewals falling due within the horizon",
        ("option", "site", "approval", "renew by", "valid until"),
        tuple(rows),
        tuple(sources),
        empty="none of the approvals the options rely on falls due within the horizon",
    )


def _approvals(plan: Mapping[str, Any]) -> TableBlock:
    rows, sources = [], []
    for site_id, site in plan["sites"].items():
        for a in site.get("approvals") or []:
            rows.append(
                (
                    site_id,
                    a["id"],
                    a["type"],
                    a["recipient"],
                    ", ".join(a["categories"]),
                    a["valid_from"],
                    a.get("valid_until") or "open",
                    a.get("renew_by") or "-",
                    a["status"],
                )
            )
            sources.append((Source(site_id, "approval", detail=f"{a['id']} ({a['reference']})"),))
    return TableBlock(
        "Approvals on file at each site",
        (
            "site",
            "approval",
            "type",
            "recipient",
            "categories",
            "valid from",
            "valid until",
            "renew by",
            "status",
        ),
        tuple(rows),
        tuple(sources),
        empty="no approval on file at any site",
    )
