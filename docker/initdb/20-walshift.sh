#!/usr/bin/env bash
# Roles with passwords from the environment (never from a file in the repo or
# the image), the standby's physical slot, and pg_hba for physical
# replication. Run once by the postgres image on an empty data volume, after
# 10-schema.sql and before 30-grants.sql.
set -euo pipefail

: "${WALSHIFT_PASSWORD:?set WALSHIFT_PASSWORD (see docker/.env.example)}"
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD (see docker/.env.example)}"

# \getenv (psql 15+) reads the passwords from the environment into psql
# variables: they stay out of the SQL text and out of psql's arguments (`ps`).
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv walshift_password WALSHIFT_PASSWORD
\getenv replication_password REPLICATION_PASSWORD
SET password_encryption = 'scram-sha-256';
-- walshift: logical replication (REPLICATION) and the SQL it runs.
CREATE ROLE walshift LOGIN REPLICATION PASSWORD :'walshift_password';
-- The standby's base backup and WAL stream.
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'replication_password';
-- Reserved now, so the standby's base backup and stream lose no WAL.
SELECT pg_create_physical_replication_slot('standby', true);
SQL

# Physical replication connections match only the "replication" keyword, not
# "all"; walshift's logical connection matches the database like any session.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
