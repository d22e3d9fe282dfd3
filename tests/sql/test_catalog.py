"""The vetted catalog functions are what the server's own catalog says they are."""

from __future__ import annotations

from app.devdb import LocalPair
from app.sql import catalog


def test_every_vetted_function_is_immutable_or_stable_on_the_server(pair: LocalPair) -> None:
    with pair.primary.connect() as conn:
        rows = conn.execute(catalog.CLEAN_SQL).fetchall()
        volatile = {
            name
            for (name,) in conn.execute(
                "SELECT DISTINCT proname FROM pg_proc"
                " WHERE pronamespace = 'pg_catalog'::regnamespace AND provolatile = 'v'"
            ).fetchall()
        }
    on_server = {name for (name,) in rows}
    # The file is this server's list (or an older server's: a subset, never more).
    assert on_server >= catalog.STABLE_FUNCTIONS
    assert len(catalog.STABLE_FUNCTIONS) > 2000
    # Volatile ones are vetted only by name, on purpose; none of them changes a session.
    assert catalog.CLEAN_FUNCTIONS & volatile == catalog.HARMLESS_VOLATILE & volatile
    dangerous = {"set_config", "pg_advisory_lock", "lo_create", "pg_notify", "setseed"}
    dangerous |= {"query_to_xml", "dblink", "nextval", "currval", "pg_terminate_backend"}
    assert dangerous & catalog.CLEAN_FUNCTIONS == set()


def test_every_catalog_function_name_is_on_one_list_or_the_other(pair: LocalPair) -> None:
    with pair.primary.connect() as conn:
        volatile = {name for (name,) in conn.execute(catalog.VOLATILE_SQL).fetchall()}
        every = {
            name
            for (name,) in conn.execute(
                "SELECT DISTINCT proname FROM pg_proc"
                " WHERE pronamespace = 'pg_catalog'::regnamespace"
            ).fetchall()
        }
    assert volatile == catalog.VOLATILE_FUNCTIONS
    assert every == catalog.STABLE_FUNCTIONS | catalog.VOLATILE_FUNCTIONS
    assert set() == catalog.STABLE_FUNCTIONS & catalog.VOLATILE_FUNCTIONS


def test_what_a_read_only_request_may_not_call_exists_under_that_name(pair: LocalPair) -> None:
    with pair.primary.connect() as conn:
        names = {
            name
            for (name,) in conn.execute(
                "SELECT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace"
            ).fetchall()
        }
    # A misspelt name on the list would refuse nothing.
    listed = catalog.READ_ONLY_REFUSED - {"pg_start_backup", "pg_stop_backup", "set_config"}
    assert listed - names == set()
    for prefix in ("lo_", "pg_advisory_", "pg_stat_reset", "pg_ls_"):
        assert any(n.startswith(prefix) and catalog.refused_for_read_only(n) for n in names)
