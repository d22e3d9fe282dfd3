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
        # By file (its path inside the folder): the signatures it was read under, its scripts.
        self._kept: dict[str, tuple[tuple[Signature, Signature], list[Script]]] = {}
        self._lock = threading.Lock()  # read() runs in worker threads

    def read(self) -> Catalog:
        """The folder's migrations as they are now; MigrationFolderError when it cannot be
        read as one format."""
        if not self.path.is_dir():
            return Catalog(None, [])
        with self._lock:
            found: list[Found] = []
            unknown: list[str] = []
            listed: set[str] = set()
            for entry, file, siblings in self._files():
                named = file_name(entry.name)
                top = "/" not in file
                # Only Flyway reads subfolders; other files in them are not migrations.
                if named is None or (not top and named.format != "flyway"):
                    if top:
                        unknown.append(file)
                    continue
                found.append(Found(named, self._scripts(entry, file, named, siblings)))
                listed.add(file)
            for gone in [file for file in self._kept if file not in listed]:
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

    def _files(self) -> Iterator[tuple[os.DirEntry[str], str, set[str]]]:
        """Every .sql file under the folder, with its path inside it and the names beside
        it: a folder's files in name order, then its subfolders'; hidden names skipped.
        (os.scandir: a status call on a large folder costs a stat per file, little else.)"""
        folders = [(str(self.path), "")]
        while folders:
            root, prefix = folders.pop()
            with os.scandir(root) as listing:
                entries = sorted(
                    (e for e in listing if not e.name.startswith(".")), key=lambda e: e.name
                )
            names = {e.name for e in entries}
            for entry in entries:
                if entry.name.endswith(".sql") and entry.is_file():
                    yield entry, prefix + entry.name, names
            folders += reversed([(e.path, f"{prefix}{e.name}/") for e in entries if e.is_dir()])

    def _scripts(
        self, entry: os.DirEntry[str], file: str, named: FileName, siblings: set[str]
    ) -> list[Script]:
        """A file's scripts: the kept ones while the file (and its .conf) did not change."""
        config = f"{entry.name}.conf"
        config_signature = (
            _signature(os.path.join(os.path.dirname(entry.path), config))
            if named.format == "flyway" and config in siblings
            else None
        )
        signature = (_signature(entry.path), config_signature)
        kept = self._kept.get(file)
        if kept is not None and kept[0] == signature:
            return kept[1]
        scripts = _read(Path(entry.path), file, named)
        newest = max((max(s[0], s[1]) for s in signature if s is not None), default=0)
        if time.time_ns() - newest > RACY_S * 1e9:
            self._kept[file] = (signature, scripts)
        return scripts


def _read(path: Path, file: str, named: FileName) -> list[Script]:
    """A file's scripts, read from disk."""
    config_path = path.with_name(path.name + ".conf")
    config = None
    if named.format == "flyway" and config_path.is_file():
        config = normalise(config_path.read_bytes(), f"{file}.conf")
    return scripts_of(named, path, file, normalise(path.read_bytes(), file), config)


def _signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
