"""A party's service: what its peers may ask it, over mutual TLS, each message signed.

``onshore serve`` runs this app in the party's folder (:mod:`.server`). Every request but
``GET /v1/identity`` carries a stamp (:mod:`onshore.parties.messages`): the app checks the
sender is a peer on file and the one whose certificate the connection presented, the signature,
the recipient, the clock and that the stamp is new, before anything else. Every answer is
signed by this party and carries its ledger head. A refusal, whichever check it fails, is a
signed answer naming the reason, and an entry in this party's ledger (``request_refused``;
``connection_refused`` for a handshake that failed, at most once a minute per address).

What a site answers:

- ``POST /v1/witness``: the witness exchange of ledger heads (:mod:`onshore.ledger.witness`);
- ``POST /v1/transfers/offer``, ``PUT /v1/transfers/{id}/objects``,
  ``POST /v1/transfers/{id}/commit``: a transfer in (:mod:`onshore.transfer.inbound`);
- ``POST /v1/reads``: a view of the site, decided by its gate and recorded
  (:mod:`onshore.reads`);
- ``POST /v1/ledger/vouch``: entries of its ledger as stored, to check a lineage or receipt;
- ``POST /v1/licences/consent``: its gate's decision on a licence, signed (the coordinator
  only; :mod:`onshore.release.consent`);
- ``PUT /v1/probe``: a body copied to a file and dropped, to measure the link against a plain
  copy (``bench/transfer.py``).

Tests drive the app in process (``create_app(..., require_tls=False)``); the server presents
the client's certificate in the scope, and then the app requires it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from onshore.errors import OnshoreError, PartyError, RequestRefused
from onshore.gate.site import OpenSite
from onshore.ledger import Ledger
from onshore.ledger.witness import answer as witness_answer
from onshore.ledger.witness import record_if_new
from onshore.parties.identity import Identity, LocalParty, Peers, export_identity, load_peers
from onshore.parties.messages import ReplayGuard, Stamp, new_stamp, open_stamp, seal
from onshore.parties.tls import der_fingerprint
from onshore.service.server import TLS_EXTENSION
from onshore.settings import Project
from onshore.sites.keystore import SiteKeys
from onshore.store.catalogue import Catalogue

__all__ = ["Incoming", "PartyService", "create_app"]

log = logging.getLogger("onshore.service")

T = TypeVar("T")
_JSON: Final = "application/json"
_REFUSALS_PER_MINUTE: Final = 60.0


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request whose stamp passed every check."""

    stamp: Stamp
    sender: Identity
    body: bytes | None

    def json(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.body or b"{}")
        except orjson.JSONDecodeError:
            raise RequestRefused("the body is not JSON", reason="malformed") from None
        if not isinstance(data, dict):
            raise RequestRefused("the body is not a JSON object", reason="malformed")
        return data


@dataclass(slots=True)
class PartyService:
    """What the app holds of its party while it serves: opened once, shared by requests."""

    project: Project
    local: LocalParty
    keys: SiteKeys
    ledger: Ledger
    peers: Peers
    identity: dict[str, Any]
    guard: ReplayGuard
    site: OpenSite | None
    catalogue: Catalogue
    require_tls: bool
    _tls_refused: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, project: Project, *, require_tls: bool = True) -> PartyService:
        local = LocalParty.of(project)
        peers = load_peers(project)
        identity = export_identity(project)
        if project.is_coordinator:
            coord = project.settings.coordinator
            keys = local.keys()
            catalogue = Catalogue(project.catalogue_url(coord), coord.id)
            site = None
            ledger = Ledger.open(catalogue, keys)
        else:
            site = OpenSite.open(project)
            keys, catalogue, ledger = site.keys, site.store.catalogue, site.ledger
            # Pieces of objects a killed service was receiving: never visible, removed now.
            site.store.objects.clean_staging()
        guard = ReplayGuard(
            catalogue.engine, local.id, keep=2.0 * local.settings.clock_skew_seconds
        )
        return cls(
            project, local, keys, ledger, peers, identity, guard, site, catalogue, require_tls
        )

    @property
    def id(self) -> str:
        return self.local.id

    def close(self) -> None:
        if self.site is not None:
            self.site.close()
        else:
            self.catalogue.close()

    def chain_problem(self) -> str | None:
        """Why this party's ledger does not verify (chain, signatures, pinned key), or None."""
        try:
            if self.site is not None:
                self.site.check_ledger()
            else:
                from onshore.ledger import verify

                verify(
                    self.ledger, current_key=self.keys.public_key, check_hashes=False
                ).raise_for_problems()
        except OnshoreError as exc:
            return exc.message
        return None

    def require_site(self) -> OpenSite:
        if self.site is None:
            raise RequestRefused(
                f"{self.id} is the coordinator, which holds no fleet data", reason="not_a_site"
            )
        return self.site

    # -- answers ----------------------------------------------------------------------------

    def reply(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        to: str,
        reply_to: str | None,
        status: int = 200,
    ) -> Response:
        content = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        stamp = new_stamp(
            self.id, to, f"{kind}.answer", content, head=self.ledger.head(), reply_to=reply_to
        )
        return Response(
            content, status_code=status, media_type=_JSON, headers=seal(stamp, self.keys)
        )

    def record_refusal(
        self, kind: str, refusal: RequestRefused, *, claimed: str | None, tls: str | None
    ) -> None:
        """``request_refused`` in this party's ledger (never fails the answer)."""
        try:
            self.ledger.append(
                "request_refused",
                {
                    "kind": kind,
                    "from": claimed,
                    "connection": tls,
                    "reason": refusal.reason,
                    "message": refusal.message,
                },
            )
        except OnshoreError as exc:  # the refusal is still answered and logged
            log.error("could not record a refusal in the ledger: %s", exc)
        log.warning("refused %s from %s: %s (%s)", kind, claimed, refusal.message, refusal.reason)

    def record_tls_refusal(self, address: str, reason: str) -> None:
        """A handshake that failed: logged always, in the ledger at most once a minute per
        address (a stranger must not be able to fill the ledger)."""
        log.warning("TLS handshake from %s refused: %s", address, reason)
        host = address.rsplit(":", 1)[0]
        now = time.monotonic()
        if now - self._tls_refused.get(host, -_REFUSALS_PER_MINUTE) < _REFUSALS_PER_MINUTE:
            return
        self._tls_refused[host] = now
        try:
            self.ledger.append(
                "connection_refused", {"address": host, "reason": reason, "layer": "tls"}
            )
        except OnshoreError as exc:
            log.error("could not record a refused connection in the ledger: %s", exc)

    # -- requests ---------------------------------------------------------------------------

    def tls_peer(self, request: Request) -> str | None:
        """The fingerprint of the certificate the connection presented (None without TLS)."""
        tls = (request.scope.get("extensions") or {}).get(TLS_EXTENSION)
        if tls is None:
            return None
        chain = tls.get("client_cert_chain") or []
        return der_fingerprint(chain[0]) if chain else ""

    async def admit(self, request: Request, kind: str, *, streamed: bool = False) -> Incoming:
        """Check the request's stamp; raises :class:`RequestRefused`."""
        tls = self.tls_peer(request)
        if tls is None and self.require_tls:
            raise RequestRefused("no TLS client certificate", reason="untrusted")
        if tls == "":
            raise RequestRefused("the connection presented no certificate", reason="untrusted")
        body = None
        if not streamed:
            body = await _read(request, self.local.settings.max_body_bytes)
        stamp, sender = open_stamp(
            request.headers,
            receiver=self.id,
            peers=self.peers,
            skew=float(self.local.settings.clock_skew_seconds),
            body=body,
            tls_peer=tls,
        )
        if stamp.kind != kind:
            raise RequestRefused(
                f"a {stamp.kind} message was sent to the {kind} address", reason="malformed"
            )
        await run_in_threadpool(self.guard.check, stamp)
        return Incoming(stamp, sender, body)

    async def handle(
        self,
        request: Request,
        kind: str,
        work: Callable[[Incoming], dict[str, Any]],
        *,
        streamed: bool = False,
    ) -> Response:
        """Check the request, run ``work`` (in a worker thread: it reads the store and writes
        the ledger), and answer it signed; a refusal or an error is answered and recorded."""
        incoming: Incoming | None = None
        try:
            incoming = await self.admit(request, kind, streamed=streamed)
            result = await run_in_threadpool(work, incoming)
        except RequestRefused as exc:
            return await self.refuse(request, kind, exc, incoming)
        except PartyError as exc:
            refusal = RequestRefused(exc.message, hint=exc.hint, reason=exc.code)
            return await self.refuse(request, kind, refusal, incoming)
        except OnshoreError as exc:
            log.error("%s failed: %s", kind, exc)
            assert incoming is not None
            return self.reply(
                kind,
                {**exc.to_dict(), "reason": "error"},
                to=incoming.sender.id,
                reply_to=incoming.stamp.id,
                status=500,
            )
        return self.reply(kind, result, to=incoming.sender.id, reply_to=incoming.stamp.id)

    async def refuse(
        self,
        request: Request,
        kind: str,
        refusal: RequestRefused,
        incoming: Incoming | None,
    ) -> Response:
        claimed, stamp_id = _claimed(request)
        if incoming is not None:
            claimed, stamp_id = incoming.sender.id, incoming.stamp.id
        tls = self.tls_peer(request)
        by_tls = self.peers.by_tls(tls) if tls else None
        await run_in_threadpool(
            self.record_refusal,
            kind,
            refusal,
            claimed=claimed,
            tls=by_tls.id if by_tls is not None else tls,
        )
        status = {
            "untrusted": 403,
            "signature": 403,
            "misdirected": 421,
            "replay": 409,
            "clock": 401,
            "too_large": 413,
            "unknown_transfer": 404,
            "not_found": 404,
        }.get(refusal.reason, 400)
        body = {
            "error": RequestRefused.code,
            "reason": refusal.reason,
            "message": refusal.message,
            "hint": refusal.hint,
            "refused_by": self.id,
        }
        return self.reply(kind, body, to=claimed or "unknown", reply_to=stamp_id, status=status)


def _claimed(request: Request) -> tuple[str | None, str | None]:
    """Who a stamp says sent it, and its id, as far as it can be read (for a refusal)."""
    import base64

    raw = request.headers.get("onshore-stamp")
    if not raw:
        return None, None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    sender, ident = data.get("from"), data.get("id")
    return (
        sender if isinstance(sender, str) else None,
        ident if isinstance(ident, str) else None,
    )


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRefused(
            f"the body is {int(declared):,} bytes; at most {limit:,} are accepted",
            reason="too_large",
        )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestRefused(
                    f"the body is over {limit:,} bytes, the most accepted", reason="too_large"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestRefused(
            "the sender stopped before the body ended", reason="incomplete"
        ) from None
    return b"".join(chunks)


def create_app(project: Project, *, require_tls: bool = True) -> FastAPI:
    """The party's app (see the module's description). ``require_tls=False`` lets a test drive
    it in process, where there is no TLS connection whose certificate could be checked."""
    from onshore.service import routes

    party = PartyService.open(project, require_tls=require_tls)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            party.close()

    app = FastAPI(
        title=f"onshore party {party.id}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.party = party

    @app.get("/v1/identity")
    async def identity() -> Response:
        return Response(orjson.dumps(party.identity), media_type=_JSON)

    @app.post("/v1/witness")
    async def witness(request: Request) -> Response:
        def work(incoming: Incoming) -> dict[str, Any]:
            body = incoming.json()
            if body.get("record", True):
                record_if_new(party.ledger, incoming.stamp.head)
            return witness_answer(
                party.ledger,
                incoming.sender.id,
                body.get("head_of_you"),
                intact=party.chain_problem,
            )

        return await party.handle(request, "ledger.witness", work)

    @app.put("/v1/probe")
    async def probe(request: Request) -> Response:
        incoming: Incoming | None = None
        try:
            incoming = await party.admit(request, "probe", streamed=True)
            size = 0
            # A plain copy: each chunk written to a file as it comes (no hash, no sync), the
            # file dropped at the end.
            with tempfile.TemporaryFile(dir=party.local.project.root) as copy:
                async for chunk in request.stream():
                    copy.write(chunk)
                    size += len(chunk)
        except RequestRefused as exc:
            return await party.refuse(request, "probe", exc, incoming)
        except ClientDisconnect:
            refusal = RequestRefused("the sender stopped mid-stream", reason="incomplete")
            return await party.refuse(request, "probe", refusal, incoming)
        return party.reply(
            "probe", {"bytes": size}, to=incoming.sender.id, reply_to=incoming.stamp.id
        )

    routes.transfers(app, party)
    routes.ledger(app, party)
    routes.licences(app, party)
    routes.reads(app, party)
    routes.rights(app, party)
    return app
