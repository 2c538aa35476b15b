//! Threat detection findings (kiln-api's `threat` module raises them): one row per finding
//! type, principal and resource, so a repeat updates the finding (count, last seen, the most
//! serious severity) instead of adding a row. Findings can be archived once looked at; a new
//! occurrence brings an archived finding back.

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, json_from_text, now, parse_opt_ts, parse_ts, with_pool};

/// The severities, least serious first.
pub const THREAT_SEVERITIES: [&str; 3] = ["LOW", "MEDIUM", "HIGH"];

/// A finding to record, or one more occurrence of it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewThreatFinding {
    /// `UnauthorizedAccess:AccessKey/RepeatedFailures`, ...
    pub finding_type: String,
    /// One of [`THREAT_SEVERITIES`].
    pub severity: String,
    pub title: String,
    pub description: String,
    pub principal: String,
    pub resource: String,
    pub first_seen: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    /// Occurrences this update adds (at least 1).
    pub occurrences: u64,
    pub details: serde_json::Value,
}

/// A stored finding.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreatFinding {
    pub id: i64,
    #[serde(rename = "type")]
    pub finding_type: String,
    pub severity: String,
    pub title: String,
    pub description: String,
    pub principal: String,
    pub resource: String,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    pub count: u64,
    pub details: serde_json::Value,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
}

/// What [`Store::list_threat_findings`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreatFindingFilter {
    pub finding_type: Option<String>,
    /// At least this severity.
    pub min_severity: Option<String>,
    pub principal: Option<String>,
    pub resource: Option<String>,
    /// Findings seen (last) at or after this time.
    pub since: Option<OffsetDateTime>,
    pub include_archived: bool,
}

#[derive(sqlx::FromRow)]
struct ThreatRow {
    id: i64,
    finding_type: String,
    severity: String,
    title: String,
    description: String,
    principal: String,
    resource: String,
    first_seen_at: String,
    last_seen_at: String,
    count: i64,
    details: String,
    archived_at: Option<String>,
}

const THREAT_COLUMNS: &str = "id, finding_type, severity, title, description, principal, resource, \
                              first_seen_at, last_seen_at, count, details, archived_at";

/// The severity's rank as SQL (portable: no LEAST/GREATEST, which SQLite lacks).
fn rank_sql(column: &str) -> String {
    format!("(CASE {column} WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2 WHEN 'LOW' THEN 1 ELSE 0 END)")
}

impl ThreatRow {
    fn into_finding(self) -> Result<ThreatFinding> {
        let what = format!("threat finding {}", self.id);
        Ok(ThreatFinding {
            first_seen: parse_ts(&self.first_seen_at, &what)?,
            last_seen: parse_ts(&self.last_seen_at, &what)?,
            archived_at: parse_opt_ts(self.archived_at, &what)?,
            details: json_from_text(&self.details, &what, "details")?,
            count: u64::try_from(self.count).unwrap_or(0),
            id: self.id,
            finding_type: self.finding_type,
            severity: self.severity,
            title: self.title,
            description: self.description,
            principal: self.principal,
            resource: self.resource,
        })
    }
}

impl Store {
    /// Record a finding, or merge it into the stored one of the same type, principal and
    /// resource: `occurrences` added to the count, first and last seen widened, the more
    /// serious severity kept, title, description and details replaced, and un-archived.
    pub async fn upsert_threat_finding(&self, finding: &NewThreatFinding) -> Result<ThreatFinding> {
        if !THREAT_SEVERITIES.contains(&finding.severity.as_str()) {
            return Err(StoreError::InvalidInput {
                what: "threat finding severity".into(),
                detail: format!("`{}` is not one of {}", finding.severity, THREAT_SEVERITIES.join(", ")),
            });
        }
        if finding.finding_type.trim().is_empty() {
            return Err(StoreError::InvalidInput {
                what: "threat finding type".into(),
                detail: "the type is empty".into(),
            });
        }
        let occurrences = i64::try_from(finding.occurrences.max(1)).unwrap_or(i64::MAX);
        let sql = format!(
            "INSERT INTO threat_findings (finding_type, severity, title, description, principal, resource, \
             first_seen_at, last_seen_at, count, details, archived_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL) \
             ON CONFLICT (finding_type, principal, resource) DO UPDATE SET \
             severity = CASE WHEN {new_rank} > {old_rank} THEN excluded.severity ELSE threat_findings.severity END, \
             title = excluded.title, description = excluded.description, details = excluded.details, \
             first_seen_at = CASE WHEN excluded.first_seen_at < threat_findings.first_seen_at \
                 THEN excluded.first_seen_at ELSE threat_findings.first_seen_at END, \
             last_seen_at = CASE WHEN excluded.last_seen_at > threat_findings.last_seen_at \
                 THEN excluded.last_seen_at ELSE threat_findings.last_seen_at END, \
             count = threat_findings.count + excluded.count, \
             archived_at = NULL \
             RETURNING {THREAT_COLUMNS}",
            new_rank = rank_sql("excluded.severity"),
            old_rank = rank_sql("threat_findings.severity"),
        );
        let row: ThreatRow = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(&finding.finding_type)
                .bind(&finding.severity)
                .bind(&finding.title)
                .bind(&finding.description)
                .bind(&finding.principal)
                .bind(&finding.resource)
                .bind(fmt_ts(finding.first_seen))
                .bind(fmt_ts(finding.last_seen))
                .bind(occurrences)
                .bind(finding.details.to_string())
                .fetch_one(pool)
                .await
                .map_err(db("record a threat finding"))?
        });
        row.into_finding()
    }

    /// The findings matching `filter`, most recently seen first.
    pub async fn list_threat_findings(&self, filter: &ThreatFindingFilter) -> Result<Vec<ThreatFinding>> {
        let min_rank = match &filter.min_severity {
            None => 0,
            Some(s) => match THREAT_SEVERITIES.iter().position(|v| v == s) {
                Some(i) => i as i64 + 1,
                None => {
                    return Err(StoreError::InvalidInput {
                        what: "threat finding severity".into(),
                        detail: format!("`{s}` is not one of {}", THREAT_SEVERITIES.join(", ")),
                    });
                }
            },
        };
        let sql = format!(
            "SELECT {THREAT_COLUMNS} FROM threat_findings \
             WHERE ($1 IS NULL OR finding_type = $1) AND ($2 IS NULL OR principal = $2) \
             AND ($3 IS NULL OR resource = $3) AND ($4 IS NULL OR last_seen_at >= $4) \
             AND {rank} >= $5 AND ($6 OR archived_at IS NULL) \
             ORDER BY last_seen_at DESC, id DESC",
            rank = rank_sql("severity"),
        );
        let rows: Vec<ThreatRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(filter.finding_type.as_deref())
                .bind(filter.principal.as_deref())
                .bind(filter.resource.as_deref())
                .bind(filter.since.map(fmt_ts))
                .bind(min_rank)
                .bind(filter.include_archived)
                .fetch_all(pool)
                .await
                .map_err(db("list threat findings"))?
        });
        rows.into_iter().map(ThreatRow::into_finding).collect()
    }

    /// Archive a finding (looked at; hidden from default lists until it recurs). Returns
    /// whether it exists.
    pub async fn archive_threat_finding(&self, id: i64) -> Result<bool> {
        let done = with_pool!(self, pool => {
            sqlx::query("UPDATE threat_findings SET archived_at = $1 WHERE id = $2")
                .bind(fmt_ts(now()))
                .bind(id)
                .execute(pool)
                .await
                .map_err(db("archive a threat finding"))?
                .rows_affected()
        });
        Ok(done > 0)
    }
}
