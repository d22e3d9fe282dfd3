"""@neondatabase/serverless, unchanged, against POST /sql: values, transactions, errors, keys."""

from __future__ import annotations

from app.devdb import LocalPair
from tests.neon.conftest import KEYS, MAX_ROWS, Driver, owner_count, printed
from tests.waiting import eventually_sync


def test_every_type_arrives_as_the_driver_types_it(driver: Driver) -> None:
    row = driver.ok("types")
    assert row["int4"] == {"type": "number", "value": 42}
    # node-postgres keeps int8 and numeric as strings: nothing is rounded on the way.
    assert row["int8"] == {"type": "string", "value": "9007199254740993"}
    assert row["numeric"] == {"type": "string", "value": "12345.678901234567890123"}
    assert row["text"] == {"type": "string", "value": "héllo 'quoted' \\ text"}
    assert row["boolean"] == {"type": "boolean", "value": True}
    assert row["timestamptz"] == {"type": "Date", "value": "2024-05-01T09:30:00.123Z"}
    assert row["date"] == {"type": "Date", "value": "2024-02-29T00:00:00.000Z"}
    # Parsed from IntervalStyle postgres, PostgreSQL's default, into pg's interval object.
    assert row["interval"]["value"] == {"days": 1, "hours": 2, "minutes": 3, "seconds": 4}
    assert row["literal_interval"]["value"] == {
        "years": 1, "months": 2, "days": 3, "hours": 4, "minutes": 5, "seconds": 6,
        "milliseconds": 500,
    }  # fmt: skip
    assert row["interval_text"] == {"type": "string", "value": "1 day"}
    assert row["bytea"] == {"type": "Buffer", "value": "0001feff"}
    assert row["int_array"] == {
        "type": "Array",
        "value": [{"type": "number", "value": 1}, {"type": "null"}, {"type": "number", "value": 3}],
    }
    assert row["jsonb"]["value"] == {"a": [1, 2], "b": {"c": None}, "big": 12345678901234567000}
    assert row["uuid"] == {"type": "string", "value": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}
    assert row["nothing"] == {"type": "null"}


def test_full_results_carry_the_command_count_and_fields(driver: Driver, table: str) -> None:
    driver.ok("query", f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')")
    result = driver.ok("full", f"SELECT id, v FROM {table} ORDER BY id")
    assert result["command"] == "SELECT" and result["rowCount"] == 2
    id_field, v_field = result["fields"]
    assert (id_field["name"], id_field["dataTypeID"], id_field["columnID"]) == ("id", 23, 1)
    assert (v_field["name"], v_field["dataTypeID"], v_field["columnID"]) == ("v", 25, 2)
    assert id_field["tableID"] == v_field["tableID"] > 0
    setting = driver.ok("full", "SET LOCAL lock_timeout = '1s'")
    assert setting == {"command": "SET", "rowCount": None, "fields": []}


def test_tagged_template_parameters(driver: Driver) -> None:
    assert driver.ok("tagged", "41") == [{"next": 42, "name": "o'brien"}]


def test_a_transaction_commits(driver: Driver, pair: LocalPair, table: str) -> None:
    results = driver.ok("transaction", table, "1", "2")
    assert results[2] == [{"n": 2}]
    assert owner_count(pair, table) == 2


def test_a_failed_transaction_leaves_nothing_behind(
    driver: Driver, pair: LocalPair, table: str
) -> None:
    error = driver.error("transaction", table, "7", "7")  # the second insert collides
    assert error["code"] == "23505"
    assert error["constraint"] == f"{table}_pkey"
    assert owner_count(pair, table) == 0


def test_a_read_only_deferrable_transaction(driver: Driver, table: str) -> None:
    assert driver.ok("read_only_transaction", table) == [[{"n": 0}]]


def test_a_unique_violation_names_its_constraint(driver: Driver, table: str) -> None:
    driver.ok("query", f"INSERT INTO {table} VALUES ($1, 'x')", "5")
    error = driver.error("query", f"INSERT INTO {table} VALUES ($1, 'y')", "5")
    assert error["name"] == "NeonDbError"
    assert error["code"] == "23505"
    assert error["constraint"] == f"{table}_pkey"
    assert error["detail"] == "Key (id)=(5) already exists."
    assert error["table"] == table


def test_a_syntax_error_has_its_position(driver: Driver) -> None:
    error = driver.error("query", "SELECT 1 FROM WHERE")
    assert error["code"] == "42601"
    assert error["position"] == "15"


def test_a_read_key_is_refused_a_write(driver: Driver, pair: LocalPair, table: str) -> None:
    error = driver.error("query", f"INSERT INTO {table} VALUES (1, 'x')", key=KEYS["read"])
    assert error["code"] == "25006"  # PostgreSQL's READ ONLY transaction said no
    assert owner_count(pair, table) == 0
    assert driver.ok("query", f"SELECT count(*)::int AS n FROM {table}", key=KEYS["read"]) == [
        {"n": {"type": "number", "value": 0}}
    ]


def test_the_key_as_auth_token(driver: Driver) -> None:
    rows = driver.ok("query", "SELECT 1 AS one", key="not-a-key", auth_token=KEYS["read"])
    assert rows == [{"one": {"type": "number", "value": 1}}]


def test_a_wrong_key_is_refused(driver: Driver) -> None:
    error = driver.error("query", "SELECT 1", key="wrong-key")
    assert "HTTP status 401" in error["message"]
    assert "the API key is not valid" in error["message"]
    assert "wrong-key" not in error["message"]
    error = driver.error("query", "SELECT 1", auth_token="wrong-token")
    assert "HTTP status 401" in error["message"]


def test_a_result_over_the_row_limit_fails_instead_of_arriving_cut(driver: Driver) -> None:
    rows = driver.ok("query", f"SELECT generate_series(1, {MAX_ROWS}) AS n")
    assert len(rows) == MAX_ROWS
    error = driver.error("query", f"SELECT generate_series(1, {MAX_ROWS + 1}) AS n")
    assert "HTTP status 507" in error["message"]
    assert f"more than {MAX_ROWS} rows" in error["message"]


def running(pair: LocalPair, marker: str) -> int:
    """Backends running a statement that holds `marker`."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
            [f"%{marker}%"],
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_driver_that_gives_up_cancels_its_statement(driver: Driver, pair: LocalPair) -> None:
    marker = "neon_abandoned_sleep"
    gives_up = driver.start("abandon", f"SELECT pg_sleep(30) AS {marker}", "3000")
    eventually_sync(lambda: running(pair, marker) == 1, "the statement to run")
    stdout, _ = gives_up.communicate(timeout=30)
    assert "abort" in printed(stdout)["error"]["message"].lower()  # the fetch gave up
    eventually_sync(lambda: running(pair, marker) == 0, "the statement to be cancelled", 10)
