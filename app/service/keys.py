"""Who is asking: an authenticated key's scopes and login, and the scope checks on them.

How a key is found in a request is HTTP's business (app/api/auth.py); what it may do is
decided here, by the services it calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.errors import Forbidden

ScopeName = Literal["read", "write", "migrate", "admin"]


@dataclass(frozen=True)
class ApiKey:
    """An authenticated caller."""

    id: str
    scopes: frozenset[str]
    role: str | None

    def can(self, scope: ScopeName) -> bool:
        """True when the key holds `scope` (write includes read)."""
        return scope in self.scopes or (scope == "read" and "write" in self.scopes)


# The identity used when authentication is switched off: allowed everything, no role.
ANONYMOUS = ApiKey("anonymous", frozenset({"read", "write", "migrate", "admin"}), None)


def require(key: ApiKey, *scopes: ScopeName) -> None:
    """403 unless the key holds one of `scopes`."""
    if not any(key.can(s) for s in scopes):
        raise Forbidden(f"key {key.id!r} lacks the {' or '.join(scopes)} scope for this request")
