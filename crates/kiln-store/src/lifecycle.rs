//! Runs of lifecycle policies (`kiln serve`): one row per run with its state and the images it
//! acted on. What a policy says and what an action did are the server's business; the
//! resources are kept as opaque JSON.

use std::fmt;

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, json_from_text, parse_opt_ts, parse_ts, with_pool};

/// Where a lifecycle execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleExecutionState {
    Running,
    Success,
    Failed,
}

impl LifecycleExecutionState {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleExecutionState::Running => "RUNNING",
            LifecycleExecutionState::Success => "SUCCESS",
            LifecycleExecutionState::Failed => "FAILED",
        }
    }

    fn parse(s: &str, what: &str) -> Result<LifecycleExecutionState> {
        match s {
            "RUNNING" => Ok(LifecycleExecutionState::Running),
            "SUCCESS" => Ok(LifecycleExecutionState::Success),
            "FAILED" => Ok(LifecycleExecutionState::Failed),
            other => {
                Err(StoreError::Corrupt { what: what.to_owned(), detail: format!("unknown state {other:?}") })
            }
        }
    }
}

impl fmt::Display for LifecycleExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of a lifecycle policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleExecution {
    /// `lce-` and a UUID-shaped hex string.
    pub id: String,
    pub policy_arn: String,
    /// The policy's account: only it sees the execution.
    pub account: String,
    pub state: LifecycleExecutionState,
    /// Why it failed.
    pub reason: Option<String>,
    pub started_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
    /// The images acted on (a JSON array, opaque here).
    pub resources: serde_json::Value,
}

type Row = (String, String, String, String, Option<String>, String, Option<String>, String);

const COLUMNS: &str = "id, policy_arn, account, state, reason, started_at, ended_at, resources";

fn from_row(
    (id, policy_arn, account, state, reason, started_at, ended_at, resources): Row,
) -> Result<LifecycleExecution> {
    let what = format!("lifecycle execution {id}");
    Ok(LifecycleExecution {
        state: LifecycleExecutionState::parse(&state, &what)?,
        started_at: parse_ts(&started_at, &what)?,
        ended_at: parse_opt_ts(ended_at, &what)?,
        resources: json_from_text(&resources, &what, "resources")?,
        id,
        policy_arn,
        account,
        reason,
    })
}

impl Store {
    /// Record a lifecycle execution that starts now (RUNNING, no resources yet).
    pub async fn start_lifecycle_execution(
        &self,
        id: &str,
        policy_arn: &str,
        account: &str,
        started_at: OffsetDateTime,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO lifecycle_executions (id, policy_arn, account, state, reason, started_at, ended_at, resources) \
                 VALUES ($1, $2, $3, $4, NULL, $5, NULL, '[]')",
            )
            .bind(id)
            .bind(policy_arn)
            .bind(account)
            .bind(LifecycleExecutionState::Running.as_str())
            .bind(fmt_ts(started_at))
            .execute(pool)
            .await
            .map_err(db("record a lifecycle execution"))?
        });
        Ok(())
    }

    /// Record how a RUNNING execution ended. Returns whether it was RUNNING (an execution ends
    /// once).
    pub async fn finish_lifecycle_execution(
        &self,
        id: &str,
        state: LifecycleExecutionState,
        reason: Option<&str>,
        resources: &serde_json::Value,
        ended_at: OffsetDateTime,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE lifecycle_executions SET state = $1, reason = $2, resources = $3, ended_at = $4 \
                 WHERE id = $5 AND state = $6",
            )
            .bind(state.as_str())
            .bind(reason)
            .bind(resources.to_string())
            .bind(fmt_ts(ended_at))
            .bind(id)
            .bind(LifecycleExecutionState::Running.as_str())
            .execute(pool)
            .await
            .map_err(db("finish a lifecycle execution"))?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Fails every RUNNING execution with `reason` (the server that ran them stopped: runs are
    /// synchronous in one server's scheduler, so at its start none can still be running).
    /// Returns how many there were.
    pub async fn fail_running_lifecycle_executions(&self, reason: &str, at: OffsetDateTime) -> Result<u64> {
        let n = with_pool!(self, pool => {
            sqlx::query("UPDATE lifecycle_executions SET state = $1, reason = $2, ended_at = $3 WHERE state = $4")
                .bind(LifecycleExecutionState::Failed.as_str())
                .bind(reason)
                .bind(fmt_ts(at))
                .bind(LifecycleExecutionState::Running.as_str())
                .execute(pool)
                .await
                .map_err(db("fail interrupted lifecycle executions"))?
                .rows_affected()
        });
        Ok(n)
    }

    /// The lifecycle execution `id`, if there is one.
    pub async fn lifecycle_execution(&self, id: &str) -> Result<Option<LifecycleExecution>> {
        let sql = format!("SELECT {COLUMNS} FROM lifecycle_executions WHERE id = $1");
        let row: Option<Row> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await.map_err(db("read a lifecycle execution"))?
        });
        row.map(from_row).transpose()
    }

    /// The executions of a policy, newest first.
    pub async fn lifecycle_executions(&self, policy_arn: &str) -> Result<Vec<LifecycleExecution>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM lifecycle_executions WHERE policy_arn = $1 ORDER BY started_at DESC, id DESC"
        );
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(policy_arn).fetch_all(pool).await.map_err(db("list lifecycle executions"))?
        });
        rows.into_iter().map(from_row).collect()
    }

    /// Forget a policy's executions (the policy is deleted; a new one of the same name must
    /// not inherit them). Returns how many there were.
    pub async fn delete_lifecycle_executions(&self, policy_arn: &str) -> Result<u64> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM lifecycle_executions WHERE policy_arn = $1")
                .bind(policy_arn)
                .execute(pool)
                .await
                .map_err(db("delete lifecycle executions"))?
                .rows_affected()
        });
        Ok(n)
    }
}
