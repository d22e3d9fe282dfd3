"""API keys over HTTP: the key a request sends, found once per request (what a key may
do: app/service/keys.py).

Keys are configured as SHA-256 hashes only (MIRRORPOOL_API_KEYS / MIRRORPOOL_API_KEYS_FILE)
and sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Scopes:

    read     read-only queries (run in READ ONLY transactions) and read-only named queries
    write    any query, transaction and named query (read included)
    migrate  the migration endpoints (repair needs admin)
    admin    promotion, fences, repair, /pool/stats

A key may name a PostgreSQL role: its statements run after SET LOCAL ROLE to it, so table
privileges and row-level security apply.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated
from urllib.parse import unquote, urlsplit

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from app.errors import TooManyRequests, Unauthorized
from app.service.keys import ANONYMOUS, ApiKey, ScopeName, require
from app.settings import ApiKeyConfig, Settings

# For the OpenAPI document and the /docs Authorize button; checking is done below.
bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as configured."""
    return hashlib.sha256(key.encode()).hexdigest()


class Keyring:
    """The configured keys by hash, and how many requests each has in flight."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth == "keys"
        self.max_inflight = settings.max_inflight_per_key
        configs: Iterable[ApiKeyConfig] = settings.all_api_keys()
        self._by_hash = {
            c.sha256.lower(): ApiKey(c.id, frozenset(c.scopes), c.role) for c in configs
        }
        self.inflight: Counter[str] = Counter()

    def identify(self, scope: Scope) -> ApiKey:
        """The caller of a request; 401 when auth is on and no valid key was sent."""
        if not self.enabled:
            return ANONYMOUS
        return self.check(presented_key(scope), scope)

    def check(self, presented: str | None, scope: Scope) -> ApiKey:
        """The key `presented` (found in the request by the caller); 401 when auth is on and
        it is missing or not valid."""
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            if scope.get("path") == NEON_PATH:
                raise Unauthorized(
                    "an API key is required: the password of the connection string, or authToken"
                )
            raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
        key = self._by_hash.get(hash_key(presented))
        if key is None:
            raise Unauthorized("the API key is not valid")
        scope.setdefault("state", {})["key_id"] = key.id
        return key

    def enter(self, key: ApiKey) -> None:
        """Count a request in; 429 beyond the key's in-flight limit."""
        if self.enabled and self.inflight[key.id] >= self.max_inflight:
            raise TooManyRequests(
                f"key {key.id!r} already has {self.max_inflight} requests in flight"
            )
        self.inflight[key.id] += 1

    def leave(self, key: ApiKey) -> None:
        """Count a request out."""
        self.inflight[key.id] -= 1
        if self.inflight[key.id] <= 0:
            del self.inflight[key.id]


def presented_key(scope: Scope) -> str | None:
    """The key a request sends as `Authorization: Bearer <key>` or `X-API-Key`, if any; on
    POST /sql (Neon's protocol) also as the password of its connection string."""
    presented = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                presented = token.strip()
        elif name == b"x-api-key" and value:
            presented = value.decode("latin-1").strip()
    if presented is None and scope.get("path") == NEON_PATH:
        presented = connection_password(scope)
    return presented


# Neon's driver sends the database URL it was given, the key as its password.
NEON_PATH = "/sql"
NEON_CONNECTION_STRING = b"neon-connection-string"


def connection_password(scope: Scope) -> str | None:
    """The password of the Neon-Connection-String URL, if it has one. The header is a
    secret: nothing of it goes into an error, a log line or a metric."""
    value = next((v for k, v in scope["headers"] if k == NEON_CONNECTION_STRING), None)
    if value is None:
        return None
    try:
        password = urlsplit(value.decode("latin-1")).password
    except ValueError:
        return None
    return unquote(password) if password else None


def caller_of(scope: Scope, keyring: Keyring) -> ApiKey:
    """The caller of a request: the key the gate identified (and counts) from its headers
    (app/api/gate.py), else identified now."""
    key = (scope.get("state") or {}).get("api_key")
    return key if isinstance(key, ApiKey) else keyring.identify(scope)


async def _caller(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    _header: Annotated[str | None, Depends(api_key_header)],
) -> ApiKey:
    keyring: Keyring = request.app.state.keyring
    return caller_of(request.scope, keyring)


CallerDep = Annotated[ApiKey, Depends(_caller)]


async def counted(key: CallerDep) -> ApiKey:
    """The caller of a route under /v1/, which the gate counts against the key's in-flight
    limit from the request's headers on (app/api/gate.py)."""
    return key


def scoped(*scopes: ScopeName) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    """A dependency that authenticates and requires one of `scopes`."""

    async def dependency(key: CallerDep) -> ApiKey:
        require(key, *scopes)
        return key

    return dependency
