-- walshift's own state, in the database it migrates. `walshift run` creates it
-- idempotently; `walshift cleanup` drops it. One row per spec name.
CREATE SCHEMA IF NOT EXISTS walshift;

CREATE TABLE IF NOT EXISTS walshift.migration (
    name             text PRIMARY KEY,
    slot_name        text NOT NULL,
    publication_name text NOT NULL,
    origin_name      text NOT NULL,
    -- The slot's consistent point: every change committed after it is in the
    -- stream, so history read after it misses nothing (I1).
    consistent_point pg_lsn,
    -- End LSN of the last transaction whose keys are committed in the
    -- targets. Written in the same transaction as the keys (I4); the
    -- replication origin holds the same position when walshift may use it.
    applied_lsn      pg_lsn,
    applied_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    spec_file        text
);

-- Operator's pause of the backfill (`walshift ctl SPEC pause|resume`).
ALTER TABLE walshift.migration ADD COLUMN IF NOT EXISTS backfill_paused boolean NOT NULL DEFAULT false;

-- Backfill checkpoints, one row per mirror. Each chunk updates its row in
-- the same transaction as its writes (I6): a restart resumes after the last
-- committed chunk and never copies a finished range again.
CREATE TABLE IF NOT EXISTS walshift.backfill (
    name          text NOT NULL REFERENCES walshift.migration (name) ON DELETE CASCADE,
    mirror        int  NOT NULL,
    -- Upper bound (key columns as text) of the last committed chunk; NULL
    -- before the first chunk.
    lower_key     text[],
    done          boolean NOT NULL DEFAULT false,
    rows_done     bigint  NOT NULL DEFAULT 0,
    chunks        bigint  NOT NULL DEFAULT 0,
    rows_estimate bigint,
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz,
    PRIMARY KEY (name, mirror)
);

-- Written every second by a running `run`: lag measured end to end with a
-- watermark through the stream, byte lag behind the server's WAL, and a
-- heartbeat that tells `status` and `wait` whether a run is alive.
ALTER TABLE walshift.migration
    ADD COLUMN IF NOT EXISTS lag_seconds     float8,
    ADD COLUMN IF NOT EXISTS lag_bytes       bigint,
    ADD COLUMN IF NOT EXISTS lag_measured_at timestamptz,
    ADD COLUMN IF NOT EXISTS run_heartbeat   timestamptz,
    ADD COLUMN IF NOT EXISTS run_host        text,
    ADD COLUMN IF NOT EXISTS run_pid         int;

-- Also written every second by a running `run`.
ALTER TABLE walshift.migration ADD COLUMN IF NOT EXISTS throttle_reason text;
ALTER TABLE walshift.backfill ADD COLUMN IF NOT EXISTS rows_per_second float8;

-- Cut-over (`walshift cutover`). The command files a request; the running
-- `run` carries it out on its apply session (the one writer of the targets,
-- I3) and reports each step here, so the command can follow from any host.
ALTER TABLE walshift.migration
    ADD COLUMN IF NOT EXISTS cutover_at        timestamptz,
    ADD COLUMN IF NOT EXISTS cutover_postponed boolean NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS walshift.cutover (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL REFERENCES walshift.migration (name) ON DELETE CASCADE,
    dry_run      boolean NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- requested -> accepted -> verifying -> locking -> draining -> checking
    -- -> done | failed | cancelled
    state        text NOT NULL DEFAULT 'requested',
    detail       text,
    attempts     int NOT NULL DEFAULT 0,
    -- The outcome (freeze and its parts, keys re-checked, gates), as JSON.
    result       jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS cutover_name_state ON walshift.cutover (name, state);

-- Runtime overrides of [backfill] limits (`walshift ctl SPEC set KEY=VALUE`),
-- key -> value as written; a running `run` is told by NOTIFY walshift_control.
ALTER TABLE walshift.migration ADD COLUMN IF NOT EXISTS settings jsonb NOT NULL DEFAULT '{}';

-- Keys of two-way mirrors that walshift holds on to between transactions,
-- the key columns as text (as the stream carries them), with the direction
-- of the key's last write ('f' forward, 'r' reverse, 'b' both shapes).
--   carry: the key's recompute met a row the application changed after the
--          snapshot it ran in; the direction waits for the next transaction.
--   mark:  while the mirror's backfill runs, the application wrote the key's
--          new shape (or both); the backfill's chunks leave it alone.
--   held:  (any mirror) the key's recompute fails on its data; it waits, with
--          the error, until its row changes or `walshift ctl SPEC retry`.
-- Written by the apply session only, in the transactions that decide them.
CREATE TABLE IF NOT EXISTS walshift.keys (
    name     text    NOT NULL REFERENCES walshift.migration (name) ON DELETE CASCADE,
    mirror   int     NOT NULL,
    key      text[]  NOT NULL,
    kind     text    NOT NULL CHECK (kind IN ('carry', 'mark', 'held')),
    dir      text    NOT NULL CHECK (dir IN ('f', 'r', 'b')),
    since    timestamptz NOT NULL DEFAULT now(),
    sqlstate text,
    error    text,
    PRIMARY KEY (name, mirror, key, kind)
);

-- Two-way mirrors, per mirror, since the migration began (written by a
-- running `run` about once a second): writes of both versions to one key
-- that met before walshift reconciled the first (the later commit won), and
-- keys whose old shape was recomputed from the new one.
ALTER TABLE walshift.backfill
    ADD COLUMN IF NOT EXISTS conflicts    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS reverse_keys bigint NOT NULL DEFAULT 0;

-- The spec a cut-over request was made with (`Spec::cutover_digest`, and its
-- file for messages): the run refuses a request whose spec differs from the
-- one it loaded.
ALTER TABLE walshift.cutover
    ADD COLUMN IF NOT EXISTS spec_digest text,
    ADD COLUMN IF NOT EXISTS spec_file   text;

-- `walshift ctl SPEC retry` counts up; the run tries its held keys again.
ALTER TABLE walshift.migration ADD COLUMN IF NOT EXISTS retry_held bigint NOT NULL DEFAULT 0;

-- Lost slots (docs/topology.md). `slot_lost` holds the reason while a
-- resynchronisation is under way: set (with the backfill reset) before the
-- dead slot is dropped, cleared once the new slot exists, so a resync cut
-- short is carried out again by the next run. The last resync stays visible.
ALTER TABLE walshift.migration
    ADD COLUMN IF NOT EXISTS slot_lost          text,
    ADD COLUMN IF NOT EXISTS slot_resyncs       int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS slot_resynced_at   timestamptz,
    ADD COLUMN IF NOT EXISTS slot_resync_reason text;
