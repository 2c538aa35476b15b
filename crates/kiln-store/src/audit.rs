//! The audit log of `kiln serve`: one append-only record per API call (who, what, on which
//! resource, with which result, from where), and its query by user, operation, resource,
//! result and time, page by page. The server writes a record for every call it answers,
//! refusals included; the CLI's `kiln audit` and the threat detector read them back.

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, parse_ts, with_pool};

/// The `result` of a successful call.
pub const AUDIT_SUCCESS: &str = "Success";

/// Longest values kept per column: the record is written whatever the caller sent, so
/// oversized values are cut rather than refused (an audit write must not fail on input).
const MAX_TEXT: usize = 2048;
const MAX_USER_AGENT: usize = 512;

/// The longest page [`Store::list_audit`] returns.
pub const MAX_AUDIT_PAGE: u32 = 10_000;

/// One API call. There is deliberately no field for a secret key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When the call arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The `x-amzn-RequestId` the caller got.
    pub request_id: String,
    /// The caller's account (absent when the signature was not verified).
    pub account: Option<String>,
    /// The caller's principal ARN (absent when the signature was not verified).
    pub principal: Option<String>,
    /// The access key id the call was signed with (or claimed).
    pub access_key_id: Option<String>,
    /// The operation's name (`unknown` for paths that match none).
    pub operation: String,
    /// The resource ARN the call named (`*` when none).
    pub resource: Option<String>,
    /// [`AUDIT_SUCCESS`] or the error code answered.
    pub result: String,
    pub http_status: u16,
    /// The client's address.
    pub source_address: Option<String>,
    pub user_agent: Option<String>,
    /// How long the server took, in milliseconds.
    pub duration_ms: u64,
}

/// A stored record with its id (ids grow: the order calls were recorded in).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Which results to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditResult {
    /// Calls that succeeded.
    Success,
    /// Calls that failed, whatever the error.
    Failure,
    /// Calls answered with this error code (or `Success`).
    Code(String),
}

/// What [`Store::list_audit`] lists. Every field set narrows the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Calls of this user: an access key id or a principal ARN.
    pub user: Option<String>,
    pub account: Option<String>,
    pub operation: Option<String>,
    pub resource: Option<String>,
    pub result: Option<AuditResult>,
    pub source_address: Option<String>,
    /// Calls at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Calls before this time.
    pub until: Option<OffsetDateTime>,
    /// Newest first (page with `before`), instead of oldest first (page with `after`).
    pub newest_first: bool,
    /// Only ids above this (oldest first: the last id of the previous page).
    pub after: Option<i64>,
    /// Only ids below this (newest first: the last id of the previous page).
    pub before: Option<i64>,
    /// At most this many (capped at [`MAX_AUDIT_PAGE`]).
    pub limit: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: String,
    request_id: String,
    account: Option<String>,
    principal: Option<String>,
    access_key_id: Option<String>,
    operation: String,
    resource: Option<String>,
    result: String,
    http_status: i64,
    source_address: Option<String>,
    user_agent: Option<String>,
    duration_ms: i64,
}

const AUDIT_COLUMNS: &str = "id, at, request_id, account, principal, access_key_id, operation, resource, \
                             result, http_status, source_address, user_agent, duration_ms";

impl AuditRow {
    fn into_entry(self) -> Result<AuditEntry> {
        let what = format!("audit record {}", self.id);
        Ok(AuditEntry {
            id: self.id,
            record: AuditRecord {
                at: parse_ts(&self.at, &what)?,
                http_status: u16::try_from(self.http_status).map_err(|_| StoreError::Corrupt {
                    what: what.clone(),
                    detail: format!("HTTP status {}", self.http_status),
                })?,
                duration_ms: u64::try_from(self.duration_ms).unwrap_or(0),
                request_id: self.request_id,
                account: self.account,
                principal: self.principal,
                access_key_id: self.access_key_id,
                operation: self.operation,
                resource: self.resource,
                result: self.result,
                source_address: self.source_address,
                user_agent: self.user_agent,
            },
        })
    }
}

/// `text` cut to `max` characters.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

fn cut_opt(text: &Option<String>, max: usize) -> Option<String> {
    text.as_deref().map(|t| cut(t, max))
}

enum Bind {
    Text(String),
    Int(i64),
}

impl Store {
    /// Append one call to the audit log; returns its id. Oversized values are cut, never
    /// refused.
    pub async fn record_audit(&self, record: &AuditRecord) -> Result<i64> {
        let ids = self.record_audits(std::slice::from_ref(record)).await?;
        ids.first().copied().ok_or_else(|| StoreError::Corrupt {
            what: "audit log".into(),
            detail: "the insert returned no id".into(),
        })
    }

    /// Append several calls in one transaction (a server writing its log in batches pays one
    /// commit per batch); returns their ids in order.
    pub async fn record_audits(&self, records: &[AuditRecord]) -> Result<Vec<i64>> {
        let op = "record API calls in the audit log";
        let mut ids = Vec::with_capacity(records.len());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(db(op))?;
            for record in records {
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO audit_log (at, request_id, account, principal, access_key_id, operation, \
                     resource, result, http_status, source_address, user_agent, duration_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                )
                .bind(fmt_ts(record.at))
                .bind(cut(&record.request_id, MAX_TEXT))
                .bind(cut_opt(&record.account, MAX_TEXT))
                .bind(cut_opt(&record.principal, MAX_TEXT))
                .bind(cut_opt(&record.access_key_id, MAX_TEXT))
                .bind(cut(&record.operation, MAX_TEXT))
                .bind(cut_opt(&record.resource, MAX_TEXT))
                .bind(cut(&record.result, MAX_TEXT))
                .bind(i64::from(record.http_status))
                .bind(cut_opt(&record.source_address, MAX_TEXT))
                .bind(cut_opt(&record.user_agent, MAX_USER_AGENT))
                .bind(i64::try_from(record.duration_ms).unwrap_or(i64::MAX))
                .fetch_one(&mut *tx)
                .await
                .map_err(db(op))?;
                ids.push(id);
            }
            tx.commit().await.map_err(db(op))?;
        });
        Ok(ids)
    }

    /// The audit records matching `filter`, oldest first (or newest first), one page.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
        let mut binds: Vec<Bind> = Vec::new();
        let mut push = |sql: &mut String, condition: &str, values: Vec<Bind>| {
            let mut condition = condition.to_owned();
            for value in values {
                binds.push(value);
                condition = condition.replacen('?', &format!("${}", binds.len()), 1);
            }
            sql.push_str(" AND ");
            sql.push_str(&condition);
        };
        if let Some(user) = &filter.user {
            push(
                &mut sql,
                "(access_key_id = ? OR principal = ?)",
                vec![Bind::Text(user.clone()), Bind::Text(user.clone())],
            );
        }
        for (column, value) in [
            ("account", &filter.account),
            ("operation", &filter.operation),
            ("resource", &filter.resource),
            ("source_address", &filter.source_address),
        ] {
            if let Some(v) = value {
                push(&mut sql, &format!("{column} = ?"), vec![Bind::Text(v.clone())]);
            }
        }
        match &filter.result {
            None => {}
            Some(AuditResult::Success) => {
                push(&mut sql, "result = ?", vec![Bind::Text(AUDIT_SUCCESS.into())])
            }
            Some(AuditResult::Failure) => {
                push(&mut sql, "result <> ?", vec![Bind::Text(AUDIT_SUCCESS.into())])
            }
            Some(AuditResult::Code(code)) => push(&mut sql, "result = ?", vec![Bind::Text(code.clone())]),
        }
        // Timestamps are fixed-width UTC text, so text order is time order.
        if let Some(since) = filter.since {
            push(&mut sql, "at >= ?", vec![Bind::Text(fmt_ts(since))]);
        }
        if let Some(until) = filter.until {
            push(&mut sql, "at < ?", vec![Bind::Text(fmt_ts(until))]);
        }
        if let Some(after) = filter.after {
            push(&mut sql, "id > ?", vec![Bind::Int(after)]);
        }
        if let Some(before) = filter.before {
            push(&mut sql, "id < ?", vec![Bind::Int(before)]);
        }
        sql.push_str(if filter.newest_first { " ORDER BY id DESC" } else { " ORDER BY id" });
        let limit = filter.limit.unwrap_or(MAX_AUDIT_PAGE).min(MAX_AUDIT_PAGE);
        sql.push_str(&format!(" LIMIT {limit}"));
        let rows: Vec<AuditRow> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            for b in &binds {
                q = match b {
                    Bind::Text(s) => q.bind(s.as_str()),
                    Bind::Int(n) => q.bind(*n),
                };
            }
            q.fetch_all(pool).await.map_err(db("list the audit log"))?
        });
        rows.into_iter().map(AuditRow::into_entry).collect()
    }

    /// Every (access key id, source address) pair of authenticated calls, to seed the threat
    /// detector's known addresses at start.
    pub async fn audit_sources(&self) -> Result<Vec<(String, String)>> {
        with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT DISTINCT access_key_id, source_address FROM audit_log \
                 WHERE principal IS NOT NULL AND access_key_id IS NOT NULL AND source_address IS NOT NULL \
                 ORDER BY access_key_id, source_address",
            )
            .fetch_all(pool)
            .await
            .map_err(db("read the addresses of the audit log"))
        })
    }

    /// Delete the records older than `before` (retention); returns how many.
    pub async fn prune_audit(&self, before: OffsetDateTime) -> Result<u64> {
        let done = with_pool!(self, pool => {
            sqlx::query("DELETE FROM audit_log WHERE at < $1")
                .bind(fmt_ts(before))
                .execute(pool)
                .await
                .map_err(db("prune the audit log"))?
                .rows_affected()
        });
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_on_character_boundaries() {
        assert_eq!(cut("héllo", 2), "hé");
        assert_eq!(cut("hé", 5), "hé");
        assert_eq!(cut("", 0), "");
        assert_eq!(cut_opt(&Some("ééé".into()), 1), Some("é".into()));
    }
}
