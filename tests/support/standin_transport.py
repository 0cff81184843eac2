"""Route an httpx client to a stand-in's handler in-process (``httpx.MockTransport``),
counting the calls and keeping the requests for assertions."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from services.standins.web import App, Request


class Routed:
    def __init__(self, app: App) -> None:
        self.app = app
        self.requests: list[httpx.Request] = []

    @property
    def calls(self) -> int:
        return len(self.requests)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.app(
            Request(
                request.method,
                request.url.path,
                {k.lower(): v for k, v in request.headers.items()},
                request.content,
                request.url.query.decode("ascii"),
            )
        )
        if isinstance(answer.body, bytes):
            return httpx.Response(answer.status, content=answer.body, headers=dict(answer.headers))
        if answer.body is None:
            return httpx.Response(answer.status, headers=dict(answer.headers))
        return httpx.Response(answer.status, json=answer.body, headers=dict(answer.headers))

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


class _Raw:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def stream(self, **_: object) -> list[bytes]:
        return [self.payload]


class RoutedBotocore:
    """Answer a botocore client's requests with a stand-in's handler in-process: botocore's
    ``before-send`` event returns the stand-in's answer instead of sending (the request is
    signed as it would be on the wire; the ``host`` header is the URL's, as urllib3 sends it)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.targets: list[str] = []

    def attach(self, client: Any) -> None:  # botocore ships no types
        client.meta.events.register("before-send", self.send)

    def send(self, request: AWSPreparedRequest, **_: object) -> AWSResponse:
        url = urlsplit(request.url)
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()
        }
        headers.setdefault("host", url.netloc)
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else bytes(body)
        self.targets.append(headers.get("x-amz-target", "").removeprefix("PinpointSMSVoiceV2."))
        answer = self.app(Request(request.method, url.path or "/", headers, raw, url.query))
        payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        return AWSResponse(request.url, answer.status, dict(answer.headers), _Raw(payload))
