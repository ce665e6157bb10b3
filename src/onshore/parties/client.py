"""Talking to a peer's service: mutual TLS, a signed stamp on every request, answers checked.

:class:`PeerClient` is how one party asks another anything (a transfer, a remote read, a licence
consent, a witness of ledger heads). It presents the party's own certificate, accepts only the
peer's, signs each request with the party's ledger key (:mod:`~onshore.parties.messages`) and
accepts an answer only when the peer signed it in reply to that request. What can go wrong
becomes one of two errors: :class:`~onshore.errors.PeerUnreachable` (nothing was delivered:
the service is down, the address is wrong, the TLS handshake failed) or
:class:`~onshore.errors.RequestRefused` (the peer answered no, and said why).

Tests drive a peer's app in process by passing ``http``, an :class:`httpx.Client` on another
transport; the requests and their checks are the same.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import httpx
import orjson

from onshore.errors import CertificateError, PeerUnreachable, RequestRefused
from onshore.ledger.entry import Head
from onshore.parties.identity import Identity, LocalParty
from onshore.parties.messages import Stamp, new_stamp, open_stamp, seal
from onshore.parties.tls import client_context
from onshore.sites.keystore import SiteKeys

__all__ = ["Answer", "PeerClient"]

_JSON: Final = "application/json"


@dataclass(frozen=True, slots=True)
class Answer:
    """A peer's signed answer."""

    body: dict[str, Any]
    stamp: Stamp
    status: int = 200

    @property
    def head(self) -> Head | None:
        """The peer's ledger head when it answered."""
        return self.stamp.head


class PeerClient:
    """Requests from this party (``local``) to ``peer``. Close it, or use ``with``."""

    def __init__(
        self,
        local: LocalParty,
        peer: Identity,
        keys: SiteKeys,
        *,
        head: Callable[[], Head | None] = lambda: None,
        http: httpx.Client | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.local = local
        self.peer = peer
        self._keys = keys
        self._head = head
        self._skew = float(local.settings.clock_skew_seconds)
        self._owned = http is None
        """A client given to it is its caller's to close."""
        if http is None:
            try:
                context = client_context(local.tls, peer.tls_certificate)
            except ssl.SSLError as exc:
                raise CertificateError(f"{peer.id}'s certificate cannot be trusted: {exc}") from exc
            http = httpx.Client(
                base_url=peer.endpoint,
                verify=context,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            )
        self._http = http

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> PeerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------

    def post(self, kind: str, path: str, body: Mapping[str, Any]) -> Answer:
        """Send ``body`` (JSON) to ``path`` as a message of ``kind``; return the signed answer.
        Raises :class:`PeerUnreachable` or :class:`RequestRefused`."""
        content = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        stamp = self._stamp(kind, content)
        headers = {**seal(stamp, self._keys), "content-type": _JSON}
        response = self._send("POST", path, content=content, headers=headers)
        return self._answer(stamp, response)

    def stream(
        self,
        kind: str,
        path: str,
        chunks: Iterable[bytes | memoryview],
        *,
        length: int,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send a streamed body of ``length`` bytes (objects whose hashes a signed message
        listed before) and return the signed answer. Chunks may be views of larger buffers:
        they go to the socket as they are, uncopied."""
        stamp = self._stamp(kind, None)
        headers = {
            **seal(stamp, self._keys),
            "content-type": "application/octet-stream",
            "content-length": str(length),
        }
        response = self._send(
            "PUT",
            path,
            content=cast(Iterable[bytes], chunks),
            headers=headers,
            params=dict(params or {}),
        )
        return self._answer(stamp, response)

    def get_identity(self) -> dict[str, Any]:
        """The peer's identity as its service publishes it (unsigned request, TLS only)."""
        response = self._send("GET", "/v1/identity")
        if response.status_code != 200:
            raise RequestRefused(
                f"{self.peer.id} did not give its identity (HTTP {response.status_code})",
                party=self.peer.id,
            )
        data = response.json()
        if not isinstance(data, dict):
            raise RequestRefused(f"{self.peer.id} answered with something else", party=self.peer.id)
        return data

    # -- internals --------------------------------------------------------------------------

    def _stamp(self, kind: str, content: bytes | None) -> Stamp:
        return new_stamp(self.local.id, self.peer.id, kind, content, head=self._head())

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        where = f"{self.peer.id} at {self.peer.endpoint}"
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise PeerUnreachable(
                f"{where} did not answer: {_why(exc)}",
                hint=f"is 'onshore serve' running in {self.peer.id}'s folder, and its port open "
                "to this machine? Nothing was sent",
            ) from None
        except httpx.TimeoutException as exc:
            raise PeerUnreachable(
                f"{where} did not answer in time ({type(exc).__name__})",
                hint="the service may be overloaded or a firewall may drop the packets; rerun: "
                "what was done is not done twice",
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise PeerUnreachable(
                f"{where} closed the connection: {_why(exc)}",
                hint=f"{self.peer.id} refuses a certificate it does not have on file: check that "
                f"it trusts {self.local.id}'s identity (onshore party trust there) and that this "
                "party's certificate has not expired; otherwise the service stopped mid-request, "
                "and a rerun completes what was begun",
            ) from None

    def _answer(self, stamp: Stamp, response: httpx.Response) -> Answer:
        content = response.content
        try:
            answer, _ = open_stamp(
                response.headers,
                receiver=self.local.id,
                peers={self.peer.id: self.peer},
                skew=self._skew,
                body=content,
                now=dt.datetime.now(dt.UTC),
            )
        except RequestRefused as exc:
            detail = content[:300].decode(errors="replace")
            raise RequestRefused(
                f"{self.peer.id} answered HTTP {response.status_code} without a valid signature "
                f"({exc.message}): {detail}",
                reason="signature",
                party=self.local.id,
            ) from None
        if answer.reply_to != stamp.id:
            raise RequestRefused(
                f"{self.peer.id}'s answer is not a reply to this request", reason="replay"
            )
        try:
            body = orjson.loads(content) if content else {}
        except orjson.JSONDecodeError:
            raise RequestRefused(
                f"{self.peer.id} answered with something that is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise RequestRefused(f"{self.peer.id} answered with a JSON that is not an object")
        if response.status_code >= 400:
            raise RequestRefused(
                f"{self.peer.id} refused: {body.get('message', response.reason_phrase)}",
                hint=body.get("hint"),
                reason=str(body.get("reason", "refused")),
                party=self.peer.id,
            )
        return Answer(body, answer, response.status_code)


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "its certificate is not the one on file for it (or has expired): " + text.split("]")[-1]
        ).strip()
    return text
