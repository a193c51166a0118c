-- What the walshift role needs (docs/operations.md, "Privileges"), for docker/spec.toml.
-- Run once by the postgres image after 20-walshift.sh created the role.
-- tests/docker.rs runs this file against a real server and then
-- `walshift check docker/spec.toml` as the walshift role.

-- CREATE PUBLICATION ... FOR TABLE needs ownership of the sources.
GRANT app TO walshift;
-- The publication and the walshift state schema.
DO $$ BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO walshift', current_database());
END $$;
-- Sources, set columns, targets.
GRANT SELECT, UPDATE (status) ON users TO walshift;
GRANT SELECT ON orders TO walshift;
GRANT SELECT, INSERT, UPDATE, DELETE ON order_items TO walshift;
-- Replication origins, so walshift's own writes are not streamed back to it.
GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO walshift;
GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO walshift;
GRANT EXECUTE ON FUNCTION pg_replication_origin_xact_setup(pg_lsn, timestamptz) TO walshift;
GRANT EXECUTE ON FUNCTION pg_replication_origin_progress(text, boolean) TO walshift;
-- `walshift check` asks for this one too.
GRANT EXECUTE ON FUNCTION pg_replication_origin_oid(text) TO walshift;
-- The backfill throttles on the standby's replay lag, read from
-- pg_stat_replication: without pg_read_all_stats (in pg_monitor) a role sees
-- NULL lag for walsenders of other roles, and the throttle would see none.
GRANT pg_monitor TO walshift;
