"""Parties: identities exchanged and checked; every message signed, and each bad one refused with
a reason, recorded where it arrived, losing nothing (a stranger, a wrong key, a replay, a clock
minutes off, a body changed, an object whose bytes do not match its hash, an oversized body, a
sender stopping mid-stream, an unknown or expired certificate at the TLS layer); witnessing that
catches a party rewriting its history; reads from abroad recorded once a day and their persons
counted once. In-process apps for the message checks, real processes over TLS for the rest."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Services, make_parties, serve_party, stop_party, write_clips
from onshore.deidentify import deidentify_site, resolve_profile
from onshore.errors import (
    ConfigError,
    IdentityInvalid,
    PeerUnreachable,
    RequestRefused,
)
from onshore.gate import Approval
from onshore.gate.audit import verify_party
from onshore.gate.record import add_approval
from onshore.ingest import ingest
from onshore.ledger import Ledger
from onshore.parties.client import PeerClient
from onshore.parties.identity import (
    LocalParty,
    export_identity,
    load_peers,
    read_identity,
    trust_peer,
)
from onshore.parties.messages import new_stamp, seal
from onshore.parties.witness import witness_peers
from onshore.reads import read
from onshore.settings import Project
from onshore.sites.keystore import SiteKeys, create_keystore
from onshore.store import SiteStore
from onshore.transfer import transfer

CN, EU, US, COORD = "cn-shanghai", "eu-frankfurt", "us-oregon", "coordinator"
DAY = dt.date(2026, 11, 29)
Parties = dict[str, Project]


def _entries(project: Project, kind: str) -> list[dict[str, Any]]:
    with SiteStore.open(project) as site:
        return [e.data for e in Ledger.open(site.catalogue).entries(kind=kind)]


# -- identities ----------------------------------------------------------------------------------


def test_an_identity_is_signed_by_the_key_it_names(parties: Parties, tmp_path: Path) -> None:
    exported = export_identity(parties[CN])
    identity = read_identity(orjson.dumps(exported))
    assert identity.id == CN and identity.role == "site" and identity.jurisdiction == "CN"
    assert identity.node_key and identity.tls_certificate.startswith("-----BEGIN CERTIFICATE")
    assert "PRIVATE" not in orjson.dumps(exported).decode()  # nothing secret in it
    altered = {**exported, "identity": {**exported["identity"], "entity": "Someone Else Ltd."}}
    with pytest.raises(IdentityInvalid, match="changed after it was exported"):
        read_identity(orjson.dumps(altered))
    with pytest.raises(IdentityInvalid, match="not JSON"):
        read_identity(b"{")
    # Each party has every other's identity on file, and trusts nothing else.
    assert sorted(load_peers(parties[CN])) == [COORD, EU, US]
    with pytest.raises(ConfigError, match="this party itself"):
        trust_peer(parties[CN], orjson.dumps(exported))
    # The same party with another key is not taken silently for the one on file.
    other = make_parties(tmp_path / "other")
    stranger = orjson.dumps(export_identity(other[US]))
    with pytest.raises(ConfigError, match="another key"):
        trust_peer(parties[CN], stranger)
    trust_peer(parties[CN], stranger, replace=True)
    assert load_peers(parties[CN])[US].ledger_key == read_identity(stranger).ledger_key


def test_a_party_folder_holds_no_other_party_s_secrets(parties: Parties) -> None:
    for party, project in parties.items():
        files = {p.name for p in (project.root / "keys").iterdir()}
        assert {"ed25519.key", "hmac.secret", "tls.key"} <= files
        for other in parties:
            if other != party:
                assert not (project.root / other).exists()
        for path in (project.root / "peers").glob("*.json"):
            text = path.read_text()
            assert "PRIVATE KEY" not in text and "hmac" not in text


# -- signed messages, in process ---------------------------------------------------------------


def _post(
    services: Services,
    to: str,
    kind: str,
    path: str,
    body: dict[str, Any],
    *,
    sender: str = EU,
    keys: SiteKeys | None = None,
    recipient: str | None = None,
    at: dt.datetime | None = None,
    alter: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    stamp = new_stamp(sender, recipient or to, kind, content, head=None, now=at)
    signer = keys or LocalParty.of(services.parties[sender]).keys()
    sealed = headers or seal(stamp, signer)
    return services.http(to).post(  # type: ignore[no-any-return]
        path, content=alter or content, headers={**sealed, "content-type": "application/json"}
    )


def _refused(project: Project) -> list[str]:
    return [str(e["reason"]) for e in _entries(project, "request_refused")]


def test_each_bad_message_is_refused_with_its_reason_and_recorded(
    parties: Parties, services: Services, tmp_path: Path
) -> None:
    body = {"head_of_you": None, "record": False}
    ok = _post(services, US, "ledger.witness", "/v1/witness", body)
    assert ok.status_code == 200, ok.text
    wrong_key = create_keystore(tmp_path / "wrong")
    cases = [
        ("signature", {"keys": wrong_key}),
        ("untrusted", {"sender": "eu-paris", "keys": wrong_key}),
        ("misdirected", {"recipient": CN}),
        ("clock", {"at": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)}),
        ("clock", {"at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)}),
        ("body", {"alter": b'{"head_of_you":null,"record":true}'}),
    ]
    for reason, changes in cases:
        refused = _post(services, US, "ledger.witness", "/v1/witness", body, **changes)  # type: ignore[arg-type]
        answer = refused.json()
        assert refused.status_code >= 400 and answer["reason"] == reason, (reason, answer)
        assert answer["refused_by"] == US and answer["message"]
    # A message sent twice is refused the second time, even after the service restarted.
    content = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    stamp = new_stamp(EU, US, "ledger.witness", content, head=None)
    sealed = seal(stamp, LocalParty.of(parties[EU]).keys())
    assert (
        _post(services, US, "ledger.witness", "/v1/witness", body, headers=sealed).status_code
        == 200
    )
    services.restart(US)
    replayed = _post(services, US, "ledger.witness", "/v1/witness", body, headers=sealed)
    assert replayed.status_code == 409 and replayed.json()["reason"] == "replay"
    # Every refusal is in the receiver's ledger; nothing else was written by them.
    assert sorted(_refused(parties[US])) == sorted(
        ["signature", "untrusted", "misdirected", "clock", "clock", "body", "replay"]
    )
    # The answers are signed by the receiver: a client checks them.
    client = PeerClient(
        LocalParty.of(parties[EU]),
        load_peers(parties[EU])[US],
        LocalParty.of(parties[EU]).keys(),
        http=services.http(US),
    )
    assert client.post("ledger.witness", "/v1/witness", body).head is not None


def _offered(
    parties: Parties, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, Any]]:
    """An allowed transfer EU -> US offered (its transfer_out written and offered) and cut
    before any object was sent: the transfer id and its transfer_out."""
    from onshore.transfer import outbound

    paths = write_clips(tmp_path / "eu", 3, recorded_in="eu-frankfurt", steps=1500)
    eu = parties[EU]
    with SiteStore.open(eu) as site:
        ingest(site, paths)
        secret = LocalParty.of(eu).keys().hmac_secret
        deidentify_site(site, resolve_profile("export", {}), secret=secret)

    class Cut(Exception):
        pass

    def cut(*_args: object) -> Any:
        raise Cut

    with monkeypatch.context() as patch:
        patch.setattr(outbound, "_chunks", cut)
        with pytest.raises(Cut):
            transfer(eu, US, "export", "adas_training", day=DAY, http=services.http(US))
    (sent,) = _entries(eu, "transfer_out")
    return str(sent["transfer"]), sent


def _put(
    services: Services,
    transfer_id: str,
    objects: list[int],
    content: bytes,
    length: int | None = None,
) -> httpx.Response:
    stamp = new_stamp(EU, US, "transfer.objects", None, head=None)
    headers = {
        **seal(stamp, LocalParty.of(services.parties[EU]).keys()),
        "content-type": "application/octet-stream",
        "content-length": str(len(content) if length is None else length),
    }
    return services.http(US).put(  # type: ignore[no-any-return]
        f"/v1/transfers/{transfer_id}/objects",
        params={"objects": ",".join(map(str, objects))},
        content=content,
        headers=headers,
    )


def test_objects_that_do_not_match_their_hash_or_overflow_are_refused_and_lose_nothing(
    parties: Parties, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer_id, sent = _offered(parties, services, tmp_path, monkeypatch)
    first = sent["sent"][0]
    with SiteStore.open(parties[EU]) as site:
        good = site.objects.read(first["path"])
    wrong = bytes([good[0] ^ 1]) + good[1:]
    refused = _put(services, transfer_id, [0], wrong)
    assert refused.status_code == 400 and refused.json()["reason"] == "hash"
    too_long = _put(services, transfer_id, [0], good + b"more")
    assert too_long.status_code == 413 and too_long.json()["reason"] == "too_large"
    short = _put(services, transfer_id, [0], good[:-5])
    assert short.status_code == 400 and short.json()["reason"] == "incomplete"
    unknown = _put(services, "f" * 24, [0], good)
    assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_transfer"
    with SiteStore.open(parties[US]) as site:
        assert list(site.objects.find("received")) == []
        assert site.objects.staging_leftovers() == []
    assert {"hash", "too_large", "incomplete", "unknown_transfer"} <= set(_refused(parties[US]))
    # Nothing was lost: the transfer, rerun, completes once.
    done = transfer(parties[EU], US, "export", "adas_training", day=DAY, http=services.http(US))
    assert done.status == "transferred"
    assert len(_entries(parties[US], "transfer_in")) == 1
    assert len(_entries(parties[EU], "transfer_out")) == 1


def test_a_commit_before_every_object_arrived_is_refused(
    parties: Parties, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer_id, _ = _offered(parties, services, tmp_path, monkeypatch)
    answer = _post(
        services,
        US,
        "transfer.commit",
        f"/v1/transfers/{transfer_id}/commit",
        {"transfer": transfer_id},
    )
    assert answer.status_code == 400 and answer.json()["reason"] == "incomplete"
    assert _entries(parties[US], "transfer_in") == []


def test_only_the_coordinator_asks_a_site_for_its_consent(
    parties: Parties, services: Services
) -> None:
    answer = _post(
        services, CN, "licence.consent", "/v1/licences/consent", {"licence": {}, "subjects": 1}
    )
    assert answer.status_code == 403 and answer.json()["reason"] == "untrusted"


# -- witnessing ------------------------------------------------------------------------------


def _rewrite(project: Project) -> None:
    """The party rewrites its own history: changes an early entry's payload and re-signs the
    whole chain with its own key (its own verify cannot tell)."""
    from sqlalchemy import select, update

    from onshore.ledger.chain import _signed, entries_table, heads_table
    from onshore.ledger.entry import canonical_json

    keys = LocalParty.of(project).keys()
    with SiteStore.open(project) as site, site.catalogue.transaction() as conn:
        rows = conn.execute(
            select(entries_table)
            .where(entries_table.c.site == site.site)
            .order_by(entries_table.c.seq)
        ).all()
        prev = rows[0].prev_hash
        for row in rows:
            payload = row.payload
            if row.seq == 1:
                payload = canonical_json({**orjson.loads(payload), "rewritten": True})
            entry = _signed(keys, row.site, row.seq, row.time, row.kind, payload, prev)
            conn.execute(
                update(entries_table)
                .where(entries_table.c.site == row.site, entries_table.c.seq == row.seq)
                .values(
                    payload=entry.payload,
                    hash=entry.hash,
                    signature=entry.signature,
                    prev_hash=prev,
                )
            )
            prev = entry.hash
        conn.execute(update(heads_table).where(heads_table.c.site == site.site).values(hash=prev))


def test_a_party_that_rewrites_its_history_is_caught_by_its_peers(
    parties: Parties, services: Services
) -> None:
    # Heads exchanged and recorded at both ends.
    rows = witness_peers(parties[CN], record=True, only=[US], http_for=services.http)
    assert rows[0]["problems"] == [] and rows[0]["recorded"] is not None
    with SiteStore.open(parties[US]) as site:
        assert Ledger.open(site.catalogue).last_peer_head(CN) is not None
    assert verify_party(parties[CN], http_for=services.http).ok
    # US appends, CN witnesses again, then US rewrites everything and re-signs it.
    with SiteStore.open(parties[US]) as site:
        Ledger.open(site.catalogue, LocalParty.of(parties[US]).keys()).append("note", {"n": 1})
    witness_peers(parties[CN], record=True, only=[US], http_for=services.http)
    _rewrite(parties[US])
    services.restart(US)
    own = verify_party(parties[US], witness=False)
    assert own.ok  # its own signatures all hold: only a peer can tell
    caught = verify_party(parties[CN], http_for=services.http)
    assert not caught.ok
    assert any("us-oregon rewrote its history" in p.reason for p in caught.problems)
    # Asked by US itself, CN says which head of US it holds: US's verify fails too.
    services.restart(CN)
    itself = verify_party(parties[US], http_for=services.http)
    assert any(p.site == US and "rewrote its history" in p.reason for p in itself.problems)


def test_verify_notes_a_peer_that_does_not_answer(parties: Parties) -> None:
    report = verify_party(parties[CN])  # no service runs: every peer is a note
    assert report.ok and len([n for n in report.notes if "not asked" in n]) == 3


# -- reads from abroad -------------------------------------------------------------------------


def _remote_query_assessment(project: Project) -> None:
    add_approval(
        project,
        CN,
        Approval.model_validate(
            {
                "id": "CAC-REMOTE",
                "type": "cn_security_assessment",
                "origin": "CN",
                "recipient": "Onshore Mobility Europe GmbH",
                "categories": ["vehicle_id", "trajectory", "sensitive_area_geodata"],
                "purposes": ["remote_query"],
                "max_subjects": 100_000,
                "valid_from": "2026-01-01",
                "reference": "CAC-SA-R",
            }
        ),
    )


def test_a_read_from_abroad_is_decided_by_the_site_recorded_once_a_day_and_counted_once(
    parties: Parties, services: Services, tmp_path: Path
) -> None:
    with SiteStore.open(parties[CN]) as site:
        ingest(site, write_clips(tmp_path / "cn", 5, steps=200))
    coord = parties[COORD]

    def page() -> dict[str, Any]:
        return read(coord, CN, "clips", {"page": 1}, user="engineer", http=services.http(CN))

    denied = page()
    assert not denied["access"]["allowed"] and denied["data"] is None
    assert "cn_security_assessment" in denied["access"]["decision"]["mechanisms"]
    for _ in range(29):
        assert not page()["access"]["allowed"]
    assert len(_entries(parties[CN], "remote_read")) == 1  # thirty views, one read
    _remote_query_assessment(parties[CN])
    shown = page()
    assert shown["access"]["allowed"] and len(shown["data"]["rows"]) == 5
    for _ in range(29):
        again = page()
        assert again["access"]["allowed"] and again["access"]["repeated"]
    reads = _entries(parties[CN], "remote_read")
    assert len(reads) == 2 and reads[-1]["decision"]["approval"]["id"] == "CAC-REMOTE"
    # The law counts the five vehicles once, however often they were read.
    from sqlalchemy import func, select

    from onshore.gate.crossings import crossings_table

    with SiteStore.open(parties[CN]) as site, site.catalogue.engine.connect() as conn:
        per_category = dict(
            conn.execute(
                select(crossings_table.c.category, func.count()).group_by(
                    crossings_table.c.category
                )
            ).all()
        )
    assert per_category == {"trajectory": 5, "vehicle_id": 5}
    # Read from the site's own country: no border crossed, nothing recorded.
    before = len(_entries(parties[EU], "remote_read"))
    same = read(coord, EU, "summary", user="engineer", http=services.http(EU))
    assert same["access"]["how"] == "same country"
    assert len(_entries(parties[EU], "remote_read")) == before


# -- real processes, real TLS ------------------------------------------------------------------


def _expired_certificate(key_pem: bytes, name: str) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _exchange(
    context: ssl.SSLContext, host: str, port: int, data: bytes, *, answer: bool = True
) -> bytes:
    """Send ``data`` over a TLS connection made with ``context``; the first bytes of the answer
    (raises ConnectionError if the server closed the connection without one)."""
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(data)
        if not answer:
            return b""
        found = tls.recv(100)
        if not found:
            raise ConnectionError("closed")
        return found


def _tls_client(
    cert: Path, key: Path, server_cert: str, cadata: str | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata=cadata or server_cert)
    return context


@pytest.mark.slow
def test_over_real_tls_strangers_expired_certificates_and_impostors_are_refused(
    parties: Parties, tmp_path: Path
) -> None:
    us = parties[US]
    server = serve_party(us, tmp_path / "us.log")
    try:
        peer = load_peers(parties[EU])[US]
        host, port = "127.0.0.1", int(peer.endpoint.rsplit(":", 1)[1])
        # A peer on file gets through.
        with PeerClient(
            LocalParty.of(parties[EU]), peer, LocalParty.of(parties[EU]).keys()
        ) as client:
            assert client.post("ledger.witness", "/v1/witness", {"record": False}).head
        # A stranger (another federation's party) is refused at the TLS layer.
        other = make_parties(tmp_path / "other", only=EU)[EU]
        with pytest.raises(PeerUnreachable, match=r"closed the connection|did not answer"):
            stranger_peer = peer
            with PeerClient(
                LocalParty.of(other), stranger_peer, LocalParty.of(other).keys()
            ) as client:
                client.post("ledger.witness", "/v1/witness", {"record": False})
        # An expired certificate of a party on file is refused at the TLS layer too.
        eu_keys = LocalParty.of(parties[EU]).keystore
        expired = tmp_path / "expired.crt"
        expired.write_bytes(_expired_certificate((eu_keys / "tls.key").read_bytes(), EU))
        context = _tls_client(expired, eu_keys / "tls.key", peer.tls_certificate)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _exchange(context, host, port, b"GET /v1/identity HTTP/1.1\r\nHost: x\r\n\r\n")
        # A peer whose certificate is on file, signing as another party, is an impostor.
        as_eu = httpx.Client(  # the EU's own certificate on the connection...
            base_url=peer.endpoint,
            verify=_tls_client(eu_keys / "tls.crt", eu_keys / "tls.key", peer.tls_certificate),
        )
        cn = LocalParty.of(parties[CN])  # ...the stamps saying cn-shanghai, signed with its key
        with (
            as_eu,
            PeerClient(cn, load_peers(parties[CN])[US], cn.keys(), http=as_eu) as impostor,
            pytest.raises(RequestRefused) as refused,
        ):
            impostor.post("ledger.witness", "/v1/witness", {"record": False})
        assert refused.value.reason == "untrusted"
        assert "another party's certificate" in refused.value.message
        # A sender that stops mid-stream: what it sent is dropped, the refusal recorded.
        stamp = new_stamp(EU, US, "transfer.objects", None, head=None)
        sealed = seal(stamp, LocalParty.of(parties[EU]).keys())
        context = _tls_client(eu_keys / "tls.crt", eu_keys / "tls.key", peer.tls_certificate)
        head = (
            f"PUT /v1/transfers/{'a' * 24}/objects?objects=0 HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in sealed.items())
            + "Content-Length: 100000\r\n\r\n"
        )
        _exchange(context, host, port, head.encode() + b"x" * 1000, answer=False)
        time.sleep(1.0)
    finally:
        stop_party(server)
    reasons = _refused(us)
    assert "untrusted" in reasons
    assert any(r in ("unknown_transfer", "incomplete") for r in reasons), reasons
    refused_tls = _entries(us, "connection_refused")
    assert refused_tls and refused_tls[0]["layer"] == "tls"
    assert any("certificate" in str(e["reason"]).lower() or e["reason"] for e in refused_tls)
