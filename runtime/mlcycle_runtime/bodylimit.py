"""The request size limit of the router and the model server: 413 past it, before the app reads a byte.

One ASGI middleware for both (the router is a bare ASGI app, the model server a BentoML service that takes ASGI
middleware). It reads an HTTP request's body up to the limit and hands the app the whole body as one message, so
a body past the limit, declared by Content-Length or streamed in chunks, is refused without being held in full
and never reaches the app: no JSON parsing, no proxying, no scoring of an oversized request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# The default limit (ModelDeployment spec.serving.maxRequestSize): a thousand records of a few dozen features fit.
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
SETTING = "spec.serving.maxRequestSize"
# The model server's refusal reason (the `reason` label of mlcycle_server_request_errors_total).
REASON = "too_large"


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body size, None when absent (chunked) or not a number (the HTTP parser refuses those)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


def too_large(size: int, limit: int, *, streamed: bool) -> bytes:
    """The 413's JSON body, shaped as the model server's other refusals: both sizes and the setting to raise."""
    seen = f"more than {limit:,} bytes arrived" if streamed else f"Content-Length is {size:,} bytes"
    return json.dumps({"error": f"request body too large: {seen}; this deployment accepts at most {limit:,} bytes "
                                f"({SETTING})", "fields": []}).encode()


class BodyLimit:
    """ASGI middleware: refuse an HTTP request whose body is over `max_bytes` (a number, or a callable read per
    request, so a reloaded config applies) with 413, and call `on_refused()` for each refusal (a metric)."""

    def __init__(self, app: App, max_bytes: int | Callable[[], int] = DEFAULT_MAX_REQUEST_BYTES,
                 on_refused: Callable[[], None] | None = None) -> None:
        self.app = app
        self._limit = max_bytes if callable(max_bytes) else (lambda: max_bytes)
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit()
        declared = content_length(scope.get("headers") or [])
        if declared is not None and declared > limit:
            await self._refuse(send, too_large(declared, limit, streamed=False))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before the body ended: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, too_large(size, limit, streamed=True))
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        pending = True

        async def whole_body() -> dict[str, Any]:
            nonlocal pending
            if pending:
                pending = False
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes

        await self.app(scope, whole_body, send)

    async def _refuse(self, send: Send, body: bytes) -> None:
        if self.on_refused is not None:
            self.on_refused()
        # The rest of an oversized body is never read: the connection cannot carry another request after it.
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
