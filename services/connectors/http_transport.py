"""An httpx transport on the standard library's ``http.client``: the same requests on the wire
for less of the connector's CPU (issue #15).

A provider call through httpx's default transport (httpcore + h11) cost the connector's process
~300 µs of CPU on a quiet machine and 0.6-0.9 ms under load, mostly in httpcore's connection
pool and h11's state machine; ``http.client`` sends the same bytes for ~90 µs (``make
bench-call-cpu``). Everything above the transport stays httpx's: the request as the client
builds it (every header, in order, including ``Host``, ``Accept-Encoding`` and
``Content-Length``), the decoding of ``Content-Encoding`` when the response is read, cookies,
the ``Client``'s timeouts, env proxies (httpx mounts its own transports for those).

What it keeps from httpcore's behaviour:

* keep-alive connections per origin, reused by one request at a time (thread-safe: the
  partners' threads share one client), at most ``max_idle`` kept, none kept after
  ``keepalive_expiry`` seconds idle or when the server closes or asks to (``Connection:
  close``); before reuse an idle connection that became readable (the server closed it, or
  sent something unasked) is discarded, as httpcore does;
* TLS with the client's verification (``httpx.create_ssl_context``: certifi's CAs, or the
  destination's private bundle), SNI and host name checks;
* errors as httpx's: ``ConnectTimeout``/``ConnectError`` while connecting, ``WriteTimeout``/
  ``WriteError`` while sending, ``ReadTimeout``/``ReadError`` while reading,
  ``RemoteProtocolError`` for an answer that is not HTTP/1.1 or ends early (all of them
  ``httpx.TransportError``: the connectors retry).

HTTP/1.1 only (httpx's default too: its HTTP/2 needs the ``h2`` extra, which we do not use).
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

DEFAULT_KEEPALIVE_EXPIRY = 5.0  # httpx's default Limits.keepalive_expiry
DEFAULT_MAX_IDLE = 20  # httpx's default Limits.max_keepalive_connections

Origin = tuple[str, str, int]


class _Idle:
    __slots__ = ("connection", "since")

    def __init__(self, connection: http.client.HTTPConnection, since: float) -> None:
        self.connection = connection
        self.since = since


def _readable(sock: socket.socket | None) -> bool:
    """Whether an idle connection's socket has something to read: EOF (the server closed it)
    or bytes nobody asked for. Either way it cannot carry a request."""
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None, float | None]:
    """(connect, read, write) seconds of the request (the client puts them in its extensions)."""
    timeout = request.extensions.get("timeout") or {}
    return timeout.get("connect"), timeout.get("read"), timeout.get("write")


class HttpClientTransport(httpx.BaseTransport):
    """``httpx.Client(transport=HttpClientTransport(...))``: see the module docstring."""

    def __init__(
        self,
        verify: ssl.SSLContext | bool = True,
        max_idle: int = DEFAULT_MAX_IDLE,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
    ) -> None:
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None  # made on the first https request
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._lock = threading.Lock()
        self._idle: dict[Origin, list[_Idle]] = {}
        self._closed = False

    # --- connections ------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context(verify=self._verify)
        return self._ssl

    def _checkout(self, origin: Origin) -> http.client.HTTPConnection | None:
        """An idle connection to ``origin`` that can carry a request, or None."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                item = idle.pop()
            if now - item.since <= self._expiry and not _readable(item.connection.sock):
                return item.connection
            item.connection.close()

    def _checkin(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if not self._closed and len(idle) < self._max_idle:
                idle.append(_Idle(connection, time.monotonic()))
                return
        connection.close()

    def _connect(self, origin: Origin, timeout: float | None) -> http.client.HTTPConnection:
        scheme, host, port = origin
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context())
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.connect()
        except TimeoutError as exc:
            connection.close()
            raise httpx.ConnectTimeout(str(exc) or "timed out while connecting") from exc
        except OSError as exc:  # refused, unreachable, DNS, a TLS handshake or certificate refused
            connection.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        if connection.sock is not None:
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as httpcore
        return connection

    # --- httpx.BaseTransport ----------------------------------------------------------------
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin: Origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        connect_timeout, read_timeout, write_timeout = _timeouts(request)
        body = request.read()
        connection = self._checkout(origin) or self._connect(origin, connect_timeout)
        keep = False
        try:
            with _mapped(httpx.WriteTimeout, httpx.WriteError):
                if connection.sock is not None:
                    connection.sock.settimeout(write_timeout)
                connection.putrequest(
                    request.method, url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True
                )
                for name, value in request.headers.raw:
                    connection.putheader(name, value)
                connection.endheaders(body or None)
            with _mapped(httpx.ReadTimeout, httpx.ReadError):
                if connection.sock is not None:
                    connection.sock.settimeout(read_timeout)
                answer = connection.getresponse()
                content = answer.read()
            keep = not answer.will_close
            return httpx.Response(
                answer.status,
                headers=answer.getheaders(),
                stream=httpx.ByteStream(content),
                request=request,
                extensions={
                    "http_version": b"HTTP/1.1" if answer.version == 11 else b"HTTP/1.0",
                    "reason_phrase": answer.reason.encode("latin-1", "replace"),
                },
            )
        finally:
            if keep:
                self._checkin(origin, connection)
            else:
                connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [item for items in self._idle.values() for item in items]
            self._idle.clear()
        for item in idle:
            item.connection.close()


@contextmanager
def _mapped(timeout: type[httpx.TransportError], failed: type[httpx.TransportError]) -> Iterator[None]:
    """http.client's and the socket's errors as httpx's (see the module docstring)."""
    try:
        yield
    except TimeoutError as exc:
        raise timeout(str(exc) or "timed out") from exc
    except http.client.HTTPException as exc:  # a bad status line, a response cut short, ...
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
    except OSError as exc:  # reset, broken pipe, a TLS error mid-stream
        raise failed(str(exc) or type(exc).__name__) from exc
