-- Which server process holds a role that must run once for the whole deployment (firing
-- schedules, running lifecycle policies, following the feeds for webhooks and threat
-- detection), until when. A holder renews its term; another process takes the role only once
-- the term has run out, so a dead server's role moves on without any coordination service.
CREATE TABLE leadership (
    role       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
