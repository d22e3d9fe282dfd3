#!/usr/bin/env bash
# The primary's first start only (docker-entrypoint-initdb.d): the role the mirror streams
# as, its replication slot (so the primary keeps the WAL the mirror has not received yet),
# and the pg_hba line that lets it in.
set -euo pipefail

psql --variable=ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" \
    --variable=password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SELECT pg_create_physical_replication_slot('mirror');
SQL

echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
