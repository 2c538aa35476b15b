//! Where images are distributed: the outcome of the last distribution per image and region.

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, now, parse_ts, with_pool};

/// An image in one region.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRegion {
    pub image_arn: String,
    pub region: String,
    pub store_url: String,
    /// `AVAILABLE`, `FAILED` (with the reason) or `DELETED`.
    pub state: String,
    pub reason: Option<String>,
    pub uploaded_bytes: u64,
    pub total_bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct RegionRow {
    image_arn: String,
    region: String,
    store_url: String,
    state: String,
    reason: Option<String>,
    uploaded_bytes: i64,
    total_bytes: i64,
    updated_at: String,
}

impl Store {
    /// Records the outcome of distributing `image_arn` to `region`.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_image_region(
        &self,
        image_arn: &str,
        region: &str,
        store_url: &str,
        state: &str,
        reason: Option<&str>,
        uploaded_bytes: u64,
        total_bytes: u64,
    ) -> Result<()> {
        if !matches!(state, "AVAILABLE" | "FAILED" | "DELETED") {
            return Err(StoreError::Corrupt {
                what: format!("region {region}"),
                detail: format!("state {state}"),
            });
        }
        let ts = fmt_ts(now());
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let done = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO image_regions (image_arn, region, store_url, state, reason, uploaded_bytes, total_bytes, updated_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM images WHERE arn = $1) \
                 ON CONFLICT (image_arn, region) DO UPDATE SET store_url = excluded.store_url, state = excluded.state, \
                 reason = excluded.reason, uploaded_bytes = excluded.uploaded_bytes, \
                 total_bytes = excluded.total_bytes, updated_at = excluded.updated_at",
            )
            .bind(image_arn)
            .bind(region)
            .bind(store_url)
            .bind(state)
            .bind(reason)
            .bind(as_i64(uploaded_bytes))
            .bind(as_i64(total_bytes))
            .bind(&ts)
            .execute(pool)
            .await
            .map_err(db("record an image's region"))?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::ImageNotFound { what: image_arn.to_owned() });
        }
        Ok(())
    }

    /// The regions of an image, by name.
    pub async fn image_regions(&self, image_arn: &str) -> Result<Vec<ImageRegion>> {
        let rows: Vec<RegionRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT image_arn, region, store_url, state, reason, uploaded_bytes, total_bytes, updated_at \
                 FROM image_regions WHERE image_arn = $1 ORDER BY region",
            )
            .bind(image_arn)
            .fetch_all(pool)
            .await
            .map_err(db("list an image's regions"))?
        });
        rows.into_iter()
            .map(|r| {
                let what = format!("region {} of {}", r.region, r.image_arn);
                Ok(ImageRegion {
                    updated_at: parse_ts(&r.updated_at, &what)?,
                    uploaded_bytes: u64::try_from(r.uploaded_bytes).unwrap_or(0),
                    total_bytes: u64::try_from(r.total_bytes).unwrap_or(0),
                    image_arn: r.image_arn,
                    region: r.region,
                    store_url: r.store_url,
                    state: r.state,
                    reason: r.reason,
                })
            })
            .collect()
    }
}
