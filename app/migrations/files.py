"""Migration scripts: the SQL of one direction of one migration, its checksum and its directives.

How a folder names its files is app/migrations/formats.py's concern; this module reads what a
script says about itself. Directives are comment lines, file metadata rather than SQL:
`-- mirrorpool: no-transaction` (or `-- morph:nontransactional`, or the format's own: dbmate's
`transaction:false`, Flyway's `executeInTransaction=false` in `V1__x.sql.conf`) runs the script
outside a transaction (it must then hold one statement); `-- mirrorpool: lock_timeout=5s`
overrides the lock timeout. The checksum is taken over the text with a BOM dropped and CRLF
folded to LF, so an editor's line endings change nothing.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from app.errors import MigrationFolderError
from app.migrations.versions import Version

_DIRECTIVE = re.compile(r"--\s*mirrorpool:\s*(?P<body>.+?)\s*$", re.IGNORECASE)
# morph's (Mattermost) directive, in files named as golang-migrate names them.
_MORPH_NO_TRANSACTION = re.compile(r"--\s*morph:\s*nontransactional\s*", re.IGNORECASE)
_DURATION = re.compile(r"(?P<n>\d+)\s*(?P<unit>ms|s|min)?")
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, None: 1}
NO_TRANSACTION = "-- mirrorpool: no-transaction"


def normalise(raw: bytes, file: str) -> str:
    """The file's text as checksummed and run: no BOM, LF line endings."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MigrationFolderError(f"{file}: not UTF-8 text") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def checksum(text: str) -> str:
    """sha256 of normalised text, as `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def flyway_checksum(text: str) -> int:
    """The checksum Flyway records for a script: CRC-32 of its lines' UTF-8 bytes without
    their line breaks (Java's readLine splits at CR, LF and CRLF), as a signed 32-bit int."""
    crc = zlib.crc32(text.replace("\r", "").replace("\n", "").encode("utf-8"))
    return crc - (1 << 32) if crc >= 1 << 31 else crc


@dataclass(frozen=True)
class Script:
    """One direction of a migration: its SQL and how it asks to run."""

    path: Path
    # The file as messages name it: its path inside the migration folder.
    file: str
    sql: str
    checksum: str
    # The directive that runs it outside a transaction, as written; None when none does.
    no_transaction: str | None
    lock_timeout_ms: int | None
    # Lines of the file before `sql` (a dbmate section starts part-way down its file).
    line_offset: int = 0

    def line_of(self, offset: int) -> int:
        """The file's line (from 1) holding character `offset` of `sql`."""
        return self.line_offset + self.sql.count("\n", 0, max(offset, 0)) + 1


@dataclass(frozen=True)
class Migration:
    """A version with its up script and, when there is one, its down script; or, with no
    version, a repeatable script (Flyway's R__), run again whenever it changes."""

    version: Version | None
    name: str
    up: Script
    down: Script | None

    @property
    def repeatable(self) -> bool:
        """Whether this is a repeatable script rather than a version."""
        return self.version is None


def script(
    path: Path,
    file: str,
    sql: str,
    *,
    line_offset: int = 0,
    no_transaction: str | None = None,
) -> Script:
    """A script from its text, with its `-- mirrorpool:` and `-- morph:` directives read;
    `no_transaction` is the format's own directive when it gave one."""
    lock_timeout_ms: int | None = None
    for raw in sql.splitlines():
        line = raw.strip()
        if _MORPH_NO_TRANSACTION.fullmatch(line):
            no_transaction = no_transaction or line
            continue
        match = _DIRECTIVE.fullmatch(line)
        if not match:
            continue
        for item in (p.strip() for p in match["body"].split(",")):
            if item.lower() == "no-transaction":
                no_transaction = no_transaction or NO_TRANSACTION
            elif item.lower().startswith("lock_timeout="):
                lock_timeout_ms = _parse_ms(item.split("=", 1)[1], file)
            else:
                raise MigrationFolderError(f"{file}: unknown directive {item!r}")
    return Script(path, file, sql, checksum(sql), no_transaction, lock_timeout_ms, line_offset)


def _parse_ms(value: str, file: str) -> int:
    match = _DURATION.fullmatch(value.strip())
    if not match:
        raise MigrationFolderError(f"{file}: lock_timeout must look like 500ms, 5s or 1min")
    return int(match["n"]) * _UNIT_MS[match["unit"]]
