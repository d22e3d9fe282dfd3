"""The checks a request passes on its headers alone, before anything reads its body.

- With MIRRORPOOL_AUTH=disabled (loopback development): a Host that is not a loopback name
  (DNS rebinding) or an Origin of another site (a web page's cross-site request) is refused.
- A body on a JSON route must say it is JSON: a web page can send `text/plain`, form and
  multipart bodies cross-site without asking first, JSON it cannot. 415 otherwise.
- Routes that need a key get it checked here, so a request without a valid key is answered
  401 before its body is read, and a request counts against its key's in-flight limit from
  its headers on, not from when its (perhaps slow) body has arrived.
- A request let in is counted in flight until it is answered (the lifespan waits for those
  at shutdown, app/api/inflight.py), and against its key's limit.
- A body over MIRRORPOOL_MAX_BODY_BYTES is 413: by its Content-Length here, or, sent without
  one, once its bytes go over (app/api/body_limit.py). The server reads no more of a body
  than its Content-Length says, so a body that has one is not counted again.

Every refusal closes the connection, so an unread body costs nothing either.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.auth import NEON_PATH, Keyring
from app.api.body_limit import limited, too_large
from app.api.errors import error_response
from app.api.inflight import InFlight
from app.errors import Forbidden, MirrorpoolError, UnsupportedMediaType
from app.settings import Settings

# Routes whose body is not JSON by their protocol: exempt from the 415 rule, not from keys.
# Neon's SQL-over-HTTP driver posts `text/plain;charset=UTF-8`.
NON_JSON_BODIES = frozenset({NEON_PATH})

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def needs_key(path: str) -> bool:
    """True for the routes every request of which needs a key (the probes, the docs,
    /metrics and /pool/stats are open or check the key themselves)."""
    return path.startswith("/v1/") or path == NEON_PATH


def host_name(authority: str) -> str:
    """The host of a Host header or an origin's authority, without port or brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rpartition(":")[0] if ":" in authority else authority


def is_loopback(host: str) -> bool:
    """True for names that always lead to this machine."""
    return (
        host in LOOPBACK_NAMES
        or host.endswith(".localhost")  # RFC 6761: resolved to loopback, never by DNS
        or (host.startswith("127.") and host.replace(".", "").isdigit())
    )


def is_json(content_type: bytes) -> bool:
    """True for application/json and application/*+json, whatever their parameters."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class RequestGate:
    """ASGI middleware: the header checks above, for every route (app/main.py puts it in
    the one stack, inside the request id)."""

    def __init__(
        self, app: ASGIApp, settings: Settings, keyring: Keyring, inflight: InFlight
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.inflight = inflight
        self.check_origin = settings.auth == "disabled"
        self.check_host = self.check_origin and not settings.allow_remote_without_auth
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            length = self._check(scope)
            key = self.keyring.identify(scope) if needs_key(scope["path"]) else None
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                raise too_large(self.max_body)
            if key is not None:
                self.keyring.enter(key)
        except MirrorpoolError as exc:
            response = error_response(scope, exc)
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        if length is None:
            receive = limited(receive, self.max_body)
        if key is not None:
            scope.setdefault("state", {})["api_key"] = key
        self.inflight.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight.leave()
            if key is not None:
                self.keyring.leave(key)

    def _check(self, scope: Scope) -> bytes | None:
        """The checks of the request's site and body type; its Content-Length, if any."""
        host = origin = content_type = length = None
        body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
                body = value != b"0"
            elif name == b"transfer-encoding":
                body = True
        if self.check_origin:
            self._check_site(host, origin)
        if body and scope["path"] not in NON_JSON_BODIES and not is_json(content_type or b""):
            raise UnsupportedMediaType(
                "the request body must be JSON, sent with Content-Type: application/json"
                + (f" (got {content_type.decode('latin-1')!r})" if content_type else "")
            )
        return length

    def _check_site(self, host: bytes | None, origin: bytes | None) -> None:
        authority = (host or b"").decode("latin-1")
        if self.check_host and not is_loopback(host_name(authority)):
            raise Forbidden(
                "with MIRRORPOOL_AUTH=disabled only loopback names are served (Host: "
                f"{authority!r}): a page elsewhere could have its name lead here"
            )
        if origin is None:
            return
        text = origin.decode("latin-1")
        _, sep, site = text.partition("://")
        if not sep or not (is_loopback(host_name(site)) or site.lower() == authority.lower()):
            raise Forbidden(
                f"with MIRRORPOOL_AUTH=disabled requests from other sites (Origin: {text!r}) "
                "are refused"
            )
