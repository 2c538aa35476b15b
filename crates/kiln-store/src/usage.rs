//! Usage records of images: append-only events (a launch, later a distribution or an API
//! read) with details as JSON.

use time::OffsetDateTime;

use crate::error::{Result, db};
use crate::{Store, fmt_ts, now, parse_ts, with_pool};

/// One thing done with an image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    pub id: i64,
    pub image_arn: String,
    /// What was done: `launch`, ...
    pub kind: String,
    pub details: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    id: i64,
    image_arn: String,
    kind: String,
    details: String,
    at: String,
}

impl Store {
    /// Record that `kind` was done with the image `image_arn`.
    pub async fn record_usage(
        &self,
        image_arn: &str,
        kind: &str,
        details: &serde_json::Value,
    ) -> Result<i64> {
        let ts = fmt_ts(now());
        let body = details.to_string();
        let (id,): (i64,) = with_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO usage_events (image_arn, kind, details, at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(image_arn)
            .bind(kind)
            .bind(&body)
            .bind(&ts)
            .fetch_one(pool)
            .await
            .map_err(db("record usage"))?
        });
        Ok(id)
    }

    /// The usage of one image (or of all when `image_arn` is `None`), oldest first.
    pub async fn list_usage(&self, image_arn: Option<&str>) -> Result<Vec<UsageEvent>> {
        let rows: Vec<UsageRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, image_arn, kind, details, at FROM usage_events \
                 WHERE $1 IS NULL OR image_arn = $1 ORDER BY id",
            )
            .bind(image_arn)
            .fetch_all(pool)
            .await
            .map_err(db("list usage"))?
        });
        rows.into_iter()
            .map(|r| {
                let what = format!("usage event {}", r.id);
                Ok(UsageEvent {
                    at: parse_ts(&r.at, &what)?,
                    details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
                    id: r.id,
                    image_arn: r.image_arn,
                    kind: r.kind,
                })
            })
            .collect()
    }
}
