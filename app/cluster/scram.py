"""SCRAM-SHA-256 keys instead of passwords: asking the server for its verifier's salt, and
deriving the keys.

A password login makes libpq run PBKDF2 (4,096 rounds of HMAC-SHA-256 by default) on the event
loop's thread with the GIL held: about 4.5 ms of CPU per new connection, which every other
client waits through. libpq 18 takes the two keys PBKDF2 leads to instead (`scram_client_key`,
`scram_server_key`: a login with them costs about a third). Their salt and iteration count are
those of the server's stored verifier, which the server says in its first SCRAM message,
before the client has sent anything secret: probe() asks for them and hangs up there, and
derive_keys() runs PBKDF2 once (keys_for(): in a thread). The pools' use of them, a cache per
login, is app/cluster/scram_keys.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import conninfo as pg_conninfo

logger = logging.getLogger(__name__)

# A verifier asking for more rounds than this is not followed (the derivation would hold a
# thread for seconds); PostgreSQL's default is 4,096.
MAX_ITERATIONS = 1_000_000
DEFAULT_CONNECT_TIMEOUT_S = 5.0
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_PROTOCOL_3_0 = 196608
_AUTH_SASL, _AUTH_SASL_CONTINUE = 10, 11
_MECHANISM = b"SCRAM-SHA-256"
_CLOSE_S = 1.0
# Longer than any authentication message a server sends before the salt.
_MAX_MESSAGE = 16_384


@dataclass(frozen=True)
class Verifier:
    """What the server's stored verifier says about deriving the keys (no secret)."""

    salt: bytes
    iterations: int


@dataclass(frozen=True)
class Keys:
    """ClientKey and ServerKey, base64, as libpq takes them (secrets: never log them)."""

    client: str
    server: str

    def __repr__(self) -> str:
        return "Keys(***)"


@dataclass(frozen=True)
class Target:
    """Where and as whom a conninfo logs in, as the probe needs it."""

    host: str
    port: int
    user: str
    dbname: str
    sslmode: str
    timeout: float
    server_name: str | None  # for TLS (SNI), when the address is a name
    # The conninfo's TLS files: sslmode verify-ca / verify-full verify the probe's server
    # as libpq would (it is sent the login's user and database), a client certificate goes.
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    sslpassword: str | None = field(default=None, repr=False)  # a secret


class _NotScram(Exception):
    """The server answered with something other than a SCRAM-SHA-256 challenge."""


def target_of(params: dict[str, str]) -> Target | None:
    """The one server a parsed conninfo reaches, or None when it is not one plain server
    (several hosts, a service file, direct TLS, GSSAPI required, no host or user given)."""
    if params.get("service") or params.get("sslnegotiation", "postgres") != "postgres":
        return None
    if params.get("gssencmode") == "require":
        return None
    host = params.get("hostaddr") or params.get("host") or ""
    port = params.get("port") or os.environ.get("PGPORT") or "5432"  # as libpq reads it
    user = params.get("user") or ""
    if not host or not user or "," in host or "," in port or "," in params.get("host", ""):
        return None
    if not port.strip().isdigit():
        return None
    try:
        timeout = float(params.get("connect_timeout") or 0)
    except ValueError:
        timeout = 0.0
    name = params.get("host") or None
    if name is not None and (name.startswith("/") or _is_address(name)):
        name = None
    return Target(
        host=host,
        port=int(port),
        user=user,
        dbname=params.get("dbname") or user,
        sslmode=params.get("sslmode") or "prefer",
        timeout=timeout if timeout > 0 else DEFAULT_CONNECT_TIMEOUT_S,
        server_name=name,
        sslrootcert=params.get("sslrootcert") or None,
        sslcert=params.get("sslcert") or None,
        sslkey=params.get("sslkey") or None,
        sslpassword=params.get("sslpassword") or None,
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def probe(target: Target) -> Verifier | None:
    """The salt and iteration count of `target.user`'s verifier, as the server says them
    in its first SCRAM message; None when it asks for anything else (trust, md5, an error)
    or does not answer within the target's connect timeout. Sends nothing secret."""
    outcome = await probe_outcome(target)
    return outcome if isinstance(outcome, Verifier) else None


async def probe_outcome(target: Target) -> Verifier | bool:
    """probe()'s verifier, or whether the server answered at all (True: it asked for
    something other than SCRAM-SHA-256 or refused the login; False: no connection, no
    answer in time)."""
    try:
        async with asyncio.timeout(target.timeout):
            return await _probe(target)
    except _NotScram as exc:
        answered: bool = True
        why = str(exc)
    except (OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
        answered = False
        why = type(exc).__name__
    logger.debug(
        "no SCRAM verifier from %s:%s for %s: %s", target.host, target.port, target.user, why
    )
    return answered


async def _probe(target: Target) -> Verifier:
    if target.host.startswith("/"):
        path = f"{target.host.rstrip('/')}/.s.PGSQL.{target.port}"
        reader, writer = await asyncio.open_unix_connection(path)
    else:
        reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        # libpq never asks for TLS over a Unix socket.
        if target.sslmode != "disable" and not target.host.startswith("/"):
            writer.write(_SSL_REQUEST)
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer == b"S":
                verify_full = target.sslmode == "verify-full"
                name = target.server_name or (target.host if verify_full else None)
                await writer.start_tls(_tls_context(target), server_hostname=name)
            elif answer != b"N" or target.sslmode in ("require", "verify-ca", "verify-full"):
                raise _NotScram("no TLS")
        writer.write(_startup(target))
        await writer.drain()
        mechanisms = _sasl_mechanisms(await _auth_message(reader, _AUTH_SASL))
        if _MECHANISM not in mechanisms:
            raise _NotScram("no SCRAM-SHA-256")
        nonce = base64.b64encode(secrets.token_bytes(18))
        first = b"n,,n=,r=" + nonce
        body = _MECHANISM + b"\0" + struct.pack("!i", len(first)) + first
        writer.write(b"p" + struct.pack("!i", len(body) + 4) + body)
        await writer.drain()
        return _server_first(await _auth_message(reader, _AUTH_SASL_CONTINUE), nonce)
    finally:
        # Politely (TLS's close_notify, so the server logs nothing), yet never held up by a
        # server that stopped answering.
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_S)
        except (OSError, ssl.SSLError, TimeoutError):
            writer.transport.abort()


def _tls_context(target: Target) -> ssl.SSLContext:
    """TLS as the conninfo asks: verified under verify-ca (the CA) and verify-full (the CA
    and the name), with libpq's default root certificate file; otherwise unverified, as
    libpq's require and prefer are: the probe sends no secret, and a wrong salt only makes
    the real login fail once and fall back to the password."""
    if target.sslmode in ("verify-ca", "verify-full"):
        root = target.sslrootcert or str(Path.home() / ".postgresql" / "root.crt")
        context = ssl.create_default_context(cafile=None if root == "system" else root)
        context.check_hostname = target.sslmode == "verify-full"
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if target.sslcert:
        context.load_cert_chain(target.sslcert, target.sslkey, target.sslpassword)
    return context


def _startup(target: Target) -> bytes:
    body = struct.pack("!i", _PROTOCOL_3_0)
    for name, value in (("user", target.user), ("database", target.dbname)):
        body += name.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def _auth_message(reader: asyncio.StreamReader, expected: int) -> bytes:
    """The data of the next message, an authentication request of the `expected` kind."""
    kind = await reader.readexactly(1)
    (length,) = struct.unpack("!i", await reader.readexactly(4))
    if not 8 <= length <= _MAX_MESSAGE:
        raise _NotScram("bad length")
    data = await reader.readexactly(length - 4)
    if kind != b"R":
        raise _NotScram(f"message {kind!r}")  # ErrorResponse, NegotiateProtocolVersion
    (code,) = struct.unpack("!i", data[:4])
    if code != expected:
        raise _NotScram(f"authentication request {code}")  # 0: trust, 5: md5, ...
    return data[4:]


def _sasl_mechanisms(data: bytes) -> list[bytes]:
    return [m for m in data.split(b"\0") if m]


def _server_first(data: bytes, nonce: bytes) -> Verifier:
    """Salt and iterations of a server-first-message, "r=<nonce>,s=<salt>,i=<iterations>"."""
    fields = dict(part.split(b"=", 1) for part in data.split(b",") if b"=" in part)
    if not fields.get(b"r", b"").startswith(nonce) or fields[b"r"] == nonce:
        raise _NotScram("nonce")
    try:
        salt = base64.b64decode(fields.get(b"s", b""), validate=True)
        iterations = int(fields.get(b"i", b"0"))
    except ValueError:
        raise _NotScram("salt") from None
    if not salt or iterations < 1:
        raise _NotScram("salt")
    return Verifier(salt, iterations)


def usable_password(password: str) -> bool:
    """True for a password libpq uses as it is: printable ASCII, which SASLprep (RFC 4013,
    applied by libpq before PBKDF2) leaves unchanged."""
    return bool(password) and all(" " <= ch <= "~" for ch in password)


def derive_keys(password: str, verifier: Verifier) -> Keys:
    """ClientKey and ServerKey of `password` under `verifier` (RFC 5802): PBKDF2, so run it
    in a thread."""
    if not usable_password(password):
        raise ValueError("the password is not printable ASCII")
    if verifier.iterations > MAX_ITERATIONS:
        raise ValueError(f"over {MAX_ITERATIONS} iterations")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), verifier.salt, verifier.iterations)
    client = hmac.digest(salted, b"Client Key", "sha256")
    server = hmac.digest(salted, b"Server Key", "sha256")
    return Keys(base64.b64encode(client).decode(), base64.b64encode(server).decode())


async def keys_for(target: Target, password: str) -> Keys | bool:
    """Probe `target` twice and derive the keys of `password`; else whether the server
    answered (probe_outcome()). A salt that is not the same twice is no stored verifier's
    (PgBouncer with a plain-text password makes one up for every login): no keys."""
    if not usable_password(password):
        return True
    outcome = await probe_outcome(target)
    if not isinstance(outcome, Verifier):
        return outcome
    again = await probe_outcome(target)
    if not isinstance(again, Verifier):
        return again
    if again != outcome:
        logger.info(
            "%s:%s gives %s a new SCRAM salt at every login (a pooler with plain-text "
            "passwords?): logging in with the password",
            target.host,
            target.port,
            target.user,
        )
        return True
    if outcome.iterations > MAX_ITERATIONS:
        logger.warning(
            "the SCRAM verifier of %s asks for %d iterations (over %d): logging in with "
            "the password",
            target.user,
            outcome.iterations,
            MAX_ITERATIONS,
        )
        return True
    return await asyncio.to_thread(derive_keys, password, outcome)


def with_keys(params: dict[str, str], keys: Keys) -> str:
    """The conninfo with the keys in place of the password."""
    keyed = {k: v for k, v in params.items() if k != "password"}
    keyed["scram_client_key"] = keys.client
    keyed["scram_server_key"] = keys.server
    return pg_conninfo.make_conninfo("", **keyed)
