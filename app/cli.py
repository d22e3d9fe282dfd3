"""The `mirrorpool` command: serve, or dev (a local primary+mirror pair, then serve)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import math
import secrets
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from app import __version__
from app.api.auth import hash_key
from app.errors import DevDBError, SettingsError
from app.migrations.runner import Migrator
from app.redaction import configure_logging
from app.settings import Settings, load_settings

logger = logging.getLogger("app.cli")

EXIT_USAGE = 2
DEVDB_DIR = Path(".devdb")


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: finish what is running, clean up, exit 0."""


def _request_stop(signum: int, frame: FrameType | None) -> None:
    # uvicorn handles the signal itself (graceful shutdown) and re-raises it once done;
    # this handler turns that into an exception so `finally` blocks (the local pair) run.
    raise StopRequested(signal.Signals(signum).name)


def serve(settings: Settings) -> int:
    """Run the HTTP service until SIGINT/SIGTERM; in-flight requests finish first."""
    from app.main import check_startup_logins, create_app  # noqa: PLC0415 - a quick --help

    # A superuser login, or a key's role that cannot log in, stops start-up here with one
    # line (exit code 2), before any worker starts.
    warnings = asyncio.run(check_startup_logins(settings))
    # Several workers each build their app from the environment; one gets it built here,
    # so a bad DSN or query file fails before the server starts.
    app = create_app(settings, warnings) if settings.workers == 1 else "app.main:create_app"
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
        # Nothing reads the client address; X-Forwarded-* parsing would cost every request.
        proxy_headers=False,
    )
    return 0


def dev(settings: Settings, mirrors: int) -> int:
    """Serve against the configured DSNs, or against a local pair under .devdb/."""
    from app.devdb import OWNER, SERVICE, LocalPair  # noqa: PLC0415

    if settings.primary_dsn is not None:
        logger.info("MIRRORPOOL_PRIMARY_DSN is set: serving it, no local pair started")
        return serve(settings)
    keys: dict[str, object] = {}
    local_key = None
    if settings.auth == "keys" and not settings.all_api_keys():
        # A key for this run only, printed once: the docs page's Authorize button takes it.
        local_key = secrets.token_urlsafe(24)
        keys["api_keys"] = [
            {"id": "dev", "sha256": hash_key(local_key),
             "scopes": ["read", "write", "migrate", "admin"]}
        ]  # fmt: skip
    pair = LocalPair(DEVDB_DIR, mirrors=mirrors)
    pair.start()
    try:
        dsns = {n.name: n.dsn(password=False, user=SERVICE) for n in pair.nodes}
        width = max(len(name) for name in dsns)
        lines = [
            f"local PostgreSQL pair in {DEVDB_DIR}/ (passwords in {DEVDB_DIR}/pgpass); the "
            f"service logs in as {SERVICE}, migrations run as {OWNER}, the schema's owner:"
        ]
        lines += [f"  {name:<{width}}  {dsn}" for name, dsn in dsns.items()]
        owner = pair.primary.dsn(password=False, user=OWNER)
        lines += [
            f'  psql:  PGPASSFILE={DEVDB_DIR}/pgpass psql "{owner}"',
            f"  docs:  http://{settings.host}:{settings.port}/docs",
        ]
        if local_key:
            lines.append(f"  key:   {local_key}  (Authorization: Bearer <key>; valid for this run)")
        print("\n".join(lines), flush=True)
        mirror_dsns = ",".join(m.dsn(user=SERVICE) for m in pair.mirrors) or None
        # One worker: other workers would read the DSNs from the environment, which has none.
        local = load_settings(
            primary_dsn=pair.primary.dsn(user=SERVICE),
            mirror_dsn=mirror_dsns,
            migrations_dsn=pair.migrations_dsn(),
            workers=1,
            **keys,
        )
        return serve(local)
    finally:
        pair.stop()
        print("local PostgreSQL pair stopped", flush=True)


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.errors import MirrorpoolError  # noqa: PLC0415
    from app.main import build_cluster, build_migrator  # noqa: PLC0415

    cluster = build_cluster(settings)
    migrator = build_migrator(cluster, settings)
    await cluster.open()
    try:
        if settings.migrations_dsn is None:  # else the run connects there, writer or not
            await cluster.wait_for_writer(
                settings.connect_timeout + settings.health_timeout * settings.health_threshold
            )
        actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"
        try:
            for line in await _migration_lines(migrator, args, actor):
                print(line)
        except MirrorpoolError as exc:
            print(f"mirrorpool migrate {args.action}: {exc.detail}", file=sys.stderr)
            return 1
        return 0
    finally:
        await cluster.close(timeout=settings.shutdown_timeout)


async def _migration_lines(migrator: Migrator, args: argparse.Namespace, actor: str) -> list[str]:
    """Run one `migrate` action and say what happened, a line per version or step."""
    if args.action == "status":
        return [f"{v.version:>6}  {v.state:<9} {v.name}" for v in await migrator.status()]
    if args.action == "plan":
        lines = []
        for step in await migrator.plan(args.target):
            lines.append(f"{step.direction:<4} {step.version:>6} {step.script.path.name}")
            lines += [f"       warning: {w}" for w in step.warnings]
        return lines or ["nothing to do"]
    if args.action == "repair":
        repaired = await migrator.repair(args.version, actor=actor)
        return [f"version {r['version']}: {r['action']}" for r in repaired] or ["nothing to do"]
    run = migrator.apply if args.action == "apply" else migrator.rollback
    steps = await run(args.target, dry_run=args.dry_run, actor=actor)
    return [
        f"{s['status']:<7} {s['direction']:<4} {s['file']}"
        + (f" in {s['execution_ms']} ms" if s.get("execution_ms") is not None else "")
        for s in steps
    ] or ["nothing to do"]


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
    actions = migrate.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="every version and its state")
    plan = actions.add_parser("plan", help="the steps to a target, without running them")
    plan.add_argument("--target", type=int, default=None)
    apply = actions.add_parser("apply", help="apply pending migrations")
    apply.add_argument("--target", type=int, default=None)
    apply.add_argument("--dry-run", action="store_true")
    rollback = actions.add_parser("rollback", help="run down files to a target version")
    rollback.add_argument("--target", type=int, required=True)
    rollback.add_argument("--dry-run", action="store_true")
    repair = actions.add_parser("repair", help="clear a failed entry or re-record a checksum")
    repair.add_argument("version", type=int)
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
            return serve(settings)
        if args.command == "migrate":
            return asyncio.run(_migrate(settings, args))
        return dev(settings, args.mirrors)
    except SettingsError as exc:
        print(f"mirrorpool: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DevDBError as exc:
        print(f"mirrorpool: local PostgreSQL pair: {exc}", file=sys.stderr)
        return 1
    except StopRequested as stop:
        logger.info("stopped by %s", stop)
        return 0
