"""Optional API keys, checked in constant time. No keys configured means open access."""

from __future__ import annotations

import hashlib
import hmac

from .errors import Unauthenticated


class ApiKeys:
    def __init__(self, keys: tuple[str, ...]) -> None:
        # Compare digests so every comparison has the same length and time.
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Accept `Bearer <key>` (the HTTP header and the gRPC metadata value alike)."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("an API key is required: send 'Authorization: Bearer <key>'", "authorization")
        digest = hashlib.sha256(token.strip().encode()).digest()
        if not any([hmac.compare_digest(digest, known) for known in self._digests]):
            raise Unauthenticated("the API key is not valid", "authorization")
