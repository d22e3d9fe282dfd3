#!/usr/bin/env bash
# The primary's first start only (docker-entrypoint-initdb.d), as the image's superuser
# (POSTGRES_USER), in the application's database (POSTGRES_DB):
# - the role the mirror streams as, its replication slot (so the primary keeps the WAL the
#   mirror has not received yet), and the pg_hba line that lets it in;
# - the application's logins. app_owner owns the schema `public`: migrations run as it
#   (MIRRORPOOL_MIGRATIONS_DSN). mirrorpool, the service's own login, may read and write what
#   app_owner creates there (default privileges: no GRANT after each migration) and create
#   nothing, so it passes mirrorpool's start-up check, and grants, row-level security and
#   READ ONLY bind it. It may also run pg_promote(), for POST /v1/admin/promote.
set -euo pipefail

psql --variable=ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" \
    --variable=replication_password="$REPLICATION_PASSWORD" \
    --variable=owner_password="$OWNER_PASSWORD" \
    --variable=service_password="$SERVICE_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
SELECT pg_create_physical_replication_slot('mirror');

CREATE ROLE app_owner WITH LOGIN PASSWORD :'owner_password';
CREATE ROLE mirrorpool WITH LOGIN PASSWORD :'service_password';
ALTER SCHEMA public OWNER TO app_owner;
-- PostgreSQL 15 and later grant PUBLIC no CREATE on public; older ones do.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO mirrorpool;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO mirrorpool;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO mirrorpool;
GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO mirrorpool;
-- Keys that log in as roles of their own: mirrorpool ends their backends left running past
-- a request's deadline (README, "Logins: a recipe"), which needs
-- GRANT pg_signal_backend TO mirrorpool;
SQL

echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
