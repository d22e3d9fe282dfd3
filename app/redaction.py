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


class RedactingFilter(logging.Filter):
    """A logging filter that formats the message early and scrubs it (and any traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
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
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The pool logs every failed reconnection attempt; the health monitor reports a node
    # going down and coming back once each, which is what an operator wants to read.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
