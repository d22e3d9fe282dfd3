"""The migration folder, read as it is at every call.

Every status, plan, apply, rollback, repair and baseline lists the folder again, so a file
added, edited or removed while the service runs counts at once, and the API and the CLI always
agree. A file is read and checksummed once per version of it: its scripts are kept under its
size, modification and change times and inode (the change time moves on every write and cannot
be set back, so `touch -r` or `cp -p` does not hide an edit). A file written in the last RACY_S
seconds is not kept, as git does with "racily clean" files: a second edit within the file
system's timestamp granularity could leave the same times. And just before a step runs, its
file is read again (`unchanged`), so no SQL that differs from the file is ever run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from app.migrations.files import Script, normalise
from app.migrations.formats import Catalog, FileName, Found, catalog, file_name, scripts_of

RACY_S = 2.0
# (mtime_ns, ctime_ns, size, inode) of a file, or None when it does not exist.
Signature = tuple[int, int, int, int] | None


class MigrationFolder:
    """MIRRORPOOL_MIGRATIONS_DIR, read live, with each file's scripts kept per file version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._kept: dict[Path, tuple[tuple[Signature, Signature], list[Script]]] = {}
        self._lock = threading.Lock()  # read() runs in worker threads

    def read(self) -> Catalog:
        """The folder's migrations as they are now; MigrationFolderError when it cannot be
        read as one format."""
        if not self.path.is_dir():
            return Catalog(None, [])
        with self._lock:
            found: list[Found] = []
            unknown: list[str] = []
            for path in self._files():
                file = path.relative_to(self.path).as_posix()
                named = file_name(path.name)
                top = path.parent == self.path
                # Only Flyway reads subfolders; other files in them are not migrations.
                if named is None or (not top and named.format != "flyway"):
                    if top:
                        unknown.append(file)
                    continue
                found.append(Found(named, self._scripts(path, file, named)))
            listed = {script.path for f in found for script in f.scripts}
            for gone in [path for path in self._kept if path not in listed]:
                del self._kept[gone]
        return catalog(self.path, found, unknown)

    def unchanged(self, script: Script) -> bool:
        """Whether the file still holds `script` exactly (read again, never from the kept
        copies)."""
        named = file_name(script.path.name)
        if named is None:
            return False
        try:
            return script in _read(script.path, script.file, named)
        except FileNotFoundError:
            return False

    def _files(self) -> Iterator[Path]:
        """Every .sql file under the folder, in name order, hidden files and folders skipped."""
        for root, folders, names in os.walk(self.path):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for name in sorted(names):
                if name.endswith(".sql") and not name.startswith("."):
                    yield Path(root) / name

    def _scripts(self, path: Path, file: str, named: FileName) -> list[Script]:
        """A file's scripts: the kept ones while the file (and its .conf) did not change."""
        signature = (_signature(path), _signature(_config_of(path, named)))
        kept = self._kept.get(path)
        if kept is not None and kept[0] == signature:
            return kept[1]
        scripts = _read(path, file, named)
        newest = max((max(s[0], s[1]) for s in signature if s is not None), default=0)
        if time.time_ns() - newest > RACY_S * 1e9:
            self._kept[path] = (signature, scripts)
        return scripts


def _read(path: Path, file: str, named: FileName) -> list[Script]:
    """A file's scripts, read from disk."""
    config_path = _config_of(path, named)
    config = None
    if config_path is not None and config_path.is_file():
        config = normalise(config_path.read_bytes(), f"{file}.conf")
    return scripts_of(named, path, file, normalise(path.read_bytes(), file), config)


def _config_of(path: Path, named: FileName) -> Path | None:
    """Where a Flyway script's configuration file would be (`V1__x.sql.conf`)."""
    return path.with_name(path.name + ".conf") if named.format == "flyway" else None


def _signature(path: Path | None) -> Signature:
    if path is None:
        return None
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
