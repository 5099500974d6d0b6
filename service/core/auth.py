"""Optional API keys, checked in constant time. No keys configured means open access. Labels
fed back need keys of their own (`FeedbackKeys`)."""

from __future__ import annotations

import hashlib
import hmac

from .errors import Forbidden, Unauthenticated


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


class FeedbackKeys:
    """Who may label answers: labels drive promotion by evidence (#27), so any client able to
    label its own requests with a canary's answers could promote it. Where API keys are on (or
    feedback keys are set), a label needs a feedback key or an admin key; with neither, labels
    are open, as every route is."""

    def __init__(self, api_keys: ApiKeys, feedback_keys: tuple[str, ...], admin_keys: tuple[str, ...]) -> None:
        self._api_keys = api_keys  # checked first: no key, or an unknown one, is a 401 as anywhere
        self._labellers = ApiKeys(feedback_keys + admin_keys)
        self._required = api_keys.enabled or bool(feedback_keys)

    def check(self, authorization: str | None) -> None:
        if not self._required:
            return
        self._api_keys.check(authorization)
        try:
            if self._labellers.enabled:
                self._labellers.check(authorization)
                return
        except Unauthenticated:
            if not self._api_keys.enabled:  # feedback keys without API keys: any other key is unknown
                raise Unauthenticated("labels need a feedback key (feedback_keys) or an admin key: send "
                                      "'Authorization: Bearer <key>'", "authorization") from None
        raise Forbidden("this API key may not send labels: they need a feedback key (feedback_keys) or an "
                        "admin key", "authorization")
