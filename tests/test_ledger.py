"""The ledger: signed, hash-chained entries per site; any change to them is caught by ``verify``,
by the site's own rows or by the heads its peers recorded; concurrent appenders never fork the
chain; store and ledger agree.

The tamper property test runs ONSHORE_TAMPER_EXAMPLES random mutations (default 300) of the
stored rows, each inside a transaction that is rolled back, so one built history serves them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from onshore.cli.app import app
from onshore.errors import LedgerError, LedgerTampered
from onshore.gate.audit import verify_site
from onshore.ledger import (
    RECEIVED_DIR,
    Entry,
    Head,
    Ledger,
    VerifyReport,
    canonical_json,
    fingerprint,
    verify,
)
from onshore.ledger.chain import entries_table, genesis_payload, heads_table
from onshore.ledger.entry import GENESIS_PREV_HASH, SIGNATURE_CONTEXT, entry_bytes
from onshore.settings import Project
from onshore.sites.keystore import SiteKeys, create_keystore, load_keystore
from onshore.store import SiteStore
from onshore.store.catalogue import Catalogue
from onshore.store.objects import ObjectStore, sha256

TAMPER_EXAMPLES = int(os.environ.get("ONSHORE_TAMPER_EXAMPLES", "300"))


@dataclass
class Site:
    catalogue: Catalogue
    keys: SiteKeys
    ledger: Ledger

    @property
    def site(self) -> str:
        return self.catalogue.site


def _site(url: str, site: str, keys: SiteKeys) -> Site:
    catalogue = Catalogue(url, site)
    return Site(catalogue, keys, Ledger.open(catalogue, keys))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def pair(db_url: str, tmp_path: Path) -> Iterator[tuple[Site, Site]]:
    """Two sites, each with its own keys; on PostgreSQL they share one database, apart by site
    id (fresh ids per test keep tests apart there)."""
    tag = uuid.uuid4().hex[:8]
    a = _site(db_url, f"cn-{tag}", create_keystore(tmp_path / "keys-a"))
    b = _site(db_url, f"us-{tag}", create_keystore(tmp_path / "keys-b"))
    yield a, b
    a.catalogue.close()
    b.catalogue.close()


def _check(
    site: Site, *, peers: tuple[Site, ...] = (), conn: Connection | None = None
) -> VerifyReport:
    return verify(
        site.ledger,
        peers=[p.ledger for p in peers],
        current_key=site.keys.public_key,
        conn=conn,
    )


# -- the format -----------------------------------------------------------------------------


def test_append_read_verify_round_trip(pair: tuple[Site, Site]) -> None:
    a, _ = pair
    first = a.ledger.append("gate_decision", {"allowed": False, "reasons": ["no approval"]})
    a.ledger.append_many([("model_update", {"round": r, "norm": 0.5 + r}) for r in range(3)])
    a.ledger.append("release", {"model": "forecast-1", "ümlaut": "ok"})
    entries = a.ledger.entries()
    assert [e.seq for e in entries] == list(range(6))
    assert [e.kind for e in entries] == [
        "genesis",
        "gate_decision",
        *["model_update"] * 3,
        "release",
    ]
    assert entries[1] == first and first.data == {"allowed": False, "reasons": ["no approval"]}
    assert entries[0].data == genesis_payload(a.site, a.keys.public_key)
    assert [e.seq for e in a.ledger.entries(since=2, kind="model_update")] == [2, 3, 4]
    assert [e.seq for e in a.ledger.entries(since=1, limit=2)] == [1, 2]
    assert a.ledger.entries(since_time=entries[-1].timestamp) == [entries[-1]]
    assert a.ledger.entries(since_time=entries[-1].timestamp + timedelta(microseconds=1)) == []
    assert a.ledger.entry(99) is None
    head = a.ledger.head()
    assert head == Head(a.site, 5, entries[-1].hash, fingerprint(a.keys.public_key))
    report = _check(a)
    assert report.ok, report.problems
    assert (report.entries, report.head) == (6, head)


def test_entry_format_is_recomputable_without_onshore(pair: tuple[Site, Site]) -> None:
    """The documented format, recomputed with the standard library alone: hash over the sorted,
    whitespace-free JSON of every field but hash and signature; Ed25519 over a context and the
    hash; each entry links to the one before."""
    a, _ = pair
    a.ledger.append(
        "transfer_out", {"objects": [{"path": "clips/x", "sha256": "0" * 64}], "n": 1.5}
    )
    prev = GENESIS_PREV_HASH
    for entry in a.ledger.entries():
        fields = {
            "site": entry.site,
            "seq": entry.seq,
            "time": entry.time,
            "kind": entry.kind,
            "payload": json.loads(entry.payload),
            "prev_hash": entry.prev_hash,
        }
        encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(encoded.encode()).digest()
        assert encoded.encode() == entry.encoded()
        assert entry.hash == digest.hex() and entry.prev_hash == prev
        a.keys.public_key.verify(bytes.fromhex(entry.signature), SIGNATURE_CONTEXT + digest)
        assert entry.time.endswith("Z") and entry.timestamp.tzinfo is not None
        prev = entry.hash


def test_canonical_json() -> None:
    assert canonical_json({"b": [1, {"d": 2, "c": None}], "a": "é"}) == (
        '{"a":"é","b":[1,{"c":null,"d":2}]}'
    )
    # Damaged rows are encoded as JSON too, whatever their fields hold.
    for site, kind, time_ in (("cn-shanghai", "gate_decision", "t"), ('a"b\\', "é\n", "\x00")):
        fields = {"site": site, "seq": -1, "time": time_, "kind": kind, "payload": {"a": 1}}
        expected = json.dumps(
            {**fields, "prev_hash": ""}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert entry_bytes(site, -1, time_, kind, '{"a":1}', "") == expected.encode()
    for bad in ({"x": float("nan")}, {"x": [float("inf")]}, {1: "a"}, {"x": object()}):
        with pytest.raises(LedgerError):
            canonical_json(bad)  # type: ignore[arg-type]


def test_refuses_what_it_cannot_sign(pair: tuple[Site, Site]) -> None:
    a, _ = pair
    for kind in ("Gate", "gate-decision", "", "genesis", "x" * 70, "gate\n"):
        with pytest.raises(LedgerError):
            a.ledger.append(kind, {})
    with pytest.raises(LedgerError):
        a.ledger.append("gate_decision", ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(LedgerError):
        a.ledger.append("gate_decision", {"subjects": float("nan")})
    with pytest.raises(LedgerError, match="its own head"):
        a.ledger.record_peer_head(_head(a))
    with pytest.raises(LedgerError, match="without its keys"):
        Ledger.open(a.catalogue).append("gate_decision", {})
    assert len(a.ledger.entries()) == 1  # nothing was written by any of these


def test_genesis_once_and_only_under_its_own_key(pair: tuple[Site, Site]) -> None:
    a, b = pair
    again = Ledger.open(a.catalogue, a.keys)
    assert [e.kind for e in again.entries()] == ["genesis"]
    with pytest.raises(LedgerTampered, match="pins key"):
        Ledger.open(a.catalogue, b.keys)
    # Opening read-only never starts a ledger: a deleted one must not quietly come back.
    nobody = Catalogue(_url(a.catalogue), f"nobody-{uuid.uuid4().hex[:8]}")
    assert Ledger.open(nobody).head() is None and Ledger.open(nobody).entries() == []
    nobody.close()


def _url(catalogue: Catalogue) -> str:
    return catalogue.engine.url.render_as_string(hide_password=False)


def test_append_joins_the_callers_transaction(pair: tuple[Site, Site]) -> None:
    """A transfer registers what arrived and writes its entry in one transaction: both commit,
    or neither does."""
    a, _ = pair
    add_vehicle = text("insert into vehicles (site, vin, vehicle_model) values (:s, :v, 'Sedan')")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), a.catalogue.transaction() as conn:
        conn.execute(add_vehicle, {"s": a.site, "v": "LSVAB12C2SS140891"})
        a.ledger.append("transfer_in", {"vin": "LSVAB12C2SS140891"}, conn=conn)
        raise Boom
    assert a.catalogue.inventory()["vehicles"] == 0
    assert [e.kind for e in a.ledger.entries()] == ["genesis"]

    with a.catalogue.transaction() as conn:
        conn.execute(add_vehicle, {"s": a.site, "v": "LSVAB12C2SS140891"})
        entry = a.ledger.append("transfer_in", {"vin": "LSVAB12C2SS140891"}, conn=conn)
        assert a.ledger.head(conn=conn) == entry.head(fingerprint(a.keys.public_key))
    assert a.catalogue.inventory()["vehicles"] == 1
    assert a.ledger.entries()[-1] == entry
    assert _check(a).ok


# -- concurrency ----------------------------------------------------------------------------

_APPENDER = """
import sys, time
from pathlib import Path
from onshore.ledger import Ledger
from onshore.sites.keystore import load_keystore
from onshore.store.catalogue import Catalogue

url, site, keys, go, me, n = sys.argv[1:]
ledger = Ledger.open(Catalogue(url, site), load_keystore(Path(keys)))
Path(go + "." + me).touch()
while not Path(go).exists():
    time.sleep(0.001)
for i in range(int(n)):
    ledger.append("gate_decision", {"writer": me, "i": i})
    time.sleep(0.002 * (i % 3))  # let the other writer in: SQLite's busy wait backs off
"""


@pytest.mark.slow
def test_two_processes_appending_at_once_make_one_chain(
    pair: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _ = pair
    keys = tmp_path / "keys-a"
    go = tmp_path / "go"
    url = _url(a.catalogue)
    n = 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _APPENDER, url, a.site, str(keys), str(go), me, str(n)],
            stderr=subprocess.PIPE,
        )
        for me in ("p", "q")
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{me}").exists() for me in ("p", "q")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()  # both have opened the ledger: let them append at the same moment
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    entries = a.ledger.entries()
    assert [e.seq for e in entries] == list(range(2 * n + 1))
    assert len({e.prev_hash for e in entries}) == len(entries)  # no two entries share a parent
    writers = [e.data["writer"] for e in entries[1:]]
    assert sorted(writers) == ["p"] * n + ["q"] * n
    for me in ("p", "q"):
        assert [e.data["i"] for e in entries[1:] if e.data["writer"] == me] == list(range(n))
    report = _check(a)
    assert report.ok, report.problems


# -- tampering ------------------------------------------------------------------------------


@dataclass
class World:
    """Two sites that exchanged things: B recorded A's head at A's entries 4 and 7."""

    a: Site
    b: Site
    recorded: int = 7


def _build_world(root: Path) -> World:
    a = _site(f"sqlite:///{root / 'a.sqlite'}", "cn-shanghai", create_keystore(root / "keys-a"))
    b = _site(f"sqlite:///{root / 'b.sqlite'}", "us-oregon", create_keystore(root / "keys-b"))
    for i in range(3):
        a.ledger.append("gate_decision", {"allowed": i % 2 == 0, "reasons": [f"rule {i}"]})
    a.ledger.append(
        "transfer_out",
        {"objects": [{"path": "clips/00/x.parquet", "sha256": "1" * 64}]},
        peer_heads=[_head(b)],
    )
    b.ledger.append("transfer_in", {"from": a.site}, peer_heads=[_head(a)])
    a.ledger.append_many([("model_update", {"round": r}) for r in range(2)])
    a.ledger.record_peer_head(_head(b))
    b.ledger.record_peer_head(_head(a))
    for i in range(3):
        a.ledger.append("gate_decision", {"allowed": False, "n": i})
    return World(a, b)


def _head(site: Site) -> Head:
    head = site.ledger.head()
    assert head is not None
    return head


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = _build_world(tmp_path_factory.mktemp("ledger-world"))
    assert _check(w.a, peers=(w.b,)).ok and _check(w.b, peers=(w.a,)).ok
    yield w
    w.a.catalogue.close()
    w.b.catalogue.close()


_FIELDS = ("site", "seq", "time", "kind", "payload", "prev_hash", "hash", "signature")


def _rows(conn: Connection, site: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(entries_table).where(entries_table.c.site == site).order_by(entries_table.c.seq)
    ).all()
    return [dict(r._mapping) for r in rows]


def _sign(key: Ed25519PrivateKey, row: dict[str, Any]) -> None:
    """Give ``row`` the hash of its fields and ``key``'s signature, as an attacker with that key
    would."""
    digest = hashlib.sha256(
        entry_bytes(
            row["site"], row["seq"], row["time"], row["kind"], row["payload"], row["prev_hash"]
        )
    ).digest()
    row["hash"] = digest.hex()
    row["signature"] = key.sign(SIGNATURE_CONTEXT + digest).hex()


def _rewrite(conn: Connection, site: str, rows: list[dict[str, Any]]) -> None:
    """Replace a site's rows and head with ``rows``, chained and all: a thorough forger."""
    conn.execute(delete(entries_table).where(entries_table.c.site == site))
    if rows:
        conn.execute(insert(entries_table), rows)
    conn.execute(
        update(heads_table)
        .where(heads_table.c.site == site)
        .values(seq=rows[-1]["seq"] if rows else 0, hash=rows[-1]["hash"] if rows else "0" * 64)
    )


def _relink_from(rows: list[dict[str, Any]], start: int, key: Ed25519PrivateKey) -> None:
    for i in range(start, len(rows)):
        if i > 0:
            rows[i]["prev_hash"] = rows[i - 1]["hash"]
        _sign(key, rows[i])


def _flip(value: str, index: int, mask: int) -> str:
    raw = bytearray(value.encode())
    raw[index % len(raw)] ^= mask
    return raw.decode("utf-8", errors="replace")


MUTATIONS = (
    "flip_byte",
    "flip_head",
    "delete",
    "reorder",
    "truncate",
    "append_forged",
    "forge_signature",
    "resign_with_new_key",
    "swap_key",
    "rewrite_with_own_key",
    "truncate_and_fix_head",
)


def _mutate(conn: Connection, w: World, data: st.DataObject) -> str:
    """Apply one random mutation to site A's stored ledger; returns what was done."""
    site = w.a.site
    rows = _rows(conn, site)
    n = len(rows)
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    pick = data.draw(st.integers(0, n - 1), label="entry")
    row = rows[pick]
    where = (entries_table.c.site == site) & (entries_table.c.seq == row["seq"])
    # The forger's key and random signatures are drawn too, so that hypothesis counts each
    # forgery as a new example rather than replaying the few ways to pick an entry.
    key_bytes = st.binary(min_size=32, max_size=32)
    other_key = Ed25519PrivateKey.from_private_bytes(data.draw(key_bytes, label="forger's key"))
    random_signature = st.binary(min_size=64, max_size=64).map(bytes.hex)
    real_key = w.a.keys.signing_key
    if kind == "flip_byte":
        field = data.draw(st.sampled_from(_FIELDS), label="field")
        if field == "seq":  # a byte of the stored 64-bit signed integer
            raw = bytearray(struct.pack(">q", row["seq"]))
            raw[data.draw(st.integers(0, 7), label="byte")] ^= data.draw(st.integers(1, 255))
            new: Any = struct.unpack(">q", raw)[0]
        else:
            new = _flip(
                row[field], data.draw(st.integers(0, 10_000)), data.draw(st.integers(1, 255))
            )
        assume(new != row[field])
        try:
            conn.execute(update(entries_table).where(where).values({field: new}))
        except IntegrityError:
            assume(False)  # the new seq is taken: that mutation is a reorder, drawn elsewhere
        return f"{kind}: flip {field} of entry {row['seq']}"
    if kind == "flip_head":
        head = conn.execute(select(heads_table).where(heads_table.c.site == site)).one()
        if data.draw(st.booleans(), label="seq?"):
            values: dict[str, Any] = {"seq": head.seq ^ data.draw(st.integers(1, 255))}
        else:
            values = {
                "hash": _flip(
                    head.hash, data.draw(st.integers(0, 63)), data.draw(st.integers(1, 255))
                )
            }
        conn.execute(update(heads_table).where(heads_table.c.site == site).values(values))
        return f"{kind}: flip head {values}"
    if kind == "delete":
        conn.execute(delete(entries_table).where(where))
        return f"{kind}: delete entry {row['seq']}"
    if kind == "reorder":
        other = data.draw(st.integers(0, n - 2), label="other")
        other += other >= pick  # any entry but the one picked
        order = list(range(n))
        order[pick], order[other] = order[other], order[pick]
        swapped = [{**rows[j], "seq": rows[i]["seq"]} for i, j in enumerate(order)]
        conn.execute(delete(entries_table).where(entries_table.c.site == site))
        conn.execute(insert(entries_table), swapped)
        return f"{kind}: swap entries {pick} and {other}"
    if kind == "truncate":
        conn.execute(
            delete(entries_table).where(entries_table.c.site == site, entries_table.c.seq >= pick)
        )
        return f"{kind}: truncate from {pick}"
    if kind == "append_forged":
        forged = {
            "site": site,
            "seq": n,
            "time": rows[-1]["time"],
            "kind": "transfer_out",
            "payload": '{"objects":[]}',
            "prev_hash": rows[-1]["hash"],
        }
        _sign(other_key, forged)
        if data.draw(st.booleans(), label="random signature?"):
            forged["signature"] = data.draw(random_signature)
        conn.execute(insert(entries_table).values(forged))
        conn.execute(
            update(heads_table).where(heads_table.c.site == site).values(seq=n, hash=forged["hash"])
        )
        return f"{kind}: append forged entry"
    if kind == "forge_signature":
        signed = dict(row)
        _sign(other_key, signed)
        sig = signed["signature"] if data.draw(st.booleans()) else data.draw(random_signature)
        conn.execute(update(entries_table).where(where).values(signature=sig))
        return f"{kind}: forge signature of entry {row['seq']}"
    if kind == "resign_with_new_key":
        for r in rows:
            _sign(other_key, r)
        _rewrite(conn, site, rows)
        return f"{kind}: re-sign every entry with another key"
    if kind == "swap_key":
        rows[0]["payload"] = canonical_json(genesis_payload(site, other_key.public_key()))
        _relink_from(rows, 0, other_key)
        _rewrite(conn, site, rows)
        return f"{kind}: swap the site's key and re-sign its whole history"
    if kind == "rewrite_with_own_key":
        at = data.draw(st.integers(1, w.recorded), label="rewritten")
        rows[at]["payload"] = canonical_json({"allowed": True, "forged": at})
        _relink_from(rows, at, real_key)
        _rewrite(conn, site, rows)
        return f"{kind}: rewrite entry {at} and re-sign the rest with the site's own key"
    assert kind == "truncate_and_fix_head"
    at = data.draw(st.integers(1, w.recorded), label="cut")
    _rewrite(conn, site, rows[:at])
    return f"{kind}: cut the history at entry {at} and fix the head"


@settings(
    max_examples=TAMPER_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_any_change_to_the_ledger_is_caught(world: World, data: st.DataObject) -> None:
    with world.a.catalogue.engine.connect() as conn:
        tx = conn.begin()
        try:
            what = _mutate(conn, world, data)
            event(what.split(":")[0])
            report = _check(world.a, peers=(world.b,), conn=conn)
            assert not report.ok, f"verify missed: {what}"
        finally:
            tx.rollback()
    # Every example starts from the intact history.


def _set(seq: int, **values: Any) -> Any:
    def mutate(conn: Connection, site: str, rows: list[dict[str, Any]]) -> None:
        conn.execute(
            update(entries_table)
            .where(entries_table.c.site == site, entries_table.c.seq == seq)
            .values(**{k: v(rows[seq]) if callable(v) else v for k, v in values.items()})
        )

    return mutate


def _drop(*seqs: int) -> Any:
    def mutate(conn: Connection, site: str, rows: list[dict[str, Any]]) -> None:
        conn.execute(
            delete(entries_table).where(entries_table.c.site == site, entries_table.c.seq.in_(seqs))
        )

    return mutate


def _swap(i: int, j: int) -> Any:
    def mutate(conn: Connection, site: str, rows: list[dict[str, Any]]) -> None:
        conn.execute(delete(entries_table).where(entries_table.c.site == site))
        rows[i]["seq"], rows[j]["seq"] = j, i
        conn.execute(insert(entries_table), rows)

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            _set(3, payload=lambda r: r["payload"].replace("true", "false")),
            {(3, "hash"), (3, "signature")},
        ),
        (
            _set(5, time=lambda r: r["time"].replace(".", ",")),
            {(5, "format"), (5, "hash"), (5, "signature")},
        ),
        (_set(2, prev_hash="0" * 64), {(2, "link"), (2, "hash"), (2, "signature")}),
        (_set(6, hash="0" * 64), {(6, "hash"), (7, "link")}),
        (_set(6, signature=lambda r: r["signature"].upper()), {(6, "signature")}),
        (
            _set(8, payload=lambda r: r["payload"].replace(":", ": ")),
            {(8, "payload"), (8, "hash"), (8, "signature")},
        ),
        (
            _set(0, kind="gate_decision"),
            {(0, "genesis"), (0, "format"), (0, "hash"), (0, "signature")},
        ),
        (_drop(5), {(5, "sequence")}),
        (_drop(0), {(0, "sequence")}),
        (_drop(9, 10), {(8, "head")}),
        (
            _swap(2, 3),
            {
                (2, "link"),
                (2, "hash"),
                (2, "signature"),
                (3, "link"),
                (3, "hash"),
                (3, "signature"),
                (4, "link"),
            },
        ),
    ],
    ids=[
        "payload",
        "time",
        "prev_hash",
        "hash",
        "signature-case",
        "non-canonical",
        "kind",
        "delete",
        "delete-genesis",
        "truncate",
        "reorder",
    ],
)
def test_each_kind_of_change_is_named_where_it_is(
    world: World, mutate: Any, expected: set[tuple[int, str]]
) -> None:
    with world.a.catalogue.engine.connect() as conn:
        tx = conn.begin()
        try:
            mutate(conn, world.a.site, _rows(conn, world.a.site))
            report = _check(world.a, conn=conn)
        finally:
            tx.rollback()
    assert {(p.seq, p.check) for p in report.problems} == expected, report.problems


def _committed(w: World, mutate: Any) -> None:
    with w.a.catalogue.engine.begin() as conn:
        rows = _rows(conn, w.a.site)
        mutate(conn, rows)


@pytest.fixture
def fresh_world(tmp_path: Path) -> Iterator[World]:
    w = _build_world(tmp_path)
    yield w
    w.a.catalogue.close()
    w.b.catalogue.close()


def test_a_full_key_swap_is_caught_by_the_keystore_and_by_peers(fresh_world: World) -> None:
    w = fresh_world
    new_key = Ed25519PrivateKey.generate()

    def swap(conn: Connection, rows: list[dict[str, Any]]) -> None:
        rows[0]["payload"] = canonical_json(genesis_payload(w.a.site, new_key.public_key()))
        _relink_from(rows, 0, new_key)
        _rewrite(conn, w.a.site, rows)

    _committed(w, swap)
    # The rows alone now hold together under the new key: only anchors outside them can tell.
    assert verify(w.a.ledger).ok
    by_keystore = verify(w.a.ledger, current_key=w.a.keys.public_key)
    assert [p.check for p in by_keystore.problems] == ["key"]
    by_peer = verify(w.a.ledger, peers=[w.b.ledger])
    assert {p.check for p in by_peer.problems} == {"key", "peer_head"}
    assert all(p.site == w.a.site for p in by_peer.problems)
    assert "swapped" in " ".join(p.reason for p in by_peer.problems)
    # Verifying the peer finds the same thing: B's records of A no longer match A.
    assert not verify(w.b.ledger, peers=[w.a.ledger]).ok


def test_a_site_rewriting_its_own_signed_history_is_caught_by_its_peer(fresh_world: World) -> None:
    w = fresh_world

    def rewrite(conn: Connection, rows: list[dict[str, Any]]) -> None:
        rows[2]["payload"] = canonical_json({"allowed": True, "reasons": []})
        _relink_from(rows, 2, w.a.keys.signing_key)
        _rewrite(conn, w.a.site, rows)

    _committed(w, rewrite)
    assert _check(w.a).ok  # its own key signed the new history
    report = _check(w.a, peers=(w.b,))
    assert {(p.site, p.seq, p.check) for p in report.problems} == {
        (w.a.site, 4, "peer_head"),
        (w.a.site, 7, "peer_head"),
    }
    assert "rewrote its history" in report.problems[0].reason


def test_a_peer_rewriting_its_history_is_caught_when_verifying_this_site(
    fresh_world: World,
) -> None:
    w = fresh_world
    with w.b.catalogue.engine.begin() as conn:
        rows = _rows(conn, w.b.site)
        _rewrite(conn, w.b.site, rows[:1])  # B drops everything after its genesis
    report = _check(w.a, peers=(w.b,))
    assert report.problems and all(p.site == w.b.site for p in report.problems)
    assert {p.check for p in report.problems} == {"peer_head"}
    assert "truncated" in report.problems[0].reason


def test_truncating_and_fixing_the_head_is_caught_only_up_to_the_recorded_head(
    fresh_world: World,
) -> None:
    w = fresh_world
    _committed(w, lambda conn, rows: _rewrite(conn, w.a.site, rows[:-2]))
    # Entries 9 and 10 came after the last head B recorded: nothing outside A vouched for them.
    assert _check(w.a, peers=(w.b,)).ok
    _committed(w, lambda conn, rows: _rewrite(conn, w.a.site, rows[:6]))
    report = _check(w.a, peers=(w.b,))
    assert [(p.seq, p.check) for p in report.problems] == [(7, "peer_head")]


def test_a_forged_record_of_a_peer_is_not_held_against_it(fresh_world: World) -> None:
    """A site cannot frame its peer: a record the peer did not sign is reported, not used."""
    w = fresh_world
    with w.b.catalogue.engine.begin() as conn:
        rows = _rows(conn, w.b.site)
        payload = json.loads(rows[-1]["payload"])
        payload["peer_heads"][0]["hash"] = "f" * 64
        conn.execute(
            update(entries_table)
            .where(entries_table.c.site == w.b.site, entries_table.c.seq == rows[-1]["seq"])
            .values(payload=canonical_json(payload))
        )
    report = _check(w.a, peers=(w.b,))
    assert [(p.site, p.check) for p in report.problems] == [(w.b.site, "peer_head")]
    assert "not used" in report.problems[0].reason


def test_peer_heads_of_sites_out_of_reach_are_noted(fresh_world: World) -> None:
    report = _check(fresh_world.a)
    assert report.ok and report.peers == () and report.peer_heads == 0
    assert any(fresh_world.b.site in note for note in report.notes)


# -- store and ledger agree -----------------------------------------------------------------


def _open(project: Project, site: str) -> tuple[SiteStore, Ledger]:
    store = SiteStore.open(project, site)
    keys = load_keystore(project.keystore_path(project.site(site)))
    return store, Ledger.open(store.catalogue, keys)


def _receive(store: SiteStore, ledger: Ledger, name: str, data: bytes) -> str:
    path = f"{RECEIVED_DIR}/{name}"
    store.objects.receive([(path, data)])
    ledger.append("transfer_in", {"objects": [{"path": path, "sha256": sha256(data)}]})
    return path


def test_store_and_ledger_agree(project: Project) -> None:
    store, ledger = _open(project, "us-oregon")
    with store:
        path = _receive(store, ledger, "cn-shanghai/a.parquet", b"clip a")
        own = store.objects.put("models/m.safetensors", b"weights")
        ledger.append(
            "model_update", {"objects": [{"path": own.path, "sha256": sha256(b"weights")}]}
        )
        report = verify_site(project, "us-oregon")
        assert report.ok, report.problems
        assert (report.objects, report.received) == (2, 1)
        assert report.peers == ("cn-shanghai", "eu-frankfurt")

        # Something lands under received/ without an entry.
        store.objects.receive([(f"{RECEIVED_DIR}/cn-shanghai/b.parquet", b"clip b")])
        # A received object is changed, and a listed one disappears.
        _overwrite(store.objects, path, b"clip A")
        store.objects.delete(own.path)
        problems = verify_site(project, "us-oregon").problems
        assert sorted((p.check, p.seq) for p in problems) == [
            ("object", 1),
            ("object", 2),
            ("received", None),
        ]
        assert "no transfer_in entry lists it" in next(
            p.reason for p in problems if p.check == "received"
        )
        # Without re-hashing, the changed object passes; the missing one does not.
        shallow = verify_site(project, "us-oregon", check_hashes=False).problems
        assert sorted((p.check, p.seq) for p in shallow) == [("object", 2), ("received", None)]


def test_transfer_in_must_list_received_paths(project: Project) -> None:
    store, ledger = _open(project, "eu-frankfurt")
    with store:
        stored = store.objects.put("clips/00/x.parquet", b"x")
        ledger.append("transfer_in", {"objects": [{"path": stored.path, "sha256": sha256(b"x")}]})
        ledger.append("transfer_out", {"objects": [{"path": "clips/1", "sha256": "nothex"}]})
        problems = verify_site(project, "eu-frankfurt").problems
    assert [(p.seq, p.check) for p in problems] == [(1, "received"), (2, "payload")]


def _overwrite(objects: ObjectStore, path: str, data: bytes) -> None:
    objects.delete(path)
    if path.startswith(f"{RECEIVED_DIR}/"):
        objects.receive([(path, data)])
    else:
        objects.put(path, data)


# -- the command line -----------------------------------------------------------------------


def test_cli_show_and_verify(project: Project) -> None:
    runner = CliRunner()
    cn, cn_ledger = _open(project, "cn-shanghai")
    us, us_ledger = _open(project, "us-oregon")
    with cn, us:
        cn_ledger.append("transfer_out", {"n": 1}, peer_heads=[_ledger_head(us_ledger)])
        _receive(us, us_ledger, "cn/a", b"a")
        us_ledger.record_peer_head(_ledger_head(cn_ledger))
    base = ["--project", str(project.root), "--json"]

    shown = runner.invoke(
        app, ["ledger", "show", "--site", "us-oregon", "--kind", "transfer_in", *base]
    )
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert [e["kind"] for e in data["entries"]] == ["transfer_in"]
    assert (
        data["head"]["seq"] == 2
        and data["entries"][0]["payload"]["objects"][0]["path"] == "received/cn/a"
    )
    since = json.loads(
        runner.invoke(app, ["ledger", "show", "--site", "us-oregon", "--since", "2", *base]).stdout
    )
    assert [e["seq"] for e in since["entries"]] == [2]

    checked = runner.invoke(app, ["ledger", "verify", "--site", "us-oregon", *base])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["ok"] is True

    us.objects.receive([(f"{RECEIVED_DIR}/stray", b"?")])
    failed = runner.invoke(app, ["ledger", "verify", "--site", "us-oregon", *base])
    assert failed.exit_code == LedgerTampered.exit_code
    report = json.loads(failed.stdout)
    assert report["ok"] is False and report["problems"][0]["check"] == "received"
    people = runner.invoke(
        app, ["ledger", "verify", "--site", "us-oregon", "--project", str(project.root)]
    )
    assert people.exit_code == LedgerTampered.exit_code and "received/stray" in people.stdout


def _ledger_head(ledger: Ledger) -> Head:
    head = ledger.head()
    assert head is not None
    return head


def test_entry_as_dict_round_trips(pair: tuple[Site, Site]) -> None:
    a, _ = pair
    entry = a.ledger.append("release", {"model": "m"})
    d = entry.as_dict()
    assert d["payload"] == {"model": "m"}
    assert Entry(**{**d, "payload": canonical_json(d["payload"])}) == entry


def test_cli_shows_a_damaged_ledger(project: Project) -> None:
    """``show`` is how a damaged ledger gets looked at, so it must not fail on one."""
    store, ledger = _open(project, "cn-shanghai")
    with store:
        ledger.append("gate_decision", {"allowed": False})
        with store.catalogue.transaction() as conn:
            conn.execute(delete(entries_table).where(entries_table.c.seq == 0))
            conn.execute(update(entries_table).values(payload="{not json"))
    base = ["--project", str(project.root), "--site", "cn-shanghai"]
    shown = CliRunner().invoke(app, ["ledger", "show", *base, "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["head"] is None and "no genesis" in data["warning"]
    assert [(e["seq"], e["payload"]) for e in data["entries"]] == [(1, "{not json")]
    people = CliRunner().invoke(app, ["ledger", "show", *base])
    assert people.exit_code == 0 and "ledger verify" in people.stdout
