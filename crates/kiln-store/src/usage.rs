//! Usage records of images: append-only events (a launch, later a distribution or an API
//! read) with the account that did it and details as JSON, and their summary per image and
//! account for usage reports and lifecycle rules (`lastLaunched`).

use time::OffsetDateTime;

use crate::error::{Result, db};
use crate::{Store, fmt_ts, now, parse_ts, with_pool};

/// One thing done with an image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    pub id: i64,
    pub image_arn: String,
    /// What was done: `launch`, `pull`, ...
    pub kind: String,
    /// The account that did it.
    pub account: String,
    pub details: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// How often one account did one kind of thing with one image, and when last.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSummary {
    pub image_arn: String,
    pub account: String,
    pub kind: String,
    pub count: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    id: i64,
    image_arn: String,
    kind: String,
    account: String,
    details: String,
    at: String,
}

impl Store {
    /// Record that `account` did `kind` with the image `image_arn`.
    pub async fn record_usage(
        &self,
        image_arn: &str,
        kind: &str,
        account: &str,
        details: &serde_json::Value,
    ) -> Result<i64> {
        let ts = fmt_ts(now());
        let body = details.to_string();
        let (id,): (i64,) = with_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO usage_events (image_arn, kind, account, details, at) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(image_arn)
            .bind(kind)
            .bind(account)
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
                "SELECT id, image_arn, kind, account, details, at FROM usage_events \
                 WHERE $1 IS NULL OR image_arn = $1 ORDER BY id",
            )
            .bind(image_arn)
            .fetch_all(pool)
            .await
            .map_err(db("list usage"))?
        });
        usage_events(rows)
    }

    /// At most `limit` usage events recorded after the event `after` (0 for all), oldest
    /// first: how a follower (the server's threat detection) reads uses made by other
    /// processes (`kiln launch`, `kiln image pull`).
    pub async fn usage_after(&self, after: i64, limit: u32) -> Result<Vec<UsageEvent>> {
        let rows: Vec<UsageRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, image_arn, kind, account, details, at FROM usage_events \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(db("read usage events"))?
        });
        usage_events(rows)
    }

    /// The id of the latest usage event (0 when there is none).
    pub async fn latest_usage_id(&self) -> Result<i64> {
        let (id,): (Option<i64>,) = with_pool!(self, pool => {
            sqlx::query_as("SELECT MAX(id) FROM usage_events")
                .fetch_one(pool)
                .await
                .map_err(db("read the latest usage event"))?
        });
        Ok(id.unwrap_or(0))
    }

    /// Counts and last times of `kind` per image and account (of one image, or all), by
    /// image then account.
    pub async fn usage_summary(&self, image_arn: Option<&str>, kind: &str) -> Result<Vec<UsageSummary>> {
        let rows: Vec<(String, String, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT image_arn, account, COUNT(*), MAX(at) FROM usage_events \
                 WHERE ($1 IS NULL OR image_arn = $1) AND kind = $2 \
                 GROUP BY image_arn, account ORDER BY image_arn, account",
            )
            .bind(image_arn)
            .bind(kind)
            .fetch_all(pool)
            .await
            .map_err(db("summarise usage"))?
        });
        rows.into_iter()
            .map(|(image_arn, account, count, last)| {
                let what = format!("usage of {image_arn}");
                Ok(UsageSummary {
                    last_at: parse_ts(&last, &what)?,
                    count: u64::try_from(count).unwrap_or(0),
                    kind: kind.to_owned(),
                    image_arn,
                    account,
                })
            })
            .collect()
    }
}

fn usage_events(rows: Vec<UsageRow>) -> Result<Vec<UsageEvent>> {
    rows.into_iter()
        .map(|r| {
            let what = format!("usage event {}", r.id);
            Ok(UsageEvent {
                at: parse_ts(&r.at, &what)?,
                details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
                id: r.id,
                image_arn: r.image_arn,
                kind: r.kind,
                account: r.account,
            })
        })
        .collect()
}
