-- Where a follower of the store's feeds (image state changes, usage events) is, so that a
-- restarted `kiln serve` notifies and detects what happened while it was down instead of
-- starting from the newest event.
CREATE TABLE feed_cursors (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);
