"""Named queries: listed, run with their parameters, and the only way in without raw SQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.devdb import LocalPair
from app.errors import SettingsError
from app.main import create_app
from tests.conftest import serving_ready, settings_for


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.sql").write_text(text)


async def test_list_and_run_named_queries(pair: LocalPair, tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    write(
        queries,
        "double",
        "-- description: Twice a number\n-- params: n\n-- read_only: true\n"
        "SELECT :n::int * 2 AS twice, ':n is not a param' AS note",
    )
    write(queries, "now_utc", "SELECT current_setting('TimeZone') AS tz")
    settings = settings_for(pair, queries_dir=queries, allow_raw_sql=False)
    async with serving_ready(settings) as (_, client):
        listed = (await client.get("/v1/queries")).json()["queries"]
        assert [(q["name"], q["params"], q["read_only"]) for q in listed] == [
            ("double", ["n"], True),
            ("now_utc", [], False),
        ]
        assert listed[0]["description"] == "Twice a number"
        ran = await client.post("/v1/queries/double", json={"params": {"n": 21}})
        assert ran.status_code == 200, ran.text
        assert ran.json()["rows"] == [[42, ":n is not a param"]]
        no_body = await client.post("/v1/queries/now_utc")
        assert no_body.json()["rows"] == [["UTC"]]
        missing = await client.post("/v1/queries/double", json={"params": {}})
        assert missing.status_code == 400
        assert ":n" in missing.json()["detail"]
        unknown = await client.post("/v1/queries/nope")
        assert unknown.status_code == 404
        raw = await client.post("/v1/query", json={"sql": "SELECT 1"})
        assert raw.status_code == 403
        assert "MIRRORPOOL_ALLOW_RAW_SQL" in raw.json()["detail"]
        tx = await client.post("/v1/transaction", json={"statements": [{"sql": "SELECT 1"}]})
        assert tx.status_code == 403


async def test_read_only_named_query_cannot_write(pair: LocalPair, tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    write(queries, "sneaky", "-- read_only: true\nCREATE TABLE sneaky_t (id int)")
    async with serving_ready(settings_for(pair, queries_dir=queries)) as (_, client):
        response = await client.post("/v1/queries/sneaky")
        assert response.status_code == 403
        assert response.json()["sqlstate"] == "25006"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("-- params: a\nSELECT :b", ":b"),
        ("-- read_only: maybe\nSELECT 1", "read_only"),
        ("-- colour: blue\nSELECT 1", "colour"),
        ("SELECT 1; SELECT 2", "more than one statement"),
    ],
)
def test_bad_query_files_stop_start_up(
    pair: LocalPair, tmp_path: Path, text: str, fragment: str
) -> None:
    queries = tmp_path / "queries"
    write(queries, "broken", text)
    with pytest.raises(SettingsError) as caught:
        create_app(settings_for(pair, queries_dir=queries))
    assert "broken.sql" in str(caught.value)
    assert fragment in str(caught.value)
