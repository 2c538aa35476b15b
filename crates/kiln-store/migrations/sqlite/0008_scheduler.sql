-- The scheduler of `kiln serve` (issue 8): per image pipeline, the schedule it last evaluated
-- (as the pipeline's `schedule` JSON and tags), since when that schedule applies (slots before
-- are not owed) and the last slot it consumed (built or skipped).
--
-- Portable as 0001 is.

CREATE TABLE pipeline_schedules (
    pipeline_arn TEXT PRIMARY KEY,
    schedule     TEXT NOT NULL,
    since        TEXT NOT NULL,
    last_slot    TEXT,
    updated_at   TEXT NOT NULL
);
