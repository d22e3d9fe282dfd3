"""The FastAPI application: create_app(settings) and the lifespan that owns the cluster."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__, workers
from app.api import admin, docs, errors, migrations, named, neon, pool, probes, query
from app.api.access_log import AccessLogMiddleware, RepeatFolder
from app.api.auth import Keyring
from app.api.fast_lane import FastAnswers, FastRoute, JsonEndpoint, ResponseEndpoint, route_at
from app.api.gate import RequestGate
from app.api.inflight import InFlight
from app.api.metrics import Metrics, MetricsMiddleware
from app.api.request_id import RequestIdMiddleware
from app.cluster.cluster import Cluster
from app.cluster.logins import check_logins
from app.dsn import dsn_secrets, with_defaults
from app.migrations.folder import MigrationFolder
from app.migrations.runner import MigrationSettings, Migrator
from app.redaction import configure_logging, redactor
from app.service.bodies import QueryRequest, TransactionRequest
from app.service.query import result_body, run_query, run_transaction, transaction_body
from app.settings import Settings, load_settings
from app.sql import named as named_queries
from app.sql import pipeline, session
from app.sql.engine import Engine
from app.sql.multiplex import LANE_BATCH_IDLE, LANE_BATCH_SETTING
from app.sql.options import EngineOptions, StatementRules
from app.sql.types import SESSION_SETTINGS, register_loaders
from app.supervisor import Supervisor

logger = logging.getLogger(__name__)

DESCRIPTION = """\
PostgreSQL over HTTP: parameterised SQL through a connection pool per node, versioned
migrations, and failover to a streaming mirror when the primary is lost.
"""


class MirrorpoolApp(FastAPI):
    """FastAPI, with one middleware stack for every request (build_middleware_stack) and,
    innermost in it, the fast answers of the query routes when MIRRORPOOL_FAST_PATH is on."""

    fast_answers: Mapping[str, FastRoute] = {}

    def build_middleware_stack(self) -> ASGIApp:
        """The one way in, outermost first: the middlewares install_middleware adds (access
        log, metrics, request id, the gate: headers, key, body limit, in-flight counts); the
        error handlers (app/api/errors.py: every failure, the 500 included, so each answer
        carries its request id and is logged and counted with its status); the fast answers;
        FastAPI's router. Starlette's own stack puts the 500 outside every middleware and has
        no place for the fast answers; FastAPI's adds its telemetry, which mirrorpool does not
        turn on. A fault in the four middlewares themselves is uvicorn's to log and answer."""
        handlers = dict(self.exception_handlers)
        app: ASGIApp = AsyncExitStackMiddleware(self.router)
        if self.fast_answers:
            app = FastAnswers(app, self.fast_answers)
        app = errors.ProblemHandlers(app, handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request into the stack; the lifespan through FastAPI's own. FastAPI's call
        asks its telemetry, which mirrorpool does not turn on, whether it is on: a few
        microseconds of every request, skipped."""
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, with mirrorpool's problem answers (app/api/errors.py)."""
        if self.openapi_schema is None:
            self.openapi_schema = errors.document_problems(super().openapi())
        return self.openapi_schema


def build_migrator(cluster: Cluster, settings: Settings) -> Migrator:
    """The migration engine over the files in MIRRORPOOL_MIGRATIONS_DIR (read live), running
    on the writer or on MIRRORPOOL_MIGRATIONS_DSN when that is set."""
    direct = None
    if settings.migrations_dsn is not None:
        dsn = settings.migrations_dsn.get_secret_value()
        redactor.add(*dsn_secrets(dsn))
        direct = with_defaults(dsn, connect_timeout=settings.connect_timeout)
    folder = MigrationFolder(settings.migrations_dir)
    folder.read()  # a folder no format reads stops start-up; later calls read it again
    return Migrator(
        cluster,
        folder,
        MigrationSettings(
            lock_timeout_ms=settings.migration_lock_timeout_ms,
            lock_wait_s=settings.migration_lock_wait_s,
            statement_timeout_ms=settings.migration_statement_timeout_ms,
        ),
        direct,
    )


def build_cluster(settings: Settings, supervisor: Supervisor | None = None) -> Cluster:
    """The cluster, its connections set up for the query engine, its background work under
    `supervisor` (one of its own when not given: close it after the cluster)."""
    pipeline.require_one_write()  # (the CLI says so before anything starts: app/cli.py)
    supervisor = supervisor or Supervisor()
    if settings.pgbouncer:
        # PgBouncer refuses the `options` startup parameter, and a session behind a
        # transaction pooler is not ours to set up: the engine sets what it relies on in
        # every transaction instead (SET LOCAL, see Engine.own_sessions).
        return Cluster(settings, supervisor=supervisor, configure=register_loaders)
    return Cluster(
        settings,
        supervisor=supervisor,
        session_options=session.startup_options(
            {
                **SESSION_SETTINGS,
                "statement_timeout": str(settings.statement_timeout_ms),
                "lock_timeout": str(settings.lock_timeout_ms),
                # The lanes' clock for a batch of writes (app/sql/multiplex.py), defined on
                # every connection from the start, so none tells whether a batch ran on it.
                LANE_BATCH_SETTING: LANE_BATCH_IDLE,
            }
        ),
        configure=register_loaders,
    )


async def check_startup_logins(settings: Settings) -> list[str]:
    """Check the logins the service would serve through (raises SettingsError when one must
    not be used), on connections of their own; the warnings to show."""
    cluster = build_cluster(settings)
    roles = [(key.id, key.role) for key in settings.all_api_keys() if key.role]
    return await check_logins(cluster.nodes, settings, roles)


def freeze_startup_objects() -> None:
    """Keep what start-up built (it lives as long as the process) out of the collector's
    full passes, which otherwise stall every request in flight for tens of milliseconds
    (p99 at 32 clients: 60-75 ms with them, under 10 ms without). Once per process."""
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()


def warn_if_open(keyring: Keyring, settings: Settings) -> None:
    """Say loudly that anyone who reaches the service may run SQL, when that is so."""
    if not keyring.enabled:
        logger.warning(
            "AUTHENTICATION IS DISABLED (MIRRORPOOL_AUTH=disabled): anyone who can reach "
            "%s:%d can run any SQL",
            settings.host,
            settings.port,
        )


def install_middleware(
    app: MirrorpoolApp,
    settings: Settings,
    keyring: Keyring,
    inflight: InFlight,
    metrics: Metrics,
    engine: Engine,
    folder: RepeatFolder,
) -> None:
    """The stack's middlewares (MirrorpoolApp.build_middleware_stack puts them together),
    and the fast answers at its centre."""
    # Added innermost first: the request id is given before anything can fail.
    app.add_middleware(RequestGate, settings=settings, keyring=keyring, inflight=inflight)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(AccessLogMiddleware, folder=folder)
    if settings.fast_path:
        app.fast_answers = fast_answers(engine, settings, keyring)


def fast_answers(engine: Engine, settings: Settings, keyring: Keyring) -> dict[str, FastRoute]:
    """The query routes answered without FastAPI's per-request machinery (app/api/fast_lane.py),
    each with the service function and encoder its FastAPI route calls."""
    cut = partial(result_body, max_bytes=settings.max_response_bytes)
    one = JsonEndpoint(QueryRequest, run_query, cut, engine, settings, keyring)
    many = JsonEndpoint(
        TransactionRequest, run_transaction, transaction_body, engine, settings, keyring
    )
    neon_sql = ResponseEndpoint(
        partial(neon.answer, engine=engine, settings=settings, keyring=keyring)
    )
    return {
        path: (route_at(router, path), endpoint)
        for router, path, endpoint in (
            (query.router, "/v1/query", one),
            (query.router, "/v1/transaction", many),
            (neon.router, neon.PATH, neon_sql),
        )
    }


def create_app(
    settings: Settings | None = None, login_warnings: list[str] | None = None
) -> MirrorpoolApp:
    """Build the app. The cluster is created (and its pools opened) by the lifespan, after
    the logins were checked (app/cluster/logins.py), unless `login_warnings` says they were."""
    if settings is None:
        # A uvicorn worker (MIRRORPOOL_WORKERS > 1) builds its app from the environment in a
        # process of its own, which `mirrorpool serve` never set up: without this its records
        # would skip the redacting filter and the configured format (and INFO would be lost).
        settings = load_settings()
        configure_logging(settings.log_level.value, settings.log_format)
    # Built here, not in the lifespan, so a missing DSN fails before the server starts. The
    # lifespan owns the supervisor: every task and timer the service starts runs under it,
    # and it stops them all once the cluster is closed.
    supervisor = Supervisor()
    cluster = build_cluster(settings, supervisor)
    settings.check_auth()
    engine = Engine(
        cluster,
        EngineOptions.of(settings),
        supervisor=supervisor,
        rules=StatementRules.of(settings),
    )
    keyring = Keyring(settings)
    warn_if_open(keyring, settings)
    queries = named_queries.load(settings.queries_dir)
    migrator = build_migrator(cluster, settings)
    metrics = Metrics(cluster, migrator)
    inflight, folder = InFlight(), RepeatFolder()
    key_roles = [(key.id, key.role) for key in settings.all_api_keys() if key.role]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.login_warnings is None:  # `mirrorpool serve` checked them already
            app.state.login_warnings = await check_logins(cluster.nodes, settings, key_roles)
        cluster.warnings = list(app.state.login_warnings)
        await cluster.open()
        await engine.open()
        freeze_startup_objects()
        logger.info(
            "mirrorpool %s started with nodes %s",
            __version__,
            ", ".join(f"{n.name} ({n.target})" for n in cluster.nodes),
        )
        try:
            async with workers.publishing(cluster):
                yield
        finally:
            if not await inflight.drain(settings.shutdown_timeout):
                logger.warning(
                    "%d requests still running after %g s; closing anyway",
                    inflight.count,
                    settings.shutdown_timeout,
                )
            await engine.close()
            await cluster.close(timeout=settings.shutdown_timeout)
            await supervisor.close(settings.shutdown_timeout)
            folder.flush()  # repeated 503 lines still counted
            logger.info("mirrorpool stopped; pools closed")

    app = MirrorpoolApp(
        title="mirrorpool",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by app/api/docs.py from local assets
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_public else None,
    )
    if settings.docs_public:
        docs.install(app, "mirrorpool")
    app.state.settings = settings
    app.state.cluster = cluster
    app.state.supervisor = supervisor
    app.state.engine = engine
    app.state.keyring = keyring
    app.state.metrics = metrics
    app.state.queries = queries
    app.state.migrator = migrator
    app.state.login_warnings = login_warnings
    errors.install(app)
    install_middleware(app, settings, keyring, inflight, metrics, engine, folder)
    for module in (query, neon, named, migrations, admin, probes, pool):
        app.include_router(module.router)
    return app
