//! What monitoring reads of the catalogue: every image state change in the order it was
//! recorded (the history's ids grow), so the server can follow changes made by any worker,
//! on this machine or another, and send them to webhooks and metrics without the build code
//! knowing; and the number of images per state for the metrics' gauge.

use time::OffsetDateTime;

use crate::error::{Result, db};
use crate::images::ImageState;
use crate::{Store, fmt_ts, now, parse_ts, with_pool};

/// One state change of one image, with its position in the history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStateEvent {
    /// The history row's id: pass the last one seen to [`Store::state_changes_after`].
    pub id: i64,
    pub image_arn: String,
    /// `None` for the creation of the image.
    pub from: Option<ImageState>,
    pub to: ImageState,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    id: i64,
    arn: String,
    from_state: Option<String>,
    to_state: String,
    reason: Option<String>,
    at: String,
}

impl Store {
    /// At most `limit` state changes recorded after the change `after` (0 for all), oldest
    /// first.
    pub async fn state_changes_after(&self, after: i64, limit: u32) -> Result<Vec<ImageStateEvent>> {
        let rows: Vec<HistoryRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT h.id, i.arn, h.from_state, h.to_state, h.reason, h.at FROM image_state_history h \
                 JOIN images i ON i.id = h.image_id WHERE h.id > $1 ORDER BY h.id LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(db("read image state changes"))?
        });
        rows.into_iter()
            .map(|r| {
                let what = format!("state change {} of {}", r.id, r.arn);
                let state = |s: &str| {
                    s.parse::<ImageState>()
                        .map_err(|detail| crate::StoreError::Corrupt { what: what.clone(), detail })
                };
                Ok(ImageStateEvent {
                    from: r.from_state.as_deref().map(state).transpose()?,
                    to: state(&r.to_state)?,
                    at: parse_ts(&r.at, &what)?,
                    id: r.id,
                    image_arn: r.arn,
                    reason: r.reason,
                })
            })
            .collect()
    }

    /// The id of the latest state change (0 when there is none): where a follower that
    /// should not replay the past starts.
    pub async fn latest_state_change_id(&self) -> Result<i64> {
        let (id,): (Option<i64>,) = with_pool!(self, pool => {
            sqlx::query_as("SELECT MAX(id) FROM image_state_history")
                .fetch_one(pool)
                .await
                .map_err(db("read the latest image state change"))?
        });
        Ok(id.unwrap_or(0))
    }

    /// The position a follower saved under `name` with [`Store::save_cursor`], if it ever did.
    pub async fn cursor(&self, name: &str) -> Result<Option<i64>> {
        let row: Option<(i64,)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT position FROM feed_cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
                .map_err(db("read a feed cursor"))?
        });
        Ok(row.map(|(p,)| p))
    }

    /// Saves a follower's position under `name` (replacing the previous one).
    pub async fn save_cursor(&self, name: &str, position: i64) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO feed_cursors (name, position, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(position)
            .bind(fmt_ts(now()))
            .execute(pool)
            .await
            .map_err(db("save a feed cursor"))?
        });
        Ok(())
    }

    /// How many images are in each state (states without images left out), by state name.
    pub async fn image_counts_by_state(&self) -> Result<Vec<(ImageState, u64)>> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT state, COUNT(*) FROM images GROUP BY state ORDER BY state")
                .fetch_all(pool)
                .await
                .map_err(db("count images per state"))?
        });
        rows.into_iter()
            .map(|(state, count)| {
                let parsed = state.parse::<ImageState>().map_err(|detail| crate::StoreError::Corrupt {
                    what: "image state count".into(),
                    detail,
                })?;
                Ok((parsed, u64::try_from(count).unwrap_or(0)))
            })
            .collect()
    }
}
