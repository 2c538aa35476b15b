-- Lifecycle policies run by `kiln serve`, and images built without a pipeline (CreateImage).
--
-- Portable as 0001 is, except the rebuild of api_executions below: SQLite cannot drop a NOT
-- NULL constraint in place. The PostgreSQL copy does it with
-- `ALTER TABLE api_executions ALTER COLUMN pipeline_arn DROP NOT NULL`.

-- One row per run of a lifecycle policy: its id (`lce-` and a UUID-shaped hex), the policy
-- and its account, the state (RUNNING, SUCCESS, FAILED) with why it failed, when it started
-- and ended, and the images it acted on as the API's `LifecycleExecutionResource` list
-- (JSON, opaque here).
CREATE TABLE lifecycle_executions (
    id         TEXT PRIMARY KEY,
    policy_arn TEXT NOT NULL,
    account    TEXT NOT NULL,
    state      TEXT NOT NULL,
    reason     TEXT,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    resources  TEXT NOT NULL
);
CREATE INDEX lifecycle_executions_policy ON lifecycle_executions (policy_arn, started_at);

-- An execution started by CreateImage has no pipeline: pipeline_arn becomes nullable.
-- Nothing references api_executions, so it can be rebuilt under its name.
CREATE TABLE api_executions_new (
    image_arn    TEXT PRIMARY KEY REFERENCES images (arn) ON DELETE CASCADE,
    pipeline_arn TEXT,
    job_id       INTEGER NOT NULL,
    snapshot     TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
INSERT INTO api_executions_new (image_arn, pipeline_arn, job_id, snapshot, created_at)
    SELECT image_arn, pipeline_arn, job_id, snapshot, created_at FROM api_executions;
DROP TABLE api_executions;
ALTER TABLE api_executions_new RENAME TO api_executions;
CREATE INDEX api_executions_pipeline ON api_executions (pipeline_arn, created_at);
