"""Keep secrets out of text: every log record and error message passes through here."""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import UTC, datetime
from typing import Any

MASK = "***"

# A password written in a DSN or URI we did not register (e.g. one a user typed in SQL).
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]+)(@)")


class Redactor:
    """Replaces known secrets, and anything shaped like a DSN password, with ***."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str) -> None:
        """Remember secrets to scrub (empty strings are ignored)."""
        with self._lock:
            self._secrets.update(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        """The text with every secret masked."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        text = _DSN_PASSWORD.sub(rf"\1{MASK}", text)
        return _URI_PASSWORD.sub(rf"\1{MASK}\3", text)


redactor = Redactor()


# Control characters (C0, DEL, C1) and Unicode's line separators, as escapes: a value a
# client sent (a path, a header) must not start a line of its own in a text log.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_controls(text: str) -> str:
    """The text with control characters and line separators escaped (`\\n`, `\\x1b`)."""
    return text.translate(_ESCAPES)


class RedactingFilter(logging.Filter):
    """A logging filter that formats the message early and scrubs it (and any traceback).
    With `escape`, control characters in the message's arguments (the values it carries:
    paths, ids, error texts) are escaped, as JSON lines escape them."""

    def __init__(self, escape: bool = False) -> None:
        super().__init__()
        self.escape = escape

    def filter(self, record: logging.LogRecord) -> bool:
        if self.escape and isinstance(record.args, tuple):
            record.args = tuple(
                escape_controls(str(a)) if isinstance(a, str | BaseException) else a
                for a in record.args
            )
        record.msg = redactor.scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redactor.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at `level` as text or JSON lines, every line scrubbed of secrets."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    handler.addFilter(RedactingFilter(escape=fmt == "text"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The pool logs every failed reconnection attempt; the health monitor reports a node
    # going down and coming back once each, which is what an operator wants to read.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
