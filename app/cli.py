"""The `mirrorpool` command: serve, or dev (a local primary+mirror pair, then serve)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from app import __version__, workers
from app.demo import QUERIES_DIR
from app.devdb import OWNER, SERVICE, LocalPair, port_is_free
from app.errors import DevDBError, SettingsError
from app.migrations.runner import Migrator
from app.migrations.versions import Version
from app.redaction import configure_logging
from app.settings import Settings, load_settings

if TYPE_CHECKING:
    from app.main import MirrorpoolApp

logger = logging.getLogger("app.cli")

EXIT_USAGE = 2
DEVDB_DIR = Path(".devdb")


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: finish what is running, clean up, exit 0."""


def _request_stop(signum: int, frame: FrameType | None) -> None:
    # uvicorn handles the signal itself (graceful shutdown) and re-raises it once done;
    # this handler turns that into an exception so `finally` blocks (the local pair) run.
    raise StopRequested(signal.Signals(signum).name)


class PortBusy(Exception):
    """The HTTP port is taken: found before anything starts."""


def check_port(settings: Settings) -> None:
    """Raise PortBusy, with the one line to print, when the service's port is taken."""
    if not port_is_free(settings.port, settings.host):
        raise PortBusy(
            f"{settings.host}:{settings.port} is already in use (another mirrorpool?); "
            f"set MIRRORPOOL_PORT to another port, e.g. MIRRORPOOL_PORT={settings.port + 1} "
            "make run"
        )


def serve(settings: Settings) -> int:
    """Run the HTTP service until SIGINT/SIGTERM; in-flight requests finish first."""
    # Imported here, for a quick --help.
    from app.main import check_startup_logins, create_app  # noqa: PLC0415
    from app.sql.pipeline import require_one_write  # noqa: PLC0415

    check_port(settings)
    require_one_write()  # (a psycopg whose libpq is older than 17: one line, exit code 2)
    # A superuser login, or a key's role that cannot log in, stops start-up here with one
    # line (exit code 2), before any worker starts.
    warnings = asyncio.run(check_startup_logins(settings))
    # Several workers each build their app from the environment; one gets it built here,
    # so a bad DSN or query file fails before the server starts.
    app = create_app(settings, warnings) if settings.workers == 1 else "app.main:create_app"
    # Several workers share one folder for their figures (app/workers.py), set before any
    # of them starts (prometheus-client reads it when a worker imports it).
    shared = None
    if settings.workers > 1 and workers.shared_dir() is None:
        shared = tempfile.mkdtemp(prefix="mirrorpool-workers-")
        os.environ[workers.SHARED_DIR_VARIABLE] = shared
    try:
        _run(app, settings)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
            del os.environ[workers.SHARED_DIR_VARIABLE]
    return 0


def _run(app: MirrorpoolApp | str, settings: Settings) -> None:
    # Imported here: the migration and dev commands start without the HTTP stack.
    import uvicorn  # noqa: PLC0415

    from app.api.connection_limits import connection_limits, protocol_factory  # noqa: PLC0415

    uvicorn.run(
        app,
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.value,
        access_log=False,  # app/api/access_log.py logs each request, with its request id
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout) or None,
        server_header=False,
        # uvicorn's httptools protocol, with limits on headers, slow requests and idle
        # connections (app/api/connection_limits.py).
        http=protocol_factory(connection_limits(settings)),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        # Nothing reads the client address; X-Forwarded-* parsing would cost every request.
        proxy_headers=False,
    )


def dev(settings: Settings, mirrors: int) -> int:
    """Serve against the configured DSNs, or against a local pair under .devdb/."""
    from app.sql.pipeline import require_one_write  # noqa: PLC0415

    check_port(settings)
    require_one_write()
    if settings.primary_dsn is not None:
        logger.info("MIRRORPOOL_PRIMARY_DSN is set: serving it, no local pair started")
        return serve(settings)
    overrides: dict[str, object] = {}
    local_key = None
    if settings.auth == "keys" and not settings.all_api_keys():
        # A key for this run only, printed once: the docs page's Authorize button takes it.
        from app.api.auth import hash_key  # noqa: PLC0415

        local_key = secrets.token_urlsafe(24)
        overrides["api_keys"] = [
            {"id": "dev", "sha256": hash_key(local_key),
             "scopes": ["read", "write", "migrate", "admin"]}
        ]  # fmt: skip
    if "queries_dir" not in settings.model_fields_set and not settings.queries_dir.exists():
        # No named queries of the project's own: the demo's, over the demo tables.
        overrides["queries_dir"] = QUERIES_DIR
    pair = LocalPair(DEVDB_DIR, mirrors=mirrors)
    try:
        # (inside: a Ctrl-C while the pair is made stops what had started of it)
        pair.start()
        demo = pair.create_demo()
        (DEVDB_DIR / "env").write_text("\n".join(pair.env_lines()) + "\n")
        print("\n".join(_dev_banner(pair, settings, demo, local_key)), flush=True)
        mirror_dsns = ",".join(m.dsn(user=SERVICE) for m in pair.mirrors) or None
        # One worker: other workers would read the DSNs from the environment, which has none.
        local = load_settings(
            primary_dsn=pair.primary.dsn(user=SERVICE),
            mirror_dsn=mirror_dsns,
            migrations_dsn=pair.migrations_dsn(),
            workers=1,
            **overrides,
        )
        return serve(local)
    finally:
        pair.stop()
        print("local PostgreSQL pair stopped", flush=True)


def _dev_banner(pair: LocalPair, settings: Settings, demo: bool, key: str | None) -> list[str]:
    """What `make run` prints: where the pair is, how to reach it, the run's key."""
    dsns = {n.name: n.dsn(password=False, user=SERVICE) for n in pair.nodes}
    width = max(len(name) for name in dsns)
    lines = [f"local pair: {pair.healed}"] if pair.healed else []
    lines.append(
        f"local PostgreSQL pair in {DEVDB_DIR}/ (passwords in {DEVDB_DIR}/pgpass); the "
        f"service logs in as {SERVICE}, migrations run as {OWNER}, the schema's owner:"
    )
    lines += [f"  {name:<{width}}  {dsn}" for name, dsn in dsns.items()]
    owner = pair.leader.dsn(password=False, user=OWNER)
    made = "made now" if demo else "kept from the last run"
    lines += [
        f"  demo:  tables users, orders, events, accounts ({made}, owned by {OWNER})",
        f'  psql:  PGPASSFILE={DEVDB_DIR}/pgpass psql "{owner}"',
        f"  env:   source {DEVDB_DIR}/env   (the DSNs for another shell; from this folder "
        "`mirrorpool migrate` finds the pair by itself)",
        f"  docs:  http://{settings.host}:{settings.port}/docs",
    ]
    if key:
        lines.append(f"  key:   {key}  (Authorization: Bearer <key>; valid for this run)")
    return lines


def with_local_pair(settings: Settings, command: str) -> Settings:
    """With no MIRRORPOOL_PRIMARY_DSN, the local pair that `make run` keeps running in
    .devdb/ under this folder, said so on stderr; SettingsError when there is none."""
    if settings.primary_dsn is not None:
        return settings
    pair = LocalPair.running(DEVDB_DIR)
    if pair is None:
        raise SettingsError(
            "MIRRORPOOL_PRIMARY_DSN is not set and no local pair runs in .devdb/ here: "
            "start one with `make run` in another shell (then run this again from this "
            "folder), or point MIRRORPOOL_PRIMARY_DSN at your primary"
        )
    where = ", ".join(f"{n.name} 127.0.0.1:{n.port}" for n in pair.nodes)
    print(
        f"mirrorpool {command}: MIRRORPOOL_PRIMARY_DSN is not set: using the local pair "
        f"running in {DEVDB_DIR}/ ({where})",
        file=sys.stderr,
        flush=True,
    )
    return load_settings(
        primary_dsn=pair.primary.dsn(user=SERVICE),
        mirror_dsn=",".join(m.dsn(user=SERVICE) for m in pair.mirrors) or None,
        migrations_dsn=settings.migrations_dsn or pair.migrations_dsn(),
    )


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.errors import MigrationDrift, MirrorpoolError  # noqa: PLC0415
    from app.main import build_cluster, build_migrator  # noqa: PLC0415

    if not args.verbose:
        # The cluster's events (nodes up, the writer found, probes cancelled at the end)
        # are the service's story; a migrate command reports its own outcome.
        for name in ("app.cluster", "psycopg"):
            logging.getLogger(name).setLevel(logging.ERROR)
    cluster = build_cluster(settings)
    migrator = build_migrator(cluster, settings)
    # With MIRRORPOOL_MIGRATIONS_DSN every connection goes there: the cluster is not needed.
    follow = settings.migrations_dsn is None
    if follow:
        await cluster.open()
    try:
        if follow:
            await cluster.wait_for_writer(
                settings.connect_timeout + settings.health_timeout * settings.health_threshold
            )
        actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"
        try:
            for line in await _migration_lines(migrator, args, actor):
                print(line)
        except MirrorpoolError as exc:
            if isinstance(exc, MigrationDrift):
                exc.detail += " (mirrorpool migrate repair)"
            print(f"mirrorpool migrate {args.action}: {exc.detail}", file=sys.stderr)
            for line in _diagnostics(exc):
                print(f"  {line}", file=sys.stderr)
            return 1
        return 0
    finally:
        if follow:
            await cluster.close(timeout=settings.shutdown_timeout)
            await cluster.supervisor.close()


def _diagnostics(exc: Exception) -> list[str]:
    """PostgreSQL's hint and context of a failed migration, a line each."""
    from app.errors import MirrorpoolError  # noqa: PLC0415

    if not isinstance(exc, MirrorpoolError):
        return []
    database = exc.extra.get("database") or {}
    lines = [f"hint: {database['hint']}"] if database.get("hint") else []
    context = exc.extra.get("context")
    if context:
        lines += [f"context: {line}" for line in str(context).splitlines()]
    return lines


async def _migration_lines(migrator: Migrator, args: argparse.Namespace, actor: str) -> list[str]:
    """Run one `migrate` action and say what happened, a line per version or step."""
    if args.action == "status":
        return [
            f"{v.version if v.version is not None else 'R':>6}  {v.state:<9} {v.name}"
            for v in await migrator.status()
        ] or ["no migrations: the folder (MIRRORPOOL_MIGRATIONS_DIR) is empty or absent"]
    if args.action == "plan":
        lines = []
        for step in await migrator.plan(args.target):
            version = step.version if step.version is not None else "R"
            line = f"{step.direction:<4} {version:>6} {step.script.file}"
            if step.source:
                line += f"  (applied per {step.source}: recorded, not run)"
            elif step.outside:
                line += f"  (outside a transaction: {step.outside})"
            lines.append(line)
            lines += [f"       warning: {w}" for w in step.warnings]
        return lines or ["nothing to do"]
    if args.action == "repair":
        repaired = await migrator.repair(args.version, actor=actor)
        return [
            f"{_label(r['version'], r['file'] or r['name'])}: {r['action']}" for r in repaired
        ] or ["nothing to do"]
    if args.action == "baseline":
        adopted = await migrator.baseline(actor=actor)
        return [
            f"recorded {_label(s['version'], s['file'])} as applied (from {s['baseline_from']})"
            for s in adopted
        ] or ["nothing to do: no other tool's history lists a version mirrorpool has pending"]
    if args.action == "apply":
        steps = await migrator.apply(args.target, dry_run=args.dry_run, actor=actor)
    else:
        steps = await migrator.rollback(args.target, dry_run=args.dry_run, actor=actor)
    return [
        f"{s['status']:<7} {s['direction']:<4} {s['file']}"
        + (f" in {s['execution_ms']} ms" if s.get("execution_ms") is not None else "")
        for s in steps
    ] or ["nothing to do"]


def _label(version: str | None, file: str) -> str:
    return f"version {version}" if version is not None else file


def _version(text: str) -> Version:
    """A `--target` or repair version as the folder spells it (3, 1.2, 2023.01.02)."""
    try:
        return Version.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="mirrorpool", description="PostgreSQL over HTTP, with mirror failover."
    )
    parser.add_argument("--version", action="version", version=f"mirrorpool {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve HTTP using the MIRRORPOOL_* settings")
    dev_cmd = commands.add_parser(
        "dev", help="start a local primary+mirror under .devdb/ (unless DSNs are set) and serve"
    )
    dev_cmd.add_argument("--mirrors", type=int, default=1, help="number of mirrors (default 1)")
    migrate = commands.add_parser("migrate", help="schema migrations (same engine as the API)")
    # -v is taken before or after the action; SUPPRESS keeps the action's parser from
    # resetting what `migrate -v` set.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log the cluster's events too",
    )
    migrate.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    actions = migrate.add_subparsers(dest="action", required=True)
    actions.add_parser("status", parents=[verbose], help="every version and its state")
    plan = actions.add_parser(
        "plan", parents=[verbose], help="the steps to a target, without running them"
    )
    plan.add_argument("--target", type=_version, default=None, help="a version: 3, 1.2, ...")
    apply = actions.add_parser("apply", parents=[verbose], help="apply pending migrations")
    apply.add_argument("--target", type=_version, default=None, help="a version: 3, 1.2, ...")
    apply.add_argument("--dry-run", action="store_true")
    rollback = actions.add_parser(
        "rollback", parents=[verbose], help="run down files to a target version"
    )
    rollback.add_argument("--target", type=_version, required=True, help="a version, or 0")
    rollback.add_argument("--dry-run", action="store_true")
    repair = actions.add_parser(
        "repair",
        parents=[verbose],
        help="clear failed entries, forget missing files, re-record edited files' checksums "
        "(of VERSION, or of everything that drifted); never asks",
    )
    repair.add_argument("version", type=_version, nargs="?", default=None)
    actions.add_parser(
        "baseline",
        parents=[verbose],
        help="record as applied what Flyway, golang-migrate or dbmate applied, running nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mirrorpool` console script and `python -m app`."""
    args = build_parser().parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _request_stop)
    try:
        settings = load_settings()
        configure_logging(settings.log_level.value, settings.log_format)
        if args.command == "serve":
            return serve(with_local_pair(settings, "serve"))
        if args.command == "migrate":
            return asyncio.run(_migrate(with_local_pair(settings, "migrate"), args))
        return dev(settings, args.mirrors)
    except (SettingsError, PortBusy) as exc:
        print(f"mirrorpool: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, SettingsError) else 1
    except DevDBError as exc:
        print(f"mirrorpool: local PostgreSQL pair: {exc}", file=sys.stderr)
        return 1
    except StopRequested as stop:
        logger.info("stopped by %s", stop)
        return 0
