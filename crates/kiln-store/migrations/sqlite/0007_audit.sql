-- The audit log and threat findings of `kiln serve` (issue 8).
--
-- Portable as 0001 is; the PostgreSQL copy is the same text but for the id columns.

-- One row per API call, appended by the server after it answered. Never a secret: the
-- access key id names the key, the secret key is not in the record. `result` is `Success` or
-- the error code the caller got (`AccessDeniedException`, `SignatureDoesNotMatch`, ...).
-- The caller's columns are NULL for calls refused before the signature was verified; the
-- access key id is then the one the request claimed.
CREATE TABLE audit_log (
    id             INTEGER PRIMARY KEY,
    at             TEXT    NOT NULL,
    request_id     TEXT    NOT NULL,
    account        TEXT,
    principal      TEXT,
    access_key_id  TEXT,
    operation      TEXT    NOT NULL,
    resource       TEXT,
    result         TEXT    NOT NULL,
    http_status    INTEGER NOT NULL,
    source_address TEXT,
    user_agent     TEXT,
    duration_ms    INTEGER NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_access_key ON audit_log (access_key_id, id);
CREATE INDEX audit_log_principal ON audit_log (principal, id);
CREATE INDEX audit_log_operation ON audit_log (operation, id);
CREATE INDEX audit_log_resource ON audit_log (resource, id);

-- Threat detection findings, one row per (type, principal, resource): a repeat adds to
-- `count` and moves `last_seen_at`, the most serious severity seen stays.
CREATE TABLE threat_findings (
    id            INTEGER PRIMARY KEY,
    finding_type  TEXT    NOT NULL,
    severity      TEXT    NOT NULL,
    title         TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    principal     TEXT    NOT NULL,
    resource      TEXT    NOT NULL,
    first_seen_at TEXT    NOT NULL,
    last_seen_at  TEXT    NOT NULL,
    count         INTEGER NOT NULL,
    details       TEXT    NOT NULL,
    archived_at   TEXT,
    UNIQUE (finding_type, principal, resource)
);
CREATE INDEX threat_findings_last_seen ON threat_findings (last_seen_at);
