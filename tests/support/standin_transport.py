"""Route an httpx client to a stand-in's handler in-process (``httpx.MockTransport``),
counting the calls and keeping the requests for assertions."""

from __future__ import annotations

import httpx

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
