"""CSRF tokens for the desk's forms: an HMAC of the signed-in user under a per-process key.

A page from another site can make a browser send a POST with the user's cached Basic
credentials, but it cannot read the desk's pages, so it cannot know the token. Binding the
token to the user means one person's token is worthless to another; the per-process key
means a token from a page served before a restart is refused (reload the page).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

FIELD: Final = "csrf_token"


class CsrfTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def token(self, identity: str) -> str:
        return hmac.new(self._key, identity.encode("utf-8"), hashlib.sha256).hexdigest()

    def refusal(self, identity: str, presented: str | None) -> str | None:
        """None when ``presented`` is ``identity``'s token; else why it is refused."""
        if not presented:
            return f"the form carries no {FIELD}: reload the desk and use its buttons"
        if not hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.token(identity).encode()
        ):
            return (
                f"the {FIELD} is not valid for {identity} (from another user, or from a page "
                "served before the receiver restarted): reload the desk and try again"
            )
        return None
