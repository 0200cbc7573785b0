"""Body size limit as a pure ASGI middleware: a declared Content-Length over the
limit is refused before a byte is read; a streamed body is counted as it arrives."""

from __future__ import annotations

import orjson

from ..errors import PayloadTooLarge


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = 0
                if n > self.max_bytes:
                    return await _reject(send, n, self.max_bytes)
        seen = 0
        limit = self.max_bytes

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return msg

        return await self.app(scope, counted, send)


async def _reject(send, n: int, limit: int) -> None:
    body = orjson.dumps(
        {"error": {"type": "payload_too_large", "message": f"request body of {n} bytes exceeds the limit of {limit} bytes"}}
    )
    await send({
        "type": "http.response.start",
        "status": 413,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
