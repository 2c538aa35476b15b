-- Sharing, output names and usage per account (issue 7).
--
-- Portable as 0001 is; the PostgreSQL copy is the same text. Rows are keyed by the image ARN,
-- so they go with the image.

-- Who may launch or pull an image besides its owner: an account id, or `all` (public).
CREATE TABLE image_launch_permissions (
    image_arn  TEXT NOT NULL REFERENCES images (arn) ON DELETE CASCADE,
    principal  TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    PRIMARY KEY (image_arn, principal)
);

-- The name an image has in each region of its distribution (the target's name template,
-- expanded when the build registered the image). Kept apart from image_regions, which only
-- has regions with a store.
CREATE TABLE image_region_names (
    image_arn TEXT NOT NULL REFERENCES images (arn) ON DELETE CASCADE,
    region    TEXT NOT NULL,
    name      TEXT NOT NULL,
    PRIMARY KEY (image_arn, region)
);

-- The account that did what a usage event records; earlier events were the owner's.
ALTER TABLE usage_events ADD COLUMN account TEXT NOT NULL DEFAULT '000000000000';
CREATE INDEX usage_events_account ON usage_events (image_arn, account);
