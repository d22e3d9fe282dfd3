"""The local pair: real replication, and faults that do what they say."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from app.devdb import OWNER, SERVICE, LocalNode, LocalPair, RunAs, alive
from app.errors import DevDBError
from tests.conftest import PairFactory
from tests.waiting import eventually_sync


def count_rows(node: LocalNode, table: str) -> int:
    with node.connect() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def table_visible(node: LocalNode, table: str) -> bool:
    with node.connect() as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    return bool(row and row[0])


def test_row_written_on_primary_shows_up_on_mirror(pair: LocalPair) -> None:
    with pair.primary.connect() as conn:
        conn.execute("CREATE TABLE replicated (id int)")
        conn.execute("INSERT INTO replicated SELECT generate_series(1, 100)")
    mirror = pair.mirrors[0]
    eventually_sync(lambda: table_visible(mirror, "replicated"), "table on mirror")
    eventually_sync(lambda: count_rows(mirror, "replicated") == 100, "rows on mirror")
    assert mirror.in_recovery()
    with mirror.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("INSERT INTO replicated VALUES (101)")


def test_servers_listen_on_loopback_as_an_unprivileged_user(pair: LocalPair) -> None:
    with pair.primary.connect() as conn:
        row = conn.execute("SHOW listen_addresses").fetchone()
    assert row == ("127.0.0.1",)
    assert pair.primary.pid is not None
    uid = os.stat(f"/proc/{pair.primary.pid}").st_uid
    assert uid == RunAs.for_this_process().uid
    assert uid != 0


def test_promote_makes_the_mirror_writable(make_pair: PairFactory) -> None:
    own = make_pair()
    mirror = own.mirrors[0]
    own.primary.stop("fast")
    mirror.promote()
    assert not mirror.in_recovery()
    with mirror.connect() as conn:
        conn.execute("CREATE TABLE after_promotion (id int)")
        conn.execute("INSERT INTO after_promotion VALUES (1)")
    assert count_rows(mirror, "after_promotion") == 1


def test_kill_crashes_every_process_and_restart_recovers(make_pair: PairFactory) -> None:
    own = make_pair()
    primary = own.primary
    with primary.connect() as conn:
        conn.execute("CREATE TABLE durable (id int)")
        conn.execute("INSERT INTO durable VALUES (1), (2)")
    victims = primary.processes()
    held = primary.connect()
    primary.kill()
    assert not primary.running
    assert len(victims) > 3
    assert not any(alive(p) for p in victims)
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        primary.connect(timeout=2)
    primary.start()
    assert count_rows(primary, "durable") == 2
    eventually_sync(lambda: table_visible(own.mirrors[0], "durable"), "mirror streaming again")


def test_freeze_stops_answers_and_thaw_resumes_them(make_pair: PairFactory) -> None:
    own = make_pair(mirrors=0)
    primary = own.primary
    held = primary.connect()
    primary.freeze()
    assert primary.frozen
    answered = threading.Event()

    def query() -> None:
        held.execute("SELECT 1")
        answered.set()

    worker = threading.Thread(target=query, daemon=True)
    worker.start()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(primary.dsn(), connect_timeout=2)
    assert not answered.is_set()
    primary.thaw()
    assert answered.wait(10), "the held connection answered after thaw"
    assert count_rows(primary, "pg_class") > 0
    held.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_stop_modes_end_the_server(make_pair: PairFactory, mode: str) -> None:
    own = make_pair(mirrors=0)
    pids = own.processes()
    own.primary.stop(mode)  # type: ignore[arg-type]
    assert not own.primary.running
    assert not any(alive(p) for p in pids)
    own.primary.start()
    assert count_rows(own.primary, "pg_class") > 0


def test_stopping_a_frozen_server_does_not_hang(make_pair: PairFactory) -> None:
    own = make_pair(mirrors=0)
    own.primary.freeze()
    own.primary.stop("fast", timeout=10)
    assert not own.primary.running


def test_synchronous_pair_waits_for_the_mirror(make_pair: PairFactory) -> None:
    own = make_pair(synchronous=True)
    mirror = own.mirrors[0]
    with own.primary.connect() as conn:
        row = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchone()
        assert row == ("quorum",)
        conn.execute("CREATE TABLE sync_t (id int)")
    mirror.stop("fast")
    done = threading.Event()

    def insert() -> None:
        with own.primary.connect() as conn:
            conn.execute("INSERT INTO sync_t VALUES (1)")
        done.set()

    threading.Thread(target=insert, daemon=True).start()

    def waiting_for_sync_rep() -> bool:
        with own.primary.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
            ).fetchone()
        return bool(row and row[0] == 1)

    eventually_sync(waiting_for_sync_rep, "the commit to wait for the mirror")
    assert not done.is_set()
    mirror.start()
    assert done.wait(10), "the commit returned once the mirror was back"
    assert count_rows(mirror, "sync_t") == 1


def test_pair_is_reused_with_its_data_and_password(make_pair: PairFactory) -> None:
    own = make_pair()
    with own.primary.connect() as conn:
        conn.execute("CREATE TABLE kept (id int)")
    own.stop()
    again = LocalPair(own.base_dir)
    again.start()
    try:
        assert again.password == own.password
        assert table_visible(again.primary, "kept")
        assert again.mirrors[0].in_recovery()
    finally:
        again.stop()


def test_pair_keeps_its_ports_after_serving_connections(make_pair: PairFactory) -> None:
    own = make_pair()
    ports = [n.port for n in own.nodes]
    # Connections closed by the server leave its port in TIME_WAIT for a minute.
    for _ in range(3):
        for node in own.nodes:
            with node.connect() as conn:
                conn.execute("SELECT 1")
    own.stop()
    again = LocalPair(own.base_dir)
    again.start()
    try:
        assert [n.port for n in again.nodes] == ports
        assert again.healed is None
    finally:
        again.stop()


def test_start_heals_a_pair_split_by_a_failover(make_pair: PairFactory) -> None:
    own = make_pair()
    primary, mirror = own.primary, own.mirrors[0]
    with primary.connect() as conn:
        conn.execute("CREATE TABLE split (id int, at text)")
        conn.execute("INSERT INTO split VALUES (1, 'before')")
    eventually_sync(lambda: table_visible(mirror, "split") and count_rows(mirror, "split") == 1,
                    "the row on the mirror")  # fmt: skip
    mirror.promote()
    with mirror.connect() as conn:
        conn.execute("INSERT INTO split VALUES (2, 'on the promoted mirror')")
    with primary.connect() as conn:  # the old primary goes on alone: the two diverge
        conn.execute("INSERT INTO split VALUES (3, 'on the old primary')")
    own.stop()
    again = LocalPair(own.base_dir)
    again.start()
    try:
        assert again.healed is not None
        assert "primary accepted writes on timeline 1, mirror on 2" in again.healed
        assert "rebuilt primary as a mirror of mirror (pg_rewind)" in again.healed
        assert again.leader.name == "mirror"
        assert again.primary.in_recovery()
        assert not again.mirrors[0].in_recovery()
        assert again.streaming()
        with again.mirrors[0].connect() as conn:
            conn.execute("INSERT INTO split VALUES (4, 'after healing')")
        eventually_sync(
            lambda: count_rows(again.primary, "split") == 3, "replay on the old primary"
        )
        with again.primary.connect() as conn:
            ids = conn.execute("SELECT array_agg(id ORDER BY id) FROM split").fetchone()
        assert ids == ([1, 2, 4],)
        again.stop()
        # Healed for good: the next start finds one writer and leaves it leading.
        third = LocalPair(own.base_dir)
        third.start()
        assert third.healed is None
        assert third.leader.name == "mirror"
        assert third.primary.in_recovery()
        third.stop()
    finally:
        again.stop()


def test_demo_tables_belong_to_the_owner_and_serve_the_service(
    pair: LocalPair, database: str
) -> None:
    assert pair.create_demo(database) is True
    assert pair.create_demo(database) is False  # made once
    with psycopg.connect(pair.primary.dsn(database, user=SERVICE), autocommit=True) as conn:
        owners = conn.execute(
            "SELECT array_agg(tableowner::text ORDER BY tablename) FROM pg_tables"
            " WHERE schemaname = 'public'"
        ).fetchone()
        assert owners == ([OWNER] * 4,)
        row = conn.execute("SELECT email FROM users WHERE id = 42").fetchone()
        assert row == ("ada@example.com",)
        conn.execute("INSERT INTO users (email) VALUES ('new@example.com')")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM events),"
            " (SELECT count(*) FROM accounts)"
        ).fetchone()
        assert counts == (3, 3, 2)


def test_unreachable_folder_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    if not RunAs.for_this_process().is_other:
        # The servers run as ourselves: every folder we can write is reachable.
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        LocalPair(private / "pair").run_as.check_reachable(private)
        return
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(DevDBError, match="cannot enter"):
        LocalPair(private / "pair").start()


def test_destroy_leaves_no_postgres_process(make_pair: PairFactory) -> None:
    own = make_pair(mirrors=2)
    pids = own.processes()
    assert len(pids) >= 6
    own.mirrors[1].freeze()
    own.destroy()
    eventually_sync(lambda: not any(alive(p) for p in pids), "every server process to exit")
    assert not own.base_dir.exists()


SCRIPT = """
import sys
from pathlib import Path
from app.devdb import LocalPair
pair = LocalPair(Path(sys.argv[1]))
pair.start()
print(" ".join(str(p) for p in pair.processes()), flush=True)
if sys.argv[2] == "hang":
    sys.stdin.read()
"""


@pytest.mark.parametrize("ending", ["exit", "hang"])
def test_no_server_outlives_its_harness(work_dir: Path, ending: str) -> None:
    """A process that exits without cleaning up, or is killed -9, takes its servers along."""
    base = work_dir / f"orphans-{ending}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(base), ending],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert pids, "the harness started servers"
    if ending == "hang":
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    eventually_sync(lambda: not any(alive(p) for p in pids), "the orphaned servers to exit")
