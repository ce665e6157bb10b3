"""Serving a party's app over mutual TLS with uvicorn, knowing who is on the other end.

uvicorn terminates TLS itself, but tells an app nothing of the client's certificate, and a
refused handshake leaves no trace an app could record. So the TLS is done here, in front of
uvicorn's HTTP protocol: :class:`_TlsFront` accepts each connection, runs the handshake with
:meth:`asyncio.loop.start_tls` (the party's certificate, a client certificate required, only
peers' certificates trusted), reports a failed handshake to ``on_refused`` (with the address
and OpenSSL's reason: an unknown certificate, an expired one), and otherwise hands the
connection to uvicorn with the client certificate in the ASGI scope, as the ASGI TLS extension
names it (``scope["extensions"]["tls"]["client_cert_chain"]``, here as DER bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["TLS_EXTENSION", "run_server"]

TLS_EXTENSION: Final = "tls"
_HANDSHAKE_TIMEOUT: Final = 15.0

Refused = Callable[[str, str], None]
"""``on_refused(address, reason)``: a TLS handshake failed."""


def _with_client_cert(app: Any, der: bytes | None) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            extensions = dict(scope.get("extensions") or {})
            extensions[TLS_EXTENSION] = {"client_cert_chain": [der] if der else []}
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return wrapped


class _Handover(asyncio.Protocol):
    """Stands between the TLS layer and uvicorn's protocol until the handshake is done: the
    first bytes of a request may be decrypted in the same moment the handshake completes,
    before uvicorn's protocol has its transport; they wait here, then go through in order."""

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.ready = False
        self.pending: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def start(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)
        self.ready = True
        for data in self.pending:
            self.inner.data_received(data)
        self.pending.clear()
        if self.eof:
            self.inner.eof_received()
        if self.lost is not None:
            self.inner.connection_lost(self.lost[0])

    def data_received(self, data: bytes) -> None:
        if self.ready:
            self.inner.data_received(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool | None:
        if self.ready:
            return self.inner.eof_received()
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready:
            self.inner.connection_lost(exc)
        else:
            self.lost = (exc,)

    def pause_writing(self) -> None:
        if self.ready:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.ready:
            self.inner.resume_writing()


def _front(context: ssl.SSLContext, on_refused: Refused) -> type[asyncio.Protocol]:
    class _TlsFront(asyncio.Protocol):
        """Accepts a TCP connection, does the TLS handshake, then hands it to uvicorn."""

        def __init__(
            self,
            config: uvicorn.Config,
            server_state: Any,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            self.loop = _loop or asyncio.get_event_loop()
            self.inner = H11Protocol(config, server_state, app_state, _loop)
            self.task: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            stream = cast(asyncio.Transport, transport)
            # Nothing is read until the handshake takes the connection over.
            stream.pause_reading()
            self.task = self.loop.create_task(self._upgrade(stream))

        def connection_lost(self, exc: Exception | None) -> None:
            if self.task is not None and not self.task.done():
                self.task.cancel()

        async def _upgrade(self, transport: asyncio.Transport) -> None:
            peer = transport.get_extra_info("peername")
            address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            handover = _Handover(self.inner)
            try:
                tls = await self.loop.start_tls(
                    transport,
                    handover,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=_HANDSHAKE_TIMEOUT,
                )
            except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
                transport.close()
                reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
                on_refused(address, str(reason or exc or type(exc).__name__))
                return
            except asyncio.CancelledError:
                transport.close()
                return
            if tls is None:
                transport.close()
                return
            ssl_object = tls.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            self.inner.app = _with_client_cert(self.inner.app, der)
            handover.start(tls)

    return _TlsFront


def run_server(
    app: Any,
    *,
    host: str,
    port: int,
    context: ssl.SSLContext,
    on_refused: Refused,
    on_ready: Callable[[int], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` on ``host:port`` over mutual TLS until SIGINT or SIGTERM (uvicorn's own
    handling: requests in flight finish). ``port`` 0 takes a free one; ``on_ready`` hears the
    port once the socket listens."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_front(context, on_refused),
        # asyncio's own loop: it honours a transport paused in connection_made (reading starts
        # only after), which the handshake hand-over relies on; uvloop may read first.
        loop="asyncio",
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(False)
    if on_ready is not None:
        on_ready(sock.getsockname()[1])
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            sock.close()
