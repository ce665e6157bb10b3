"""The ledger explorer: a site's ledger read a page at a time, filtered at the site, each entry
checked on its own, and exported as JSON and CSV from the console.

Four fresh party folders (identities exchanged, the sites' services in process): the ``ledger``
view computed at China's site itself, and read from the coordinator's console through China's
service, where its gate decides what leaves (a page naming a vehicle, even by its keyed hash,
needs an approval for remote queries; one of approvals and reads does not).
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from conftest import Services, signed_in_console
from onshore.errors import ConfigError, RequestRefused
from onshore.gate import Approval
from onshore.gate.record import add_approval
from onshore.gate.site import OpenSite
from onshore.ledger.explore import EntryQuery
from onshore.reads import compute, read
from onshore.settings import Project

CN, EU, US, COORD = "cn-shanghai", "eu-frankfurt", "us-oregon", "coordinator"
SITES = (CN, EU, US)
Parties = dict[str, Project]
NOTES = 250
VEHICLE = "9" * 64
"""A vehicle's keyed hash, as a driver's request names it in the ledger."""
AWKWARD = 'a, "quoted" value\nover two lines; café'
"""A payload value that CSV must quote and escape."""


def _approval(approval_id: str, purposes: list[str], categories: list[str]) -> Approval:
    today = datetime.now(UTC).date()
    return Approval.model_validate(
        {
            "id": approval_id,
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": "Onshore Mobility Europe GmbH",
            "categories": categories,
            "purposes": purposes,
            "max_subjects": 100_000,
            "valid_from": f"{today.year}-01-01",
            "reference": f"CAC-SA-{approval_id}",
        }
    )


def _view(project: Project, params: dict[str, Any]) -> dict[str, Any]:
    """The ``ledger`` view computed at the site itself."""
    with OpenSite.open(project) as site:
        return compute(site, "ledger", params, datetime.now(UTC).date()).as_json()


@pytest.fixture
def cn(parties: Parties, services: Services) -> Iterator[tuple[Parties, Services, int]]:
    """China's site with an approval on file, reads from abroad of two views by two users, a
    driver's request naming a vehicle and :data:`NOTES` more entries; the approval's entry."""
    _, seq = add_approval(
        parties[CN],
        CN,
        _approval("CAC-TRAINING", ["adas_training"], ["anonymized_motion"]),
    )
    coord = parties[COORD]
    for user, view in [("aud", "summary"), ("eng", "approvals"), ("aud", "approvals")]:
        answer = read(coord, CN, view, user=user, role="auditor", http=services.http(CN))
        assert answer["access"]["how"] == "gate"
    with OpenSite.open(parties[CN]) as site:
        site.ledger.append("consent_withdrawn", {"vehicle": VEHICLE, "purpose": "adas_training"})
        site.ledger.append_many(
            [("note", {"n": n, "text": AWKWARD, "by": "=HYPERLINK(1)"}) for n in range(NOTES)]
        )
    yield parties, services, seq


# -- the view, at the site ---------------------------------------------------------------------


def test_pages_run_newest_first_and_back(cn: tuple[Parties, Services, int]) -> None:
    parties, _, _ = cn
    first = _view(parties[CN], {"kind": "note"})
    assert first["total"] == NOTES and len(first["entries"]) == 100
    seqs = [e["seq"] for e in first["entries"]]
    assert seqs == sorted(seqs, reverse=True) and first["newer"] is None
    second = _view(parties[CN], {"kind": "note", "before": first["older"]})
    assert second["entries"][0]["seq"] == seqs[-1] - 1 and second["newer"] == seqs[-1] - 1
    third = _view(parties[CN], {"kind": "note", "before": second["older"]})
    assert len(third["entries"]) == NOTES - 200 and third["older"] is None
    back = _view(parties[CN], {"kind": "note", "after": second["newer"]})
    assert [e["seq"] for e in back["entries"]] == seqs
    everything = {
        e["seq"] for page in (first, second, third) for e in page["entries"] if e["kind"] == "note"
    }
    assert len(everything) == NOTES
    small = _view(parties[CN], {"kind": "note", "limit": 7})
    assert len(small["entries"]) == 7 and small["older"] == small["entries"][-1]["seq"]
    one = _view(parties[CN], {"seq": 0})
    assert [e["kind"] for e in one["entries"]] == ["genesis"] and one["total"] == 1


def test_filters_by_kind_actor_dates_view_and_reader(cn: tuple[Parties, Services, int]) -> None:
    parties, _, approval_seq = cn
    site = parties[CN]
    added = _view(site, {"kind": "approval_added"})["entries"]
    assert [e["seq"] for e in added] == [approval_seq]
    assert added[0]["payload"]["approval"]["id"] == "CAC-TRAINING"
    assert added[0]["actor"] == CN
    reads = _view(site, {"actor": COORD})["entries"]
    assert reads and {e["kind"] for e in reads} == {"remote_read"}
    assert {(e["reader"], e["view"]) for e in reads} == {
        ("aud", "summary"),
        ("eng", "approvals"),
        ("aud", "approvals"),
    }
    own = _view(site, {"actor": CN, "kind": "remote_read"})
    assert own["entries"] == [] and own["total"] == 0
    by_aud = _view(site, {"reader": "aud"})["entries"]
    assert {e["view"] for e in by_aud} == {"summary", "approvals"}
    assert [
        e["reader"] for e in _view(site, {"view": "approvals", "reader": "eng"})["entries"]
    ] == ["eng"]
    today = datetime.now(UTC).date()
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)
    assert _view(site, {"since": tomorrow.isoformat()})["entries"] == []
    assert _view(site, {"until": yesterday.isoformat()})["entries"] == []
    whole_day = _view(site, {"since": today.isoformat(), "until": today.isoformat()})
    assert whole_day["total"] == _view(site, {})["total"] >= NOTES + 6
    # A time given as until includes that instant.
    note = _view(site, {"kind": "note", "limit": 1})["entries"][0]
    at = note["time"]
    assert (
        _view(site, {"kind": "note", "until": at, "limit": 1})["entries"][0]["seq"] == note["seq"]
    )


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"since": "2026-13-01"}, "since: '2026-13-01' is not a date"),
        ({"until": "last week"}, "until: 'last week' is not a date"),
        ({"since": "2026-12-08", "until": "2026-12-07"}, "until: 2026-12-07 is not after"),
        ({"kind": "Approval"}, "kind: 'Approval' is not a ledger kind"),
        ({"before": "x"}, "before: 'x' is not an entry number"),
        ({"seq": "-1"}, "seq: '-1' is not an entry number"),
        ({"limit": "5000"}, "limit: 5000 is not between 1 and 1000"),
        ({"before": "3", "after": "1"}, "after: a page is either before an entry or after"),
        ({"view": "clips", "kind": "note"}, "view: only remote_read entries name a view"),
        ({"colour": "red"}, "colour: not a filter"),
    ],
)
def test_a_bad_filter_is_refused_naming_the_field(params: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EntryQuery.parse(params)
    assert caught.value.message.startswith(names), caught.value.message


def test_a_bad_filter_from_abroad_is_refused_as_malformed_naming_the_field(
    cn: tuple[Parties, Services, int],
) -> None:
    parties, services, _ = cn
    with pytest.raises(RequestRefused) as caught:
        read(
            parties[COORD],
            CN,
            "ledger",
            {"since": "2026-13-01"},
            user="aud",
            role="auditor",
            http=services.http(CN),
        )
    assert caught.value.reason == "malformed"
    assert "since: '2026-13-01' is not a date" in caught.value.message


def test_a_changed_byte_flags_its_entry(cn: tuple[Parties, Services, int]) -> None:
    parties, services, approval_seq = cn
    catalogue = parties[CN].root / "store" / "catalogue.sqlite"
    with sqlite3.connect(catalogue) as db:
        (payload,) = db.execute(
            "SELECT payload FROM ledger_entries WHERE site = ? AND seq = ?", (CN, approval_seq)
        ).fetchone()
        changed = payload.replace('"max_subjects":100000', '"max_subjects":900000')
        assert changed != payload and len(changed) == len(payload)
        db.execute(
            "UPDATE ledger_entries SET payload = ? WHERE site = ? AND seq = ?",
            (changed, CN, approval_seq),
        )
    page = _view(parties[CN], {"before": approval_seq + 2})["entries"]
    after, tampered = page[0], page[1]
    assert tampered["seq"] == approval_seq and tampered["payload"]["approval"]["max_subjects"] == (
        900_000
    )
    assert tampered["check"] == {
        "ok": False,
        "hash": False,
        "signature": False,
        "link": True,
        "problems": [
            "the stored hash is not the hash of the entry's fields: it was changed",
            "the signature is not the pinned key's signature of these fields",
        ],
    }
    # The entry after it still links to the hash stored before it: the change is in one entry.
    assert after["check"]["ok"]
    assert all(e["check"]["ok"] for e in page[2:])
    # From abroad, China's gate decides on no read while its ledger does not verify.
    console = _console(parties, services)
    refused = console.get(f"/ledger/{CN}/entries")
    assert 'data-allowed="false"' in refused.text and 'id="entries"' not in refused.text
    assert console.get(f"/ledger/{CN}/entries.csv").status_code == 403


def test_an_entry_that_held_a_secret_would_be_withheld(cn: tuple[Parties, Services, int]) -> None:
    parties, _, _ = cn
    hmac = _secrets(parties[CN])[0]
    with OpenSite.open(parties[CN]) as site:
        leaked = site.ledger.append("note", {"oops": hmac}).seq
    (entry,) = _view(parties[CN], {"seq": leaked})["entries"]
    assert entry["withheld"] and hmac not in orjson.dumps(entry).decode()
    assert entry["check"]["ok"], "checked on what is stored, shown without it"


# -- through the site's gate, from the coordinator's console -----------------------------------


def _console(parties: Parties, services: Services) -> TestClient:
    return signed_in_console(parties[COORD], "aud", "auditor", services=services)


def _secrets(project: Project) -> list[str]:
    with OpenSite.open(project) as site:
        keys = site.keys
        raw = keys.signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return [keys.hmac_secret.reveal().hex(), raw.hex()]


def test_an_approval_links_to_its_entry_and_exports_as_json_and_csv(
    cn: tuple[Parties, Services, int],
) -> None:
    parties, services, approval_seq = cn
    console = _console(parties, services)
    approvals = console.get("/approvals")
    link = f'href="/ledger/{CN}/entries/{approval_seq}"'
    assert approvals.status_code == 200 and link in approvals.text
    entry = console.get(f"/ledger/{CN}/entries/{approval_seq}")
    assert entry.status_code == 200, entry.text
    assert "CAC-TRAINING" in entry.text and 'data-ok="true"' in entry.text
    exported = console.get(f"/ledger/{CN}/entries.json", params={"seq": approval_seq})
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/json"
    assert exported.headers["content-disposition"].startswith('attachment; filename="cn-shanghai')
    body = orjson.loads(exported.content)
    assert body["complete"] is True and body["filters"] == {"seq": str(approval_seq)}
    (only,) = body["entries"]
    assert only["payload"]["approval"]["id"] == "CAC-TRAINING" and only["check"]["ok"]
    sheet = console.get(f"/ledger/{CN}/entries.csv", params={"seq": approval_seq})
    assert sheet.headers["content-type"].startswith("text/csv")
    header, row = list(csv.reader(io.StringIO(sheet.text)))
    assert dict(zip(header, row, strict=True))["hash"] == only["hash"]
    assert orjson.loads(dict(zip(header, row, strict=True))["payload"]) == only["payload"]


def test_an_export_pages_through_the_gate_escapes_csv_and_holds_no_secret(
    cn: tuple[Parties, Services, int],
) -> None:
    parties, services, _ = cn
    with OpenSite.open(parties[CN]) as site:
        site.ledger.append_many([("note", {"n": NOTES + n}) for n in range(900)])
    console = _console(parties, services)
    exported = console.get(f"/ledger/{CN}/entries.json", params={"kind": "note"})
    body = orjson.loads(exported.content)
    assert body["complete"] and len(body["entries"]) == NOTES + 900  # two pages of 1,000
    assert [e["seq"] for e in body["entries"]] == sorted(
        (e["seq"] for e in body["entries"]), reverse=True
    )
    sheet = console.get(f"/ledger/{CN}/entries.csv", params={"kind": "note"})
    rows = list(csv.DictReader(io.StringIO(sheet.text)))
    assert len(rows) == NOTES + 900
    awkward = [r for r in rows if "text" in orjson.loads(r["payload"])]
    assert len(awkward) == NOTES
    assert all(orjson.loads(r["payload"])["text"] == AWKWARD for r in awkward)
    assert all(orjson.loads(r["payload"])["by"] == "=HYPERLINK(1)" for r in awkward)
    assert all(r["check"] == "valid" and r["signature_ok"] == "true" for r in rows)
    for secret in _secrets(parties[CN]):
        assert secret not in exported.text and secret not in sheet.text
    # Each page was a read from abroad, decided by China's gate and recorded there.
    recorded = _view(parties[CN], {"view": "ledger", "reader": "aud"})["entries"]
    assert recorded and all(e["payload"]["allowed"] for e in recorded)


def test_a_cell_that_would_be_a_formula_is_quoted() -> None:
    from onshore.console.explorer import CSV_COLUMNS, _cell, csv_row

    row = {
        "ledger": CN,
        "seq": 3,
        "time": "2026-12-07T10:00:00.000000Z",
        "kind": "remote_read",
        "actor": COORD,
        "reader": "=cmd|' /C calc'!A0",
        "view": "clips",
        "check": {"ok": True, "hash": True, "signature": True, "link": True, "problems": []},
        "hash": "a" * 64,
        "prev_hash": "b" * 64,
        "signature": "c" * 128,
        "payload": {"reader": "=cmd|' /C calc'!A0", "note": AWKWARD},
    }
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_cell(v) for v in csv_row(row)])
    (parsed,) = list(csv.reader(io.StringIO(buffer.getvalue())))
    cells = dict(zip(CSV_COLUMNS, parsed, strict=True))
    assert cells["reader"] == "'=cmd|' /C calc'!A0"
    assert orjson.loads(cells["payload"]) == row["payload"]


def test_a_page_naming_a_vehicle_is_personal_data_to_the_gate_and_read_once_a_day(
    cn: tuple[Parties, Services, int],
) -> None:
    parties, services, _ = cn
    console = _console(parties, services)
    # The page holds the reads themselves: each read adds one, yet it is the same read.
    naming = {"kind": "remote_read,consent_withdrawn"}
    for _ in range(6):
        shown = console.get(f"/ledger/{CN}/entries", params=naming)
        assert 'data-allowed="true"' in shown.text and VEHICLE in shown.text
    reads = [
        e
        for e in _view(parties[CN], {"view": "ledger"})["entries"]
        if e["payload"]["params"] == naming
    ]
    assert len(reads) == 1, "six views of a page whose vehicles did not change: one read"
    decided = reads[0]["payload"]
    items = {i["category"]: i for i in decided["items"]}
    assert items["vehicle_id"]["subjects"] == 1
    assert items["vehicle_id"]["deid_state"] == "pseudonymized"
    # China's gate counted the vehicle as a person whose information left (under 100,000).
    assert "cn.cbdf.pi_under_100k" in [r["id"] for r in decided["decision"]["rules"]]
    plain = {"kind": "approval_added"}
    assert console.get(f"/ledger/{CN}/entries", params=plain).status_code == 200
    (approvals,) = [
        e
        for e in _view(parties[CN], {"view": "ledger"})["entries"]
        if e["payload"]["params"] == plain
    ]
    assert [i["category"] for i in approvals["payload"]["items"]] == ["aggregate_metrics"]


def test_a_bad_filter_in_the_console_says_which_and_why(
    cn: tuple[Parties, Services, int],
) -> None:
    parties, services, _ = cn
    console = _console(parties, services)
    before = len(_view(parties[CN], {"kind": "remote_read"})["entries"])
    bad = console.get(f"/ledger/{CN}/entries", params={"since": "2026-02-30", "actor": COORD})
    assert bad.status_code == 400
    assert "since: &#39;2026-02-30&#39; is not a date (YYYY-MM-DD)" in bad.text
    assert f'value="{COORD}"' in bad.text, "the form keeps what was typed"
    assert console.get(f"/ledger/{CN}/entries.csv", params={"until": "soon"}).status_code == 400
    assert console.get(f"/ledger/{CN}/entries/first").status_code == 400
    assert console.get(f"/ledger/{CN}/entries/99999").status_code == 404
    assert console.get("/ledger/mars-base/entries").status_code == 404
    after = len(_view(parties[CN], {"kind": "remote_read"})["entries"])
    assert after == before + 1, "the one well-formed query was read; bad filters never left"


def test_a_site_operator_explores_their_own_site_only(cn: tuple[Parties, Services, int]) -> None:
    parties, _, _ = cn
    console = signed_in_console(parties[CN], "op-cn", "site-operator", site=CN)
    own = console.get(f"/ledger/{CN}/entries", params={"kind": "consent_withdrawn"})
    assert own.status_code == 200 and VEHICLE in own.text, "their own site, no gate between"
    assert 'class="access' not in own.text
    assert console.get(f"/ledger/{US}/entries").status_code == 403
    assert console.get(f"/ledger/{COORD}/entries").status_code == 404, "not in a site's folder"
