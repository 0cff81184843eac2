"""Tiny JSON-over-HTTP plumbing for the stand-ins (stdlib ``ThreadingHTTPServer``).

An app is a plain function ``Request -> Response``, so its behaviour is unit-testable
without sockets; ``StandinServer`` serves one on a host/port (port 0: any free port)
in a background thread.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from services.common.logging import get_logger

log = get_logger(__name__)

MAX_BODY_BYTES = 2_000_000


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""
    query: str = ""  # the raw query string, without "?"

    def bearer_token(self) -> str | None:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def json(self) -> Any:
        """The parsed body; ``ValueError`` when it is not JSON."""
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True)
class Response:
    status: int
    body: Any = None  # JSON-able, or bytes sent as they are
    headers: Mapping[str, str] = field(default_factory=dict)


def error(status: int, message: str, **extra: Any) -> Response:
    return Response(status, {"error": message, **extra})


App = Callable[[Request], Response]


def _handler_for(app: App, name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY: the headers and the body go out in two writes; with Nagle the body
        # waited for the client's delayed ACK, ~40 ms on every keep-alive request.
        disable_nagle_algorithm = True
        server_version = f"optout-standin-{name}"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(error(413, "request body too large"))
                return
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            request = Request(
                self.command, url.path, {k.lower(): v for k, v in self.headers.items()}, body, url.query
            )
            self._send(app(request))

        def _send(self, response: Response) -> None:
            body = response.body
            payload = (
                body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode("utf-8")
            )
            self.send_response(response.status)
            if not any(k.lower() == "content-type" for k in response.headers):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve  # the stdlib's handler names

        def log_message(self, format: str, *args: Any) -> None:
            # Unquoted, so an address in a path or query (read-backs, paging) is redacted.
            log.debug("stand-in request", standin=name, line=unquote(format % args))

    return Handler


class StandinServer:
    """Serve ``app`` in a daemon thread; use as a context manager or start()/stop()."""

    def __init__(
        self,
        app: App,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "standin",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: a server-side context to serve https (tests of certificate checks)."""
        self.name = name
        self._server = ThreadingHTTPServer((host, port), _handler_for(app, name))
        self._scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"standin-{name}", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"{self._scheme}://{host.decode() if isinstance(host, bytes) else host}:{self.port}"

    def start(self) -> StandinServer:
        self._thread.start()
        log.info("stand-in listening", standin=self.name, url=self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
