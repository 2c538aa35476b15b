-- Where an image has been distributed: one row per image and region ("store"), with the
-- outcome of the last distribution there. An image is AVAILABLE in a region only when its
-- row says so (and the store's own release marker exists).
CREATE TABLE image_regions (
    image_arn      TEXT    NOT NULL REFERENCES images (arn) ON DELETE CASCADE,
    region         TEXT    NOT NULL,
    store_url      TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('AVAILABLE', 'FAILED', 'DELETED')),
    reason         TEXT,
    uploaded_bytes INTEGER NOT NULL,
    total_bytes    INTEGER NOT NULL,
    updated_at     TEXT    NOT NULL,
    PRIMARY KEY (image_arn, region)
);
