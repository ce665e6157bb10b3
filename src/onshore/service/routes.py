"""The service's routes for transfers in: an offer, the objects streamed, the commit.

The objects arrive as one stream: the bytes of each object the offer's answer asked for, one
after the other, in that order. Each is written to a file as it arrives, hashed on the way,
and stored only when its hash and size are the ones the origin's signed ``transfer_out`` lists;
an object that does not match is dropped and the whole request refused (``hash``), after the
rest of the body was read so that the sender hears why. A sender that stops mid-stream loses
nothing it sent whole: the objects completed are kept, the one cut short is dropped, and a
rerun sends only what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
from pathlib import Path
from typing import IO, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from onshore.errors import ConfigError, RequestRefused
from onshore.ledger.witness import vouch
from onshore.service.app import Incoming, PartyService
from onshore.transfer import inbound

__all__ = ["ledger", "licences", "reads", "transfers"]

_HANDOVER = 1 << 20
"""Bytes gathered off the socket before the writer thread gets them."""
_QUEUED = 16
"""Hand-overs the socket may run ahead of the disk by, per request."""


def _indices(text: str) -> list[int]:
    try:
        found = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RequestRefused(
            f"objects={text!r} is not a list of numbers", reason="malformed"
        ) from None
    if len(set(found)) != len(found):
        raise RequestRefused("an object is asked for twice", reason="malformed")
    return found


class _Receiver:
    """Splits the stream into the expected objects, on a thread of its own so that writing,
    hashing and syncing each object's file never holds up the event loop that reads the
    socket. The loop hands chunks over through a bounded queue; the objects that arrived whole
    and matched are stored together at the end (:meth:`finish`)."""

    def __init__(self, party: PartyService, incoming: Incoming, expected: list[inbound.Expected]):
        self.site = party.require_site()
        self.sender = incoming.sender
        self.expected = expected
        self.index = 0
        self.arrived: list[tuple[inbound.Expected, Path]] = []
        self.bad: RequestRefused | None = None
        self.finished = False
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=_QUEUED)
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._digest = hashlib.sha256()
        self._left = 0
        self._worker = asyncio.ensure_future(asyncio.to_thread(self._work))

    async def feed(self, chunk: bytes) -> None:
        """Take a chunk off the socket; the writer gets them gathered to :data:`_HANDOVER`
        bytes, so that it works (and the two threads meet) once per megabyte, not per TLS
        record."""
        if not chunk:
            return
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        if self._held_bytes >= _HANDOVER:
            await self._hand_over()

    async def _hand_over(self) -> None:
        if not self._held:
            return
        data, self._held, self._held_bytes = self._held, [], 0
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            await asyncio.to_thread(self._queue.put, data)

    async def finish(self) -> tuple[int, int]:
        """Wait for the writer, then store what arrived whole: ``(objects stored, bytes)``.
        Called also when the sender went away mid-stream: the objects it sent whole are kept,
        the one cut short is dropped."""
        self.finished = True
        await self._hand_over()
        await self.feed_end()
        await self._worker
        stored = await run_in_threadpool(
            inbound.store_objects, self.site, self.sender, self.arrived
        )
        self.arrived = []
        written = [s for s in stored if s.written]
        return len(written), sum(s.size for s in written)

    async def feed_end(self) -> None:
        if not self._worker.done():
            await asyncio.to_thread(self._queue.put, None)

    def abandon(self) -> None:
        """Stop the writer without waiting (the request was cancelled): what it holds is
        dropped, and the files that arrived whole stay in staging, for the store to sweep."""
        if self.finished:
            return
        self.finished = True
        self.bad = self.bad or RequestRefused("the request was cancelled", reason="incomplete")
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    def _work(self) -> None:
        try:
            while (chunks := self._queue.get()) is not None:
                for chunk in chunks:
                    self._take(chunk)
            # Objects of no bytes need no chunk to complete.
            while (
                self.bad is None
                and self.index < len(self.expected)
                and self.expected[self.index].bytes == 0
            ):
                self._open()
                self._close()
        finally:
            self._discard()

    def _take(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and self.bad is None:  # once bad, read to the end and keep nothing more
            if self.index >= len(self.expected):
                self.bad = RequestRefused(
                    "the body goes on past the objects it was to carry", reason="too_large"
                )
                return
            if self._file is None:
                self._open()
            take = view[: self._left]
            assert self._file is not None
            self._file.write(take)
            self._digest.update(take)
            self._left -= len(take)
            view = view[len(take) :]
            if self._left == 0:
                self._close()

    def _open(self) -> None:
        self._path = self.site.store.objects.incoming_file()
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed in _close or _discard
        self._digest = hashlib.sha256()
        self._left = self.expected[self.index].bytes

    def _close(self) -> None:
        item = self.expected[self.index]
        assert self._file is not None and self._path is not None
        if self._digest.hexdigest() != item.sha256:
            self.bad = RequestRefused(
                f"{item.path} arrived with sha256 {self._digest.hexdigest()[:16]}..., not "
                f"{item.sha256[:16]}... as the origin signed: it was dropped",
                reason="hash",
            )
            self._discard()
            return
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self._file.close()
        self.arrived.append((item, self._path))
        self._file, self._path = None, None
        self.index += 1

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            self._path = None


def transfers(app: FastAPI, party: PartyService) -> None:
    """Register the routes of a transfer in."""

    @app.post("/v1/transfers/offer")
    async def offer(request: Request) -> Response:
        def work(incoming: Incoming) -> dict[str, Any]:
            return inbound.offer(party.require_site(), incoming.sender, incoming.json())

        return await party.handle(request, "transfer.offer", work)

    @app.put("/v1/transfers/{transfer}/objects")
    async def objects(transfer: str, request: Request) -> Response:
        kind = "transfer.objects"
        incoming: Incoming | None = None
        receiver: _Receiver | None = None
        try:
            incoming = await party.admit(request, kind, streamed=True)
            site = party.require_site()
            indices = _indices(request.query_params.get("objects", ""))
            expected = await run_in_threadpool(
                inbound.expected, site, incoming.sender, transfer, indices
            )
            total = sum(e.bytes for e in expected)
            declared = request.headers.get("content-length")
            limit = party.local.settings.max_body_bytes
            if total > limit or (
                declared is not None and declared.isdigit() and int(declared) > limit
            ):
                raise RequestRefused(
                    f"the objects are {total:,} bytes; at most {limit:,} are accepted in one "
                    "request",
                    reason="too_large",
                )
            if declared is not None and declared.isdigit() and int(declared) != total:
                raise RequestRefused(
                    f"the body is {int(declared):,} bytes, but the objects asked for are {total:,}",
                    reason="too_large" if int(declared) > total else "incomplete",
                )
            receiver = _Receiver(party, incoming, expected)
            async for chunk in request.stream():
                await receiver.feed(chunk)
            stored, written = await receiver.finish()
            if receiver.bad is not None:
                raise receiver.bad
            if receiver.index < len(expected):
                raise RequestRefused(
                    f"the body ended after {receiver.index} of {len(expected)} objects",
                    reason="incomplete",
                )
        except ClientDisconnect:
            if receiver is not None:
                await receiver.finish()
            done = receiver.index if receiver is not None else 0
            refusal = RequestRefused(
                f"the sender stopped mid-stream, after {done} whole object(s), which are kept",
                reason="incomplete",
            )
            return await party.refuse(request, kind, refusal, incoming)
        except RequestRefused as exc:
            if receiver is not None and not receiver.finished:
                await receiver.finish()
            return await party.refuse(request, kind, exc, incoming)
        except BaseException:
            if receiver is not None:
                receiver.abandon()
            raise
        return party.reply(
            kind,
            {"stored": stored, "bytes": written, "objects": len(expected)},
            to=incoming.sender.id,
            reply_to=incoming.stamp.id,
        )

    @app.post("/v1/transfers/{transfer}/commit")
    async def commit(transfer: str, request: Request) -> Response:
        def work(incoming: Incoming) -> dict[str, Any]:
            body = incoming.json()
            if body.get("transfer") != transfer:
                raise RequestRefused("the commit names another transfer", reason="malformed")
            return inbound.commit(
                party.require_site(), incoming.sender, transfer, incoming.stamp.head
            )

        return await party.handle(request, "transfer.commit", work)


def ledger(app: FastAPI, party: PartyService) -> None:
    """Register the route a peer checks entries of this party's ledger through."""

    @app.post("/v1/ledger/vouch")
    async def vouch_for(request: Request) -> Response:
        def work(incoming: Incoming) -> dict[str, Any]:
            body = incoming.json()
            seqs, after = body.get("seqs"), body.get("erasures_after")
            if not isinstance(seqs, list):
                raise RequestRefused("a vouch request lists seqs", reason="malformed")
            return vouch(
                party.ledger,
                seqs,
                intact=party.chain_problem,
                erasures_after=after if isinstance(after, int) else None,
            )

        return await party.handle(request, "ledger.vouch", work)


def licences(app: FastAPI, party: PartyService) -> None:
    """Register the route the coordinator asks a site's consent to a licence through."""
    from onshore.release.consent import decide

    @app.post("/v1/licences/consent")
    async def consent(request: Request) -> Response:
        def work(incoming: Incoming) -> dict[str, Any]:
            if incoming.sender.role != "coordinator":
                raise RequestRefused(
                    f"{incoming.sender.id} is not the coordinator, which alone grants licences",
                    reason="untrusted",
                )
            return decide(party.require_site(), incoming.json())

        return await party.handle(request, "licence.consent", work)


def reads(app: FastAPI, party: PartyService) -> None:
    """Register the route another party reads this site through, behind its gate."""
    from onshore.reads.gate import Reader, answer

    @app.post("/v1/reads")
    async def read(request: Request) -> Response:
        def work(incoming: Incoming) -> dict[str, Any]:
            body = incoming.json()
            view, params = body.get("view"), body.get("params") or {}
            if not isinstance(view, str) or not isinstance(params, dict):
                raise RequestRefused("a read names a view and its params", reason="malformed")
            sender = incoming.sender
            reader = Reader(
                sender.id,
                sender.entity,
                sender.country,
                sender.linked_to,
                user=str(body.get("user") or ""),
                role=str(body.get("role") or ""),
            )
            try:
                return answer(party.require_site(), reader, view, params)
            except LookupError as exc:
                raise RequestRefused(str(exc.args[0]), reason="not_found") from None
            except ConfigError as exc:  # an unknown view, or a filter it cannot take
                raise RequestRefused(exc.message, hint=exc.hint, reason="malformed") from None

        return await party.handle(request, "read", work)


def rights(app: FastAPI, party: PartyService) -> None:
    """Register the route an origin site asks this site to erase what it received through."""
    from onshore.rights.erase import erase_received

    @app.post("/v1/rights/erase")
    async def erase(request: Request) -> Response:
        def work(incoming: Incoming) -> dict[str, Any]:
            if incoming.sender.role != "site":
                raise RequestRefused(
                    f"{incoming.sender.id} is not a site: only the site that sent data asks "
                    "for its erasure",
                    reason="untrusted",
                )
            return erase_received(party.require_site(), incoming.sender.id, incoming.json())

        return await party.handle(request, "rights.erase", work)
