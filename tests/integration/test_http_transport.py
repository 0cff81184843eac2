"""The connectors' httpx transport on ``http.client`` (services/connectors/http_transport.py)
against a real local HTTP/1.1 server: the request arrives as httpx built it, keep-alive
connections are reused (and dropped when the server closes them), bodies are decoded as httpx
decodes them, and every failure is the httpx error the connectors already handle."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from services.connectors.http import make_client
from tests.support.pipeline import wait_until

Reply = Callable[[BaseHTTPRequestHandler, bytes], None]
_CLOSED: dict[str, int] = {}  # server URL -> connections it closed


def closed_connections(url: str) -> int:
    return _CLOSED.get(url, 0)


def json_reply(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    payload = json.dumps({"echo": json.loads(body or b"null"), "path": handler.path}).encode()
    handler.send_response(201)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


@contextmanager
def server(reply: Reply = json_reply) -> Iterator[tuple[str, list[tuple[str, int, dict[str, str]]]]]:
    """A local HTTP/1.1 server; yields its URL and, per request, (method, client port, headers)."""
    seen: list[tuple[str, int, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.client_address[1], dict(self.headers.items())))
            reply(self, body)

        do_GET = do_POST = do_DELETE = _any

        def log_message(self, format: str, *args: object) -> None:
            return None

    class Server(ThreadingHTTPServer):
        def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
            super().shutdown_request(request)
            _CLOSED[url] = _CLOSED.get(url, 0) + 1

        def handle_error(self, request: object, client_address: object) -> None:
            return None  # a client that gave up (the timeout test) is not news

    httpd = Server(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_post_arrives_as_httpx_built_it_and_its_connection_is_reused() -> None:
    client = make_client(5.0)
    with server() as (url, seen):
        for n in range(3):
            response = client.post(f"{url}/v3/x?y={n}", json={"n": n}, headers={"Authorization": "Bearer t"})
            assert response.status_code == 201
            assert response.reason_phrase == "Created"
            assert response.json() == {"echo": {"n": n}, "path": f"/v3/x?y={n}"}
    client.close()
    assert len({port for _, port, _ in seen}) == 1  # one keep-alive connection for the three
    headers = seen[0][2]
    assert headers["Authorization"] == "Bearer t"
    assert headers["User-Agent"] == "optout-connector/1"
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == url.removeprefix("http://")
    assert "gzip" in headers["Accept-Encoding"]


def test_a_connection_the_server_closes_is_not_reused() -> None:
    def closing(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Length", "2")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(b"ok")

    client = make_client(5.0)
    with server(closing) as (url, seen):
        assert [client.get(url).text for _ in range(3)] == ["ok"] * 3
    client.close()
    assert len({port for _, port, _ in seen}) == 3


def test_an_idle_connection_closed_by_the_server_is_replaced_not_an_error() -> None:
    """The server closes a keep-alive connection after its answer without saying so (as one
    whose idle timeout ran out does): the next request sees it closed and takes a new one."""

    def hanging_up(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        json_reply(handler, body)
        handler.close_connection = True  # no "Connection: close": the client keeps it idle

    client = make_client(5.0)
    with server(hanging_up) as (url, seen):
        assert client.post(url, json=1).status_code == 201
        wait_until(lambda: closed_connections(url) == 1, timeout=5, message="the server to hang up")
        assert client.post(url, json=2).json()["echo"] == 2
    client.close()
    assert len({port for _, port, _ in seen}) == 2


def test_a_gzip_body_is_decoded_and_a_broken_one_is_an_httpx_decoding_error() -> None:
    def zipped(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        payload = gzip.compress(b'{"ok": true}') if handler.path == "/good" else b"not gzip"
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    client = make_client(5.0)
    with server(zipped) as (url, _):
        assert client.get(f"{url}/good").json() == {"ok": True}
        with pytest.raises(httpx.DecodingError):
            client.get(f"{url}/bad")
    client.close()


def test_failures_are_the_httpx_transport_errors_the_connectors_handle() -> None:
    def silent(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        handler.close_connection = True  # no answer at all

    def slow(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        threading.Event().wait(1.0)
        json_reply(handler, body)

    client = make_client(0.3)
    with server(silent) as (url, _), pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    with server(slow) as (url, _), pytest.raises(httpx.ReadTimeout):
        client.get(url)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")
    client.close()
