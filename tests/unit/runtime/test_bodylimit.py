"""The request size limit as ASGI: what the app sees and what the client gets, with no server in between."""

from __future__ import annotations

import asyncio
import json

from mlcycle_runtime.bodylimit import BodyLimit


class App:
    """Records the requests it gets, reading each body to the end as a framework does, and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.scopes: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(scope["type"])
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(middleware: BodyLimit, chunks: list[bytes], headers: list[tuple[bytes, bytes]] = (),
         disconnect_after: int | None = None) -> tuple[list[dict], int]:
    """One HTTP request through the middleware: the messages sent back, and how many body messages were read."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if disconnect_after is not None:
        messages = [*messages[:disconnect_after], {"type": "http.disconnect"}]
    read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        read += 1
        return messages[read - 1] if read <= len(messages) else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": list(headers)}
    asyncio.run(middleware(scope, receive, send))
    return sent, read


def status_and_body(sent: list[dict]) -> tuple[int, dict | bytes]:
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    status = sent[0]["status"]
    return status, (json.loads(body) if status == 413 else body)


def test_a_body_within_the_limit_reaches_the_app_whole_even_in_chunks():
    app = App()
    sent, _ = call(BodyLimit(app, 10), [b"0123", b"4567", b"89"])
    assert status_and_body(sent) == (200, b"ok")
    assert app.bodies == [b"0123456789"]  # exactly the limit is allowed


def test_a_declared_size_over_the_limit_is_refused_before_a_byte_is_read():
    app, refused = App(), []
    sent, read = call(BodyLimit(app, 10, on_refused=lambda: refused.append(1)), [b"x" * 11],
                      headers=[(b"Content-Length", b"11")])
    status, body = status_and_body(sent)
    assert status == 413 and read == 0 and app.bodies == [] and refused == [1]
    assert body["error"] == ("request body too large: Content-Length is 11 bytes; this deployment accepts at most "
                             "10 bytes (spec.serving.maxRequestSize)")
    assert (b"connection", b"close") in sent[0]["headers"]


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit_without_reading_the_rest():
    app = App()
    sent, read = call(BodyLimit(app, 10), [b"x" * 6, b"x" * 6, b"x" * 6, b"x" * 6])
    status, body = status_and_body(sent)
    assert status == 413 and read == 2 and app.bodies == []
    assert "more than 10 bytes arrived" in body["error"]


def test_the_limit_is_read_per_request_so_a_new_config_applies():
    app, limit = App(), [100]
    middleware = BodyLimit(app, lambda: limit[0])
    assert status_and_body(call(middleware, [b"x" * 50])[0])[0] == 200
    limit[0] = 20
    assert status_and_body(call(middleware, [b"x" * 50])[0])[0] == 413


def test_a_client_gone_mid_body_gets_no_answer_and_the_app_no_request():
    app = App()
    sent, _ = call(BodyLimit(app, 100), [b"x" * 10, b"x" * 10, b"x" * 10], disconnect_after=1)
    assert sent == [] and app.bodies == []


def test_other_scopes_pass_through_untouched():
    app = App()

    async def receive() -> dict:
        return {"type": "lifespan.startup"}

    async def send(message: dict) -> None:
        pass

    asyncio.run(BodyLimit(app, 1)({"type": "lifespan"}, receive, send))
    assert app.scopes == ["lifespan"]
