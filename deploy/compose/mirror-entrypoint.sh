#!/usr/bin/env bash
# The mirror's start. The first time, copy the primary with pg_basebackup: --write-recovery-conf
# makes the copy a standby that streams from the primary through the slot "mirror". Then run
# PostgreSQL in the foreground (exec: it gets the container's stop signal itself).
set -euo pipefail

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    # Into a scratch folder first, so an interrupted copy is never taken for a data folder.
    rm -rf "$PGDATA.partial"
    pg_basebackup --pgdata="$PGDATA.partial" --write-recovery-conf --wal-method=stream \
        --slot=mirror --checkpoint=fast \
        --dbname="host=primary port=5432 user=replicator password=$REPLICATION_PASSWORD application_name=mirror"
    chmod 0700 "$PGDATA.partial"
    rm -rf "$PGDATA"
    mv "$PGDATA.partial" "$PGDATA"
fi

exec postgres "$@"
