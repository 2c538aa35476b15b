-- Usage records: what was done with an image (a launch for manual testing, later
-- distributions and API reads), for usage reports and audit. Append-only.
CREATE TABLE usage_events (
    id        INTEGER PRIMARY KEY,
    image_arn TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    details   TEXT    NOT NULL,
    at        TEXT    NOT NULL
);
CREATE INDEX usage_events_image ON usage_events (image_arn, id);
