//! Vulnerability scans of images: each image's inventory (so a rescan needs no disk), every
//! scan with its findings, and the "needs rebuild" marks a rescan sets. The store keeps the
//! inventory, feeds, summary and each finding as opaque JSON next to the plain columns the
//! `ListImageScanFindings` filters use (image ARN, vulnerability id, severity); it does not know
//! what a finding says beyond those.
//!
//! When a scan is recorded, each finding is compared with the image's previous scan by
//! (vulnerability id, package): `is_new` says it was not there, `first_seen_at` carries the
//! time it was first seen forward (Image Builder's `firstObservedAt`).

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, json_from_text, now, parse_ts, with_pool};

/// What started a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanTrigger {
    /// The scan stage of a build.
    Build,
    /// `kiln scan --catalogue` (or the scheduler) against newer feeds.
    Rescan,
}

impl ScanTrigger {
    /// `build` or `rescan`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanTrigger::Build => "build",
            ScanTrigger::Rescan => "rescan",
        }
    }

    fn from_row(s: &str, what: &str) -> Result<ScanTrigger> {
        match s {
            "build" => Ok(ScanTrigger::Build),
            "rescan" => Ok(ScanTrigger::Rescan),
            other => {
                Err(StoreError::Corrupt { what: what.to_owned(), detail: format!("scan trigger {other:?}") })
            }
        }
    }
}

/// A scan to record with [`Store::record_scan`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewScan {
    pub image_arn: String,
    pub trigger: ScanTrigger,
    /// The feeds that answered (JSON list).
    pub feeds: serde_json::Value,
    /// Counts and the gate (JSON object).
    pub summary: serde_json::Value,
    pub findings: Vec<NewScanFinding>,
}

/// One finding of a [`NewScan`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewScanFinding {
    pub vulnerability_id: String,
    /// The binary package.
    pub package: String,
    /// Inspector's severity name (`HIGH`).
    pub severity: String,
    pub fix_available: bool,
    /// The whole finding (the `ImageScanFinding` JSON).
    pub body: serde_json::Value,
}

/// A recorded scan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scan {
    pub id: i64,
    pub image_arn: String,
    pub trigger: ScanTrigger,
    #[serde(with = "time::serde::rfc3339")]
    pub scanned_at: OffsetDateTime,
    pub feeds: serde_json::Value,
    pub summary: serde_json::Value,
    /// In the order they were given.
    pub findings: Vec<ScanFinding>,
}

impl Scan {
    /// The findings the image's previous scan did not have.
    pub fn new_findings(&self) -> impl Iterator<Item = &ScanFinding> {
        self.findings.iter().filter(|f| f.is_new)
    }
}

/// A recorded finding.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanFinding {
    /// Increases with every finding recorded: the pagination cursor of
    /// [`FindingFilter::after`].
    pub id: i64,
    pub scan_id: i64,
    pub image_arn: String,
    pub vulnerability_id: String,
    pub package: String,
    pub severity: String,
    pub fix_available: bool,
    /// Not in the image's previous scan (every finding of an image's first scan is new).
    pub is_new: bool,
    /// When a scan of this image first had it.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen_at: OffsetDateTime,
    pub body: serde_json::Value,
}

/// Which findings [`Store::list_scan_findings`] returns: those of each image's latest scan
/// that match every non-empty list (any value of a list). The lists are
/// `ListImageScanFindings`' filters `imageBuildVersionArn`, `vulnerabilityId` and `severity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindingFilter {
    pub image_arns: Vec<String>,
    pub vulnerability_ids: Vec<String>,
    pub severities: Vec<String>,
    /// Only findings with an id above this (the last id of the previous page).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// An image a rescan found fixable vulnerabilities in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildMark {
    pub image_arn: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub marked_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct ScanRow {
    id: i64,
    image_arn: String,
    scanned_at: String,
    triggered_by: String,
    feeds: String,
    summary: String,
}

#[derive(sqlx::FromRow)]
struct FindingRow {
    id: i64,
    scan_id: i64,
    image_arn: String,
    vulnerability_id: String,
    package: String,
    severity: String,
    fix_available: bool,
    is_new: bool,
    first_seen_at: String,
    body: String,
}

const FINDING_COLUMNS: &str = "f.id, f.scan_id, f.image_arn, f.vulnerability_id, f.package, f.severity, \
                               f.fix_available, f.is_new, f.first_seen_at, f.body";

impl FindingRow {
    fn into_finding(self) -> Result<ScanFinding> {
        let what = format!("finding {} of scan {}", self.id, self.scan_id);
        Ok(ScanFinding {
            first_seen_at: parse_ts(&self.first_seen_at, &what)?,
            body: json_from_text(&self.body, &what, "body")?,
            id: self.id,
            scan_id: self.scan_id,
            image_arn: self.image_arn,
            vulnerability_id: self.vulnerability_id,
            package: self.package,
            severity: self.severity,
            fix_available: self.fix_available,
            is_new: self.is_new,
        })
    }
}

/// A write that named an image the catalogue does not have (its foreign key failed).
fn image_missing(arn: &str, op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            StoreError::ImageNotFound { what: arn.to_owned() }
        }
        _ => StoreError::Database { op, source: e },
    }
}

impl Store {
    /// Keep `inventory` as the image's inventory, replacing any kept before.
    pub async fn put_inventory(&self, arn: &str, inventory: &serde_json::Value) -> Result<()> {
        let op = "keep an image's inventory";
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO image_inventories (image_arn, inventory, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (image_arn) DO UPDATE SET inventory = $2, updated_at = $3",
            )
            .bind(arn)
            .bind(inventory.to_string())
            .bind(fmt_ts(now()))
            .execute(pool)
            .await
            .map_err(image_missing(arn, op))?
        });
        Ok(())
    }

    /// The image's kept inventory (`None` when none was kept, for example for an image built
    /// before kiln kept them).
    pub async fn get_inventory(&self, arn: &str) -> Result<Option<serde_json::Value>> {
        let row: Option<(String,)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT inventory FROM image_inventories WHERE image_arn = $1")
                .bind(arn)
                .fetch_optional(pool)
                .await
                .map_err(db("read an image's inventory"))?
        });
        row.map(|(text,)| json_from_text(&text, &format!("inventory of {arn}"), "inventory")).transpose()
    }

    /// Record a scan and its findings in one transaction, marking each finding new or not
    /// against the image's previous scan.
    pub async fn record_scan(&self, new: &NewScan) -> Result<Scan> {
        let at = now();
        let ts = fmt_ts(at);
        let arn = new.image_arn.as_str();
        let (scan_id, findings) = with_pool!(self, pool => {
            let op = "record a scan";
            let mut tx = pool.begin().await.map_err(db(op))?;
            // The write comes first, so SQLite takes its write lock before anything is read
            // and two scans of one image are recorded one after the other.
            let (scan_id,): (i64,) = sqlx::query_as(
                "INSERT INTO image_scans (image_arn, scanned_at, triggered_by, feeds, summary) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(arn)
            .bind(&ts)
            .bind(new.trigger.as_str())
            .bind(new.feeds.to_string())
            .bind(new.summary.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(image_missing(arn, op))?;
            let (previous,): (Option<i64>,) = sqlx::query_as(
                "SELECT MAX(id) FROM image_scans WHERE image_arn = $1 AND id < $2",
            )
            .bind(arn)
            .bind(scan_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db(op))?;
            let mut seen: HashMap<(String, String), String> = HashMap::new();
            if let Some(prev) = previous {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT vulnerability_id, package, first_seen_at FROM image_scan_findings \
                     WHERE scan_id = $1",
                )
                .bind(prev)
                .fetch_all(&mut *tx)
                .await
                .map_err(db(op))?;
                seen.extend(rows.into_iter().map(|(v, p, t)| ((v, p), t)));
            }
            let mut findings = Vec::with_capacity(new.findings.len());
            for f in &new.findings {
                let earlier = seen.get(&(f.vulnerability_id.clone(), f.package.clone()));
                let first_seen = earlier.cloned().unwrap_or_else(|| ts.clone());
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO image_scan_findings (scan_id, image_arn, vulnerability_id, package, \
                     severity, fix_available, is_new, first_seen_at, body) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(scan_id)
                .bind(arn)
                .bind(&f.vulnerability_id)
                .bind(&f.package)
                .bind(&f.severity)
                .bind(f.fix_available)
                .bind(earlier.is_none())
                .bind(&first_seen)
                .bind(f.body.to_string())
                .fetch_one(&mut *tx)
                .await
                .map_err(db(op))?;
                findings.push((id, earlier.is_none(), first_seen));
            }
            tx.commit().await.map_err(db(op))?;
            (scan_id, findings)
        });
        let what = format!("scan {scan_id}");
        let findings = findings
            .into_iter()
            .zip(&new.findings)
            .map(|((id, is_new, first_seen), f)| {
                Ok(ScanFinding {
                    id,
                    scan_id,
                    image_arn: new.image_arn.clone(),
                    vulnerability_id: f.vulnerability_id.clone(),
                    package: f.package.clone(),
                    severity: f.severity.clone(),
                    fix_available: f.fix_available,
                    is_new,
                    first_seen_at: parse_ts(&first_seen, &what)?,
                    body: f.body.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Scan {
            id: scan_id,
            image_arn: new.image_arn.clone(),
            trigger: new.trigger,
            scanned_at: at,
            feeds: new.feeds.clone(),
            summary: new.summary.clone(),
            findings,
        })
    }

    /// The image's most recent scan with its findings, if it was ever scanned.
    pub async fn latest_scan(&self, arn: &str) -> Result<Option<Scan>> {
        let op = "read an image's latest scan";
        let row: Option<ScanRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, image_arn, scanned_at, triggered_by, feeds, summary FROM image_scans \
                 WHERE image_arn = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(arn)
            .fetch_optional(pool)
            .await
            .map_err(db(op))?
        });
        let Some(row) = row else { return Ok(None) };
        let sql =
            format!("SELECT {FINDING_COLUMNS} FROM image_scan_findings f WHERE f.scan_id = $1 ORDER BY f.id");
        let rows: Vec<FindingRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(row.id).fetch_all(pool).await.map_err(db(op))?
        });
        let what = format!("scan {} of {arn}", row.id);
        Ok(Some(Scan {
            id: row.id,
            trigger: ScanTrigger::from_row(&row.triggered_by, &what)?,
            scanned_at: parse_ts(&row.scanned_at, &what)?,
            feeds: json_from_text(&row.feeds, &what, "feeds")?,
            summary: json_from_text(&row.summary, &what, "summary")?,
            image_arn: row.image_arn,
            findings: rows.into_iter().map(FindingRow::into_finding).collect::<Result<_>>()?,
        }))
    }

    /// The findings of every image's latest scan that match `filter`, in the order they were
    /// recorded (by id, so [`FindingFilter::after`] pages through them).
    pub async fn list_scan_findings(&self, filter: &FindingFilter) -> Result<Vec<ScanFinding>> {
        let mut sql = format!(
            "SELECT {FINDING_COLUMNS} FROM image_scan_findings f \
             WHERE f.scan_id IN (SELECT MAX(s.id) FROM image_scans s GROUP BY s.image_arn)"
        );
        let mut binds: Vec<String> = Vec::new();
        for (column, values) in [
            ("f.image_arn", &filter.image_arns),
            ("f.vulnerability_id", &filter.vulnerability_ids),
            ("f.severity", &filter.severities),
        ] {
            if values.is_empty() {
                continue;
            }
            let first = binds.len() + 1;
            let marks: Vec<String> = (first..first + values.len()).map(|n| format!("${n}")).collect();
            sql.push_str(&format!(" AND {column} IN ({})", marks.join(", ")));
            binds.extend(values.iter().cloned());
        }
        let mut after = None;
        if let Some(a) = filter.after {
            sql.push_str(&format!(" AND f.id > ${}", binds.len() + 1));
            after = Some(a);
        }
        sql.push_str(" ORDER BY f.id");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let rows: Vec<FindingRow> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            for b in &binds {
                q = q.bind(b);
            }
            if let Some(a) = after {
                q = q.bind(a);
            }
            q.fetch_all(pool).await.map_err(db("list scan findings"))?
        });
        rows.into_iter().map(FindingRow::into_finding).collect()
    }

    /// How many findings the latest scans of the images not DELETED have, by severity
    /// (the open findings of the catalogue; `kiln serve`'s metrics).
    pub async fn open_finding_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT f.severity, COUNT(*) FROM image_scan_findings f \
                 JOIN images i ON i.arn = f.image_arn \
                 WHERE f.scan_id IN (SELECT MAX(s.id) FROM image_scans s GROUP BY s.image_arn) \
                 AND i.state <> 'DELETED' GROUP BY f.severity ORDER BY f.severity",
            )
            .fetch_all(pool)
            .await
            .map_err(db("count open findings by severity"))?
        });
        Ok(rows.into_iter().map(|(s, n)| (s, u64::try_from(n).unwrap_or(0))).collect())
    }

    /// Mark the image as needing a rebuild, with why (replacing an earlier mark).
    pub async fn mark_needs_rebuild(&self, arn: &str, reason: &str) -> Result<()> {
        let op = "mark an image as needing a rebuild";
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO image_rebuild_marks (image_arn, reason, marked_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (image_arn) DO UPDATE SET reason = $2, marked_at = $3",
            )
            .bind(arn)
            .bind(reason)
            .bind(fmt_ts(now()))
            .execute(pool)
            .await
            .map_err(image_missing(arn, op))?
        });
        Ok(())
    }

    /// Remove the image's rebuild mark; whether it had one.
    pub async fn clear_needs_rebuild(&self, arn: &str) -> Result<bool> {
        let done = with_pool!(self, pool => {
            sqlx::query("DELETE FROM image_rebuild_marks WHERE image_arn = $1")
                .bind(arn)
                .execute(pool)
                .await
                .map_err(db("clear an image's rebuild mark"))?
                .rows_affected()
        });
        Ok(done > 0)
    }

    /// The image's rebuild mark, if it has one.
    pub async fn needs_rebuild(&self, arn: &str) -> Result<Option<RebuildMark>> {
        let row: Option<(String, String, String)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT image_arn, reason, marked_at FROM image_rebuild_marks WHERE image_arn = $1")
                .bind(arn)
                .fetch_optional(pool)
                .await
                .map_err(db("read an image's rebuild mark"))?
        });
        row.map(mark_from_row).transpose()
    }

    /// The AVAILABLE images marked as needing a rebuild, by ARN.
    pub async fn list_needing_rebuild(&self) -> Result<Vec<RebuildMark>> {
        let rows: Vec<(String, String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT m.image_arn, m.reason, m.marked_at FROM image_rebuild_marks m \
                 JOIN images i ON i.arn = m.image_arn WHERE i.state = $1 ORDER BY m.image_arn",
            )
            .bind(crate::ImageState::Available.as_str())
            .fetch_all(pool)
            .await
            .map_err(db("list the images needing a rebuild"))?
        });
        rows.into_iter().map(mark_from_row).collect()
    }
}

fn mark_from_row((image_arn, reason, marked_at): (String, String, String)) -> Result<RebuildMark> {
    let marked_at = parse_ts(&marked_at, &format!("rebuild mark of {image_arn}"))?;
    Ok(RebuildMark { image_arn, reason, marked_at })
}
