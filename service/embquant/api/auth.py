"""API keys, as a pure ASGI layer in front of everything but the metrics: with
``EMBQUANT_API_KEYS`` set, every request but the probes (/healthz, /readyz) needs
``Authorization: Bearer <key>``; without it, or with a key not in the list, the
answer is 401 with the one error body and ``WWW-Authenticate: Bearer``, given from
the headers before a byte of the body is read (the body is then drained as
Admission drains a refused one). Without keys the layer is not in the app at all.

Keys are compared by their SHA-256 digests with `hmac.compare_digest`, against every
key without stopping at a match: the time taken says nothing about how much of a key
was right, nor which key matched, nor a key's length. Neither the keys nor the
header are logged or put in a message.
"""

from __future__ import annotations

import hashlib
import hmac

from .limits import DRAIN_FACTOR, DRAIN_SECONDS, Drain, reject

#: The probes: Kubernetes (or a load balancer) calls them without a key.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class Auth:
    def __init__(self, app, keys: list[str], settings, metrics=None):
        if not keys:
            raise ValueError("Auth needs at least one key")
        self.app = app
        self.digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)
        self.settings = settings
        self.metrics = metrics

    def allows(self, authorization: bytes | None) -> bool:
        if authorization is None:
            return False
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        given = hashlib.sha256(token.strip()).digest()
        ok = False
        for d in self.digests:
            ok |= hmac.compare_digest(given, d)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        authorization = length = None
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                authorization = v
            elif k == b"content-length":
                length = v
        if self.allows(authorization):
            return await self.app(scope, receive, send)
        if authorization is None:
            message = "this service needs an API key: send the header Authorization: Bearer <key>"
            challenge = b'Bearer realm="embquant"'
        else:
            message = "the API key sent is not one this service accepts (Authorization: Bearer <key>)"
            challenge = b'Bearer realm="embquant", error="invalid_token"'
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None
        st = self.settings
        drain = Drain(receive, declared, DRAIN_FACTOR * st.max_body_bytes, min(st.body_timeout_s, DRAIN_SECONDS))
        await reject(send, 401, "unauthorized", message, [(b"www-authenticate", challenge)], drain=drain,
                     metrics=self.metrics)
