"""Catalog functions by what they may do: the vetted ones that leave nothing behind in a
session, and the ones a read-only request must not reach in any spelling.

A statement that calls only vetted functions is provably free of session effects (as far as
its tree goes: app/sql/tree.py). The vetted list is every pg_catalog function name whose
overloads are all immutable or stable (PostgreSQL promises those change nothing; the list
comes from PostgreSQL 15's catalog, `clean_functions.txt`, made by CLEAN_SQL below), less
the few that run SQL handed to them as text, plus volatile ones known to change nothing
(clocks, random values, sleeps, sizes, WAL positions). A newer server's new functions are
simply not on it: calling one costs a session reset, never a leak. tests/sql/test_catalog.py
checks the file against a live server's catalog.
"""

from __future__ import annotations

from importlib import resources

# How clean_functions.txt is made (run it as a superuser on the oldest supported server).
CLEAN_SQL = """
SELECT proname FROM pg_proc
WHERE pronamespace = 'pg_catalog'::regnamespace
GROUP BY proname
HAVING bool_and(provolatile <> 'v' AND prokind IN ('f', 'a', 'w'))
ORDER BY proname
"""

# How volatile_functions.txt is made: the complement.
VOLATILE_SQL = CLEAN_SQL.replace("HAVING bool_and", "HAVING NOT bool_and")

# They run a query given as text, or read a relation or a whole schema named by a value the
# tree cannot read (pg_prepared_statements among them), or a cursor of the session; some
# are stable or immutable all the same. Refused to every key.
RUNS_SQL_TEXT = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "pg_cursor",
    }
)

# Volatile, but they change nothing a later request could notice.
# What draws from the session's random() generator, whose state DISCARD ALL keeps: four of
# its values give the whole state (xoroshiro128**, PostgreSQL 15 on), which runs backwards as
# well as forwards, so a key drawing after another could compute what it drew and will draw
# (app/sql/traces.py of).
RANDOM_DRAWS = frozenset({"random", "random_normal"})

HARMLESS_VOLATILE = frozenset(
    {
        "clock_timestamp",
        "timeofday",
        "random",
        "gen_random_uuid",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "pg_is_in_recovery",
        "pg_last_wal_receive_lsn",
        "pg_last_wal_replay_lsn",
        "pg_last_xact_replay_timestamp",
        "pg_current_wal_lsn",
        "pg_current_wal_flush_lsn",
        "pg_current_wal_insert_lsn",
        "pg_is_wal_replay_paused",
        "pg_get_wal_replay_pause_state",
        "pg_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_total_relation_size",
        "pg_database_size",
        "pg_tablespace_size",
        "pg_blocking_pids",
        "pg_safe_snapshot_blocking_pids",
        "pg_lock_status",
        "pg_jit_available",
        "pg_notification_queue_usage",
        "pg_xact_status",
        "txid_status",
        "pg_xact_commit_timestamp",
        "pg_xact_commit_timestamp_origin",
        "pg_last_committed_xact",
        "pg_partition_tree",
        "pg_partition_ancestors",
        "pg_control_checkpoint",
        "pg_control_system",
        "pg_control_init",
        "pg_control_recovery",
    }
)


def _load(name: str) -> frozenset[str]:
    text = resources.files("app.sql").joinpath(name).read_text()
    names = {line.strip() for line in text.splitlines()}
    return frozenset(n for n in names if n and not n.startswith("#"))


STABLE_FUNCTIONS = _load("clean_functions.txt")
"""pg_catalog names whose every overload is immutable or stable (clean_functions.txt)."""

VOLATILE_FUNCTIONS = _load("volatile_functions.txt")
"""The other pg_catalog names: a volatile overload, or a procedure (volatile_functions.txt,
made by VOLATILE_SQL)."""

CLEAN_FUNCTIONS = (STABLE_FUNCTIONS - RUNS_SQL_TEXT) | HARMLESS_VOLATILE
# Volatile catalog functions not known to be harmless: called in attribute notation
# (`(42).pg_advisory_lock`), or from stored code, they may change the session.
UNVETTED_VOLATILE = VOLATILE_FUNCTIONS - HARMLESS_VOLATILE
"""Catalog functions that leave nothing behind in a session."""

# Functions whose effects escape a READ ONLY transaction, or reach past the request: other
# sessions, the server's files and programs, its configuration, WAL and statistics, other
# databases. Matched by their own name whatever schema qualifies them.
READ_ONLY_REFUSED = frozenset(
    {
        "pg_notify",
        "set_config",
        "setseed",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_rotate_logfile_old",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_promote",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_log_backend_memory_contexts",
        "pg_import_system_collations",
        "pg_read_file",
        "pg_read_file_old",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_export_snapshot",
        "pg_logical_emit_message",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
        "lo_creat",
        "lo_create",
        "lo_import",
        "lo_export",
        "lo_from_bytea",
        "lo_put",
        "lo_unlink",
        "lo_open",
        "lo_truncate",
        "lo_truncate64",
        "lowrite",
        "nextval",
        "setval",
        *RUNS_SQL_TEXT,
    }
)
# Name prefixes of the same kind: large objects, advisory locks, statistics resets, server
# directories, replication slots and origins, logical decoding, adminpack, dblink.
READ_ONLY_REFUSED_PREFIXES = (
    "lo_",
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_stat_reset",
    "pg_ls_",
    "pg_create_",
    "pg_copy_",
    "pg_replication_origin_",
    "pg_logical_slot_",
    "pg_file_",
    "dblink",
)

# Functions refused for every key: they reach other keys' sessions (cancel, terminate), the
# statements mirrorpool prepared for other keys on a shared connection (and their SQL), or
# change which server is the primary behind everyone's back.
ALWAYS_REFUSED = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_prepared_statement",
        "pg_promote",
        *RUNS_SQL_TEXT,
    }
)
# Views of the same: the statements mirrorpool prepared on the shared connection.
ALWAYS_REFUSED_RELATIONS = frozenset(
    {
        "pg_prepared_statements",
        # A backend's table and function counters are flushed at most once a second (PG 15
        # on); until then these show every earlier transaction's on that backend, other
        # keys' requests on a shared connection among them. DISCARD ALL keeps them.
        "pg_stat_xact_all_tables",
        "pg_stat_xact_sys_tables",
        "pg_stat_xact_user_tables",
        "pg_stat_xact_user_functions",
    }
)
# The functions under those views (pg_stat_get_xact_tuples_inserted, ...).
PENDING_STATISTICS_PREFIX = "pg_stat_get_xact_"

# The functions that lock a value the caller picks (an advisory lock's key; lo_unlink's
# large object, locked for its deletion): each value locked takes an entry of the server's
# shared lock table until the transaction ends (passes 41, 42).
VALUE_LOCKS = frozenset(
    {
        *(
            f"pg_{try_}advisory_{xact}lock{shared}"
            for try_ in ("", "try_")
            for xact in ("", "xact_")
            for shared in ("", "_shared")
        ),
        "lo_unlink",
    }
)
# What a locked value may be computed with besides constants and parameters (the
# idiom `pg_advisory_xact_lock(hashtext($1))`): functions that return one value of theirs.
LOCK_KEY_FUNCTIONS = frozenset({"hashtext", "hashtextextended", "int8", "int4", "lower"})
# Advisory locks that last for the session (the _xact_ ones end with their transaction).
SESSION_LOCKS = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
    }
)

# They read the sequence values this session obtained before: on a pooled connection, an
# earlier request's, maybe another key's. Requests that call them start with the session's
# sequence state discarded.
SESSION_SEQUENCE_READERS = frozenset({"currval", "lastval"})

# Settings the service relies on, pinned for every session (startup options, or SET LOCAL
# behind PgBouncer): the type encoding reads values in these formats, and the parse tree is
# only PostgreSQL's reading of a text while standard_conforming_strings is on (with it off,
# 'a\' -- ' is a string the server reads on past the quote, and the tree would not).
# A request may not set them, in any scope.
PINNED_SETTINGS = frozenset(
    {
        "datestyle",
        "intervalstyle",
        "bytea_output",
        "client_encoding",
        "extra_float_digits",
        "standard_conforming_strings",
        "backslash_quote",
        "client_connection_check_interval",
        # Setting it seeds random() for the whole session (its assign hook calls setseed),
        # and no reset undoes that: other keys' random() would follow the seed.
        "seed",
    }
)

# What a reset (DISCARD ALL) leaves in place: the connection is closed instead.
SURVIVES_RESET = frozenset({"setseed", "dblink_connect", "dblink_connect_u"})


def refused_for_read_only(name: str) -> bool:
    """True for a function a read-only request may not call, by its own name."""
    return name in READ_ONLY_REFUSED or name.startswith(READ_ONLY_REFUSED_PREFIXES)


def catalog_or_dblink(name: str) -> bool:
    """True for a name a pg_catalog function has, or one of dblink's: what an attribute
    (`(expr).f`, `alias.f`) must be named for the refusals to take it for a call (a column
    of the schema's own named like `lo_total` is not one)."""
    return name in STABLE_FUNCTIONS or name in VOLATILE_FUNCTIONS or name.startswith("dblink")
