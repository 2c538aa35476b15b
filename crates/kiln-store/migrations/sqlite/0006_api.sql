-- The API server (issue 8): users with their access keys and policies, the resources created
-- through the Image Builder API, client tokens for idempotent calls, and which image each
-- pipeline execution produced.
--
-- Portable as 0001 is; the PostgreSQL copy is the same text. Secrets are stored sealed
-- (AES-256-GCM by kiln-server); the store never sees them in clear.

CREATE TABLE api_users (
    name        TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    policy      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE api_access_keys (
    access_key_id TEXT PRIMARY KEY,
    user_name     TEXT NOT NULL REFERENCES api_users (name) ON DELETE CASCADE,
    secret_sealed TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX api_access_keys_user ON api_access_keys (user_name);

-- Components, image recipes, infrastructure and distribution configurations and image
-- pipelines as the API shows them (`body` is the Get* output object). Components are also
-- in `components`, where builds resolve them.
CREATE TABLE api_resources (
    arn        TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    TEXT,
    account    TEXT NOT NULL,
    body       TEXT NOT NULL,
    tags       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX api_resources_kind ON api_resources (kind, account, name);

-- A create or update call's clientToken and the response it got: the same token with the same
-- request answers the same response; with another request, IdempotentParameterMismatch.
CREATE TABLE api_client_tokens (
    account      TEXT NOT NULL,
    operation    TEXT NOT NULL,
    client_token TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (account, operation, client_token)
);

-- One row per StartImagePipelineExecution: the image it created, the pipeline, the job that
-- builds it, and what the execution was started with (recipe, configurations).
CREATE TABLE api_executions (
    image_arn    TEXT PRIMARY KEY REFERENCES images (arn) ON DELETE CASCADE,
    pipeline_arn TEXT NOT NULL,
    job_id       INTEGER NOT NULL,
    snapshot     TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX api_executions_pipeline ON api_executions (pipeline_arn, created_at);
