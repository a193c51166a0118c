#!/usr/bin/env bash
# The staging standby: on an empty volume, a base backup from the primary
# through the physical slot "standby" (created by initdb/20-walshift.sh), then
# the postgres image's own entrypoint starts it as a streaming hot standby.
# The password comes from PGPASSWORD in the environment, for pg_basebackup and
# for the WAL receiver alike; it is never written into the data directory.
set -euo pipefail

: "${PGPASSWORD:?set REPLICATION_PASSWORD (see docker/.env.example)}"
primary_host="${PRIMARY_HOST:-primary}"
primary_port="${PRIMARY_PORT:-5432}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready --quiet --host "$primary_host" --port "$primary_port"; do
        echo "standby: waiting for the primary at $primary_host:$primary_port"
        sleep 1
    done
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    gosu postgres pg_basebackup --host "$primary_host" --port "$primary_port" \
        --username replicator --pgdata "$PGDATA" --wal-method stream \
        --slot standby --checkpoint fast --progress --no-password
    # What `pg_basebackup -R` would write, without the password it would copy in.
    gosu postgres touch "$PGDATA/standby.signal"
    cat >> "$PGDATA/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=$primary_host port=$primary_port user=replicator application_name=standby'
primary_slot_name = 'standby'
CONF
fi

exec docker-entrypoint.sh "$@"
