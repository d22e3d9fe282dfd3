"""Folder formats and versions, read from files written to pytest's tmp_path (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import MigrationFolderError
from app.migrations.folder import MigrationFolder
from app.migrations.formats import Catalog, file_name
from app.migrations.statements import runnable
from app.migrations.versions import Version


def folder_of(tmp_path: Path, files: dict[str, str]) -> Catalog:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return MigrationFolder(tmp_path).read()


def refused(tmp_path: Path, files: dict[str, str]) -> str:
    with pytest.raises(MigrationFolderError) as caught:
        folder_of(tmp_path, files)
    return caught.value.detail


def test_versions_compare_part_by_part_as_numbers() -> None:
    spelled = ["2", "1.10", "2023.01.02", "1.2", "1_1", "1", "1.1.1", "0003", "10"]
    ordered = sorted(spelled, key=Version.parse)
    assert ordered == ["1", "1_1", "1.1.1", "1.2", "1.10", "2", "0003", "10", "2023.01.02"]
    assert Version.parse("1.0") == Version.parse("1") == Version.parse("0001")
    assert Version.parse("1_1") == Version.parse("1.1") == Version.parse("1.01.0")
    assert [str(Version.parse(s)) for s in ("0001", "1_1", "2023.01.02")] == [
        "1", "1.1", "2023.01.02",
    ]  # fmt: skip
    assert Version.parse("2023.01.02").canonical == "2023.1.2"
    for bad in ("", "1.", "v1", "1..2", "1.a", "-1"):
        with pytest.raises(ValueError, match="is not a version"):
            Version.parse(bad)


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("0001_users.up.sql", ("mirrorpool", "up", "1", "users")),
        ("0002_1.7.0_schema.down.sql", ("mirrorpool", "down", "2", "1.7.0_schema")),
        ("20240101_add.index.up.sql", ("mirrorpool", "up", "20240101", "add.index")),
        ("V1__init.sql", ("flyway", "up", "1", "init")),
        ("V1.1__add_name.sql", ("flyway", "up", "1.1", "add name")),
        ("V1_2__orders.sql", ("flyway", "up", "1.2", "orders")),
        ("V2023.01.02__audit_log.sql", ("flyway", "up", "2023.01.02", "audit log")),
        ("U1.1__add_name.sql", ("flyway", "down", "1.1", "add name")),
        ("R__user_summary.sql", ("flyway", "repeatable", None, "user summary")),
        ("20230101120000_create_tags.sql", ("dbmate", "up", "20230101120000", "create_tags")),
        ("create_users.sql", None),
        ("V1_init.sql", None),  # Flyway needs two underscores
        ("R_views.sql", None),
    ],
)
def test_file_names_say_format_role_version_and_description(
    name: str, read: tuple[str, str, str | None, str] | None
) -> None:
    named = file_name(name)
    if read is None:
        assert named is None
        return
    assert named is not None
    version = str(named.version) if named.version is not None else None
    assert (named.format, named.role, version, named.name) == read


def test_a_flyway_folder_orders_versions_then_repeatables_and_reads_subfolders(
    tmp_path: Path,
) -> None:
    found = folder_of(
        tmp_path,
        {
            "R__views.sql": "SELECT 1;",
            "R__a_functions.sql": "SELECT 1;",
            "V1.10__j.sql": "SELECT 1;",
            "V1.2__b.sql": "SELECT 1;",
            "V1__a.sql": "SELECT 1;",
            "U1__a.sql": "SELECT 1;",
            "2023/V2023.01.02__d.sql": "SELECT 1;",
            "2023/notes.sql": "not a migration: subfolders hold Flyway files only",
            ".hidden/V9__x.sql": "SELECT 1;",
            "README.md": "not SQL",
        },
    )
    assert found.format == "flyway"
    assert [(str(m.version) if m.version else None, m.up.file) for m in found.migrations] == [
        ("1", "V1__a.sql"), ("1.2", "V1.2__b.sql"), ("1.10", "V1.10__j.sql"),
        ("2023.01.02", "2023/V2023.01.02__d.sql"),
        (None, "R__a_functions.sql"), (None, "R__views.sql"),
    ]  # fmt: skip
    assert found.migrations[0].down is not None and found.migrations[0].down.file == "U1__a.sql"


def test_flyway_script_configuration(tmp_path: Path) -> None:
    found = folder_of(
        tmp_path,
        {
            "V1__a.sql": "ALTER TYPE mood ADD VALUE 'ok';",
            "V1__a.sql.conf": "# Flyway\nexecuteInTransaction=false\nencoding=UTF-8\n",
        },
    )
    assert runnable(found.migrations[0].up).outside == "executeInTransaction=false"
    detail = refused(tmp_path, {"V1__a.sql.conf": "shouldExecute=false\n"})
    assert "V1__a.sql.conf: 'shouldExecute' is not read by mirrorpool" in detail


def test_a_dbmate_file_holds_both_directions(tmp_path: Path) -> None:
    found = folder_of(
        tmp_path,
        {
            "20230101_tags.sql": "-- a comment first is fine\n-- migrate:up\nCREATE TABLE t ();\n"
            "\n-- migrate:down transaction:false\nDROP INDEX CONCURRENTLY i;\nSELECT 1;\n",
            "20230102_empty_down.sql": "-- migrate:up\nSELECT 1;\n-- migrate:down\n",
            "20230103_no_down.sql": "-- migrate:up transaction:false\nVACUUM t;\n",
        },
    )
    assert found.format == "dbmate"
    tags, empty, no_down = found.migrations
    assert tags.up.sql == "-- migrate:up\nCREATE TABLE t ();\n\n"
    assert tags.down is not None and tags.down.no_transaction == "transaction:false"
    assert tags.down.line_of(tags.down.sql.index("SELECT")) == 7  # the file's line
    assert tags.up.checksum != tags.down.checksum  # editing the down section is no drift
    assert empty.down is not None and runnable(empty.down).statements == []
    assert no_down.down is None and no_down.up.no_transaction == "transaction:false"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("CREATE TABLE t ();\n", "holds one `-- migrate:up` section"),
        ("-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", "it has 2 and 0"),
        ("-- migrate:down\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", "must come before"),
        ("CREATE TYPE x AS ENUM ();\n-- migrate:up\nSELECT 1;\n", "statements before"),
    ],
)
def test_a_dbmate_file_without_its_sections_is_refused(
    tmp_path: Path, text: str, says: str
) -> None:
    assert says in refused(tmp_path, {"20230101_t.sql": text})


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        (
            ["V1__a.sql", "0002_b.up.sql"],
            "the folder mixes formats: mirrorpool/golang-migrate (0002_b.up.sql) and Flyway "
            "(V1__a.sql); keep one format per folder",
        ),
        (
            ["0001_a.up.sql", "20230101_b.sql"],
            "mirrorpool/golang-migrate (0001_a.up.sql) and dbmate",
        ),
        (["V1__a.sql", "V1.0__b.sql"], "version 1 is claimed by V1.0__b.sql, V1__a.sql"),
        (["R__a.sql", "sub/R__a.sql"], "repeatable 'a' is claimed by R__a.sql, sub/R__a.sql"),
        (["V1__a.sql", "U2__b.sql"], "U2__b.sql: a down file without its up file"),
        (
            ["V1__a.sql", "afterMigrate.sql"],
            "afterMigrate.sql: not a migration file name (name migrations NNNN_name.up.sql",
        ),
    ],
)
def test_folders_no_format_reads_are_refused_naming_the_files(
    tmp_path: Path, files: list[str], fragment: str
) -> None:
    contents = {name: "-- migrate:up\nSELECT 1;\n" for name in files}
    assert fragment in refused(tmp_path, contents)
