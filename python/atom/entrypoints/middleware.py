"""Plain ASGI middleware (no BaseHTTPMiddleware: it would break streaming disconnect detection).

- ``BodySizeLimit``: a body over the limit is a 413, refused from Content-Length before reading, or
  while reading a chunked body as soon as the running total passes the limit.
- ``APIKeyAuth``: with ``--api-key``, the API routes need ``Authorization: Bearer <key>`` (401
  otherwise); /health, /metrics and the tokenizer routes stay open, as in vLLM.
"""

from __future__ import annotations

import hmac
import json

from atom.entrypoints.errors import APIError, error_body


async def _send_error(send, message: str, status: int) -> None:
    body = json.dumps(error_body(message, status)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(APIError):
    """Raised from ``receive`` inside the app, whose APIError handler answers 413."""

    def __init__(self, message: str):
        super().__init__(message, status=413)


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body too large: the limit is {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_error(send, f"invalid Content-Length {value!r}", 400)
                if declared > self.max_bytes:
                    return await _send_error(send, f"{too_large} (got {declared})", 413)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(too_large)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, too_large, 413)


class APIKeyAuth:
    PROTECTED_PREFIXES = ("/v1", "/start_profile", "/stop_profile")

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        if not scope["path"].startswith(self.PROTECTED_PREFIXES):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        if not given:
            return await _send_error(
                send, "missing API key: send 'Authorization: Bearer <key>'", 401
            )
        if not hmac.compare_digest(given, self.expected):
            return await _send_error(send, "invalid API key", 401)
        return await self.app(scope, receive, send)
