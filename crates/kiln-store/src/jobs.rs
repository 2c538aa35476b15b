//! The job queue: jobs are claimed from the database with a lease, so any number of
//! `kiln worker` processes sharing the database can take work without a coordinator.
//! A worker keeps its lease alive with [`Store::heartbeat`]; a job whose lease expired
//! (its worker died) is claimed again, until it has been attempted `max_attempts` times.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{Dialect, Store, fmt_ts, json_from_text, now, parse_opt_ts, parse_ts, with_pool};

/// How many times a job is attempted (claimed) before an expired lease fails it.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    /// SUCCEEDED, FAILED or CANCELLED: nothing will happen to the job any more.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// What the job does, for the worker to dispatch on (such as `"pipeline-execution"`).
    pub kind: String,
    /// The job's input; the store does not look inside.
    pub payload: serde_json::Value,
    /// Claims allowed before an expired lease fails the job (at least 1).
    pub max_attempts: u32,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    /// How many times the job has been claimed.
    pub attempts: u32,
    pub max_attempts: u32,
    /// The worker holding (or that last held) the job.
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<OffsetDateTime>,
    /// Set when [`Store::cancel_job`] was asked to cancel the job while it was running.
    pub cancel_requested: bool,
    /// Why the job failed.
    pub error: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    kind: String,
    payload: String,
    state: String,
    attempts: i64,
    max_attempts: i64,
    worker_id: Option<String>,
    lease_expires_at: Option<String>,
    cancel_requested_at: Option<String>,
    error: Option<String>,
    created_at: String,
    updated_at: String,
}

const JOB_COLUMNS: &str = "id, kind, payload, state, attempts, max_attempts, worker_id, \
                           lease_expires_at, cancel_requested_at, error, created_at, updated_at";

impl JobRow {
    fn into_job(self) -> Result<Job> {
        let what = format!("job {}", self.id);
        let count = |n: i64, field: &str| {
            u32::try_from(n)
                .map_err(|_| StoreError::Corrupt { what: what.clone(), detail: format!("{field} {n}") })
        };
        Ok(Job {
            payload: json_from_text(&self.payload, &what, "payload")?,
            state: self.state.parse().map_err(|detail| StoreError::Corrupt { what: what.clone(), detail })?,
            attempts: count(self.attempts, "attempts")?,
            max_attempts: count(self.max_attempts, "max_attempts")?,
            lease_expires_at: parse_opt_ts(self.lease_expires_at, &what)?,
            cancel_requested: self.cancel_requested_at.is_some(),
            created_at: parse_ts(&self.created_at, &what)?,
            updated_at: parse_ts(&self.updated_at, &what)?,
            id: self.id,
            kind: self.kind,
            worker_id: self.worker_id,
            error: self.error,
        })
    }
}

/// A job another worker may take: queued, or running under an expired lease with
/// attempts left and no cancel request. `$3` is the current time.
const CLAIMABLE: &str = "(state = 'QUEUED' OR (state = 'RUNNING' AND lease_expires_at < $3 \
                         AND attempts < max_attempts AND cancel_requested_at IS NULL))";

/// The claim statement: one UPDATE of the oldest claimable job. The condition is repeated
/// outside the subquery so that on PostgreSQL a concurrent claimer that lost the row
/// re-checks it and updates nothing; there the subquery also takes
/// `FOR UPDATE SKIP LOCKED` so that claimers pass each other instead of queueing. On SQLite
/// the statement holds the database's write lock, so it is atomic as it stands.
fn claim_sql(dialect: Dialect) -> String {
    let lock = match dialect {
        Dialect::Sqlite => "",
    };
    format!(
        "UPDATE jobs SET state = 'RUNNING', worker_id = $1, lease_expires_at = $2, \
         attempts = attempts + 1, updated_at = $3 \
         WHERE id = (SELECT id FROM jobs WHERE {CLAIMABLE} ORDER BY id LIMIT 1{lock}) \
         AND {CLAIMABLE} \
         RETURNING {JOB_COLUMNS}"
    )
}

fn lease_end(at: OffsetDateTime, lease: Duration) -> Result<OffsetDateTime> {
    time::Duration::try_from(lease)
        .ok()
        .and_then(|d| at.checked_add(d))
        .ok_or_else(|| StoreError::InvalidJob { reason: format!("a lease of {lease:?} is too long") })
}

impl Store {
    /// Queue a job of `kind` with `payload`, attempted at most [`DEFAULT_MAX_ATTEMPTS`]
    /// times. Returns its id.
    pub async fn enqueue(&self, kind: &str, payload: &serde_json::Value) -> Result<i64> {
        self.enqueue_job(&NewJob {
            kind: kind.to_owned(),
            payload: payload.clone(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        })
        .await
    }

    /// Queue a job. Returns its id; ids grow, and jobs are claimed oldest first.
    pub async fn enqueue_job(&self, job: &NewJob) -> Result<i64> {
        if job.kind.trim().is_empty() {
            return Err(StoreError::InvalidJob { reason: "the job kind is empty".into() });
        }
        if job.max_attempts == 0 {
            return Err(StoreError::InvalidJob {
                reason: "max_attempts is 0; a job needs at least one attempt".into(),
            });
        }
        let ts = fmt_ts(now());
        let rows: Vec<(i64,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO jobs (kind, payload, state, attempts, max_attempts, created_at, updated_at) \
                 VALUES ($1, $2, 'QUEUED', 0, $3, $4, $4) RETURNING id",
            )
            .bind(&job.kind)
            .bind(job.payload.to_string())
            .bind(i64::from(job.max_attempts))
            .bind(&ts)
            .fetch_all(pool)
            .await
            .map_err(db("queue a job"))?
        });
        rows.first().map(|r| r.0).ok_or_else(|| StoreError::Corrupt {
            what: "job queue".into(),
            detail: "insert returned no id".into(),
        })
    }

    /// Take the oldest job that is queued, or whose lease expired, for `worker_id`, holding
    /// it for `lease`. `None` when there is nothing to do. Two claimers never get the same
    /// job while its lease runs. Expired jobs that have no attempts left are failed here,
    /// and expired jobs whose cancellation was requested are cancelled.
    pub async fn claim(&self, worker_id: &str, lease: Duration) -> Result<Option<Job>> {
        let at = now();
        let ts = fmt_ts(at);
        let until = fmt_ts(lease_end(at, lease)?);
        let sql = claim_sql(self.dialect());
        let rows: Vec<JobRow> = with_pool!(self, pool => {
            let op = "claim a job";
            sqlx::query(
                "UPDATE jobs SET state = 'CANCELLED', updated_at = $1 \
                 WHERE state = 'RUNNING' AND lease_expires_at < $1 AND cancel_requested_at IS NOT NULL",
            )
            .bind(&ts)
            .execute(pool)
            .await
            .map_err(db(op))?;
            sqlx::query(
                "UPDATE jobs SET state = 'FAILED', updated_at = $1, \
                 error = 'the worker stopped renewing its lease on the last allowed attempt' \
                 WHERE state = 'RUNNING' AND lease_expires_at < $1 AND attempts >= max_attempts",
            )
            .bind(&ts)
            .execute(pool)
            .await
            .map_err(db(op))?;
            sqlx::query_as(&sql)
                .bind(worker_id)
                .bind(&until)
                .bind(&ts)
                .fetch_all(pool)
                .await
                .map_err(db(op))?
        });
        rows.into_iter().next().map(JobRow::into_job).transpose()
    }

    /// Renew `worker_id`'s lease on job `id` for `lease` from now. Returns whether the
    /// job's cancellation has been requested (the worker should stop, clean up and call
    /// [`Store::mark_cancelled`]). [`StoreError::LeaseLost`] when the worker no longer
    /// holds the job.
    pub async fn heartbeat(&self, id: i64, worker_id: &str, lease: Duration) -> Result<bool> {
        let at = now();
        let until = fmt_ts(lease_end(at, lease)?);
        let rows: Vec<(Option<String>,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "UPDATE jobs SET lease_expires_at = $1, updated_at = $2 \
                 WHERE id = $3 AND worker_id = $4 AND state = 'RUNNING' RETURNING cancel_requested_at",
            )
            .bind(&until)
            .bind(fmt_ts(at))
            .bind(id)
            .bind(worker_id)
            .fetch_all(pool)
            .await
            .map_err(db("renew a job lease"))?
        });
        match rows.first() {
            Some((cancel,)) => Ok(cancel.is_some()),
            None => Err(self.not_held(id, worker_id).await),
        }
    }

    /// The job is done.
    pub async fn complete(&self, id: i64, worker_id: &str) -> Result<()> {
        self.finish(id, worker_id, JobState::Succeeded, None).await
    }

    /// The job failed for good, because of `error`.
    pub async fn fail(&self, id: i64, worker_id: &str, error: &str) -> Result<()> {
        self.finish(id, worker_id, JobState::Failed, Some(error)).await
    }

    /// The worker stopped the job after a cancellation request.
    pub async fn mark_cancelled(&self, id: i64, worker_id: &str) -> Result<()> {
        self.finish(id, worker_id, JobState::Cancelled, None).await
    }

    async fn finish(&self, id: i64, worker_id: &str, to: JobState, error: Option<&str>) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET state = $1, error = $2, lease_expires_at = NULL, updated_at = $3 \
                 WHERE id = $4 AND worker_id = $5 AND state = 'RUNNING'",
            )
            .bind(to.as_str())
            .bind(error)
            .bind(fmt_ts(now()))
            .bind(id)
            .bind(worker_id)
            .execute(pool)
            .await
            .map_err(db("finish a job"))?
            .rows_affected()
        });
        if done == 0 {
            return Err(self.not_held(id, worker_id).await);
        }
        Ok(())
    }

    async fn not_held(&self, id: i64, worker_id: &str) -> StoreError {
        match self.get_job(id).await {
            Ok(_) => StoreError::LeaseLost { id, worker_id: worker_id.to_owned() },
            Err(e) => e,
        }
    }

    /// Cancel a job: a queued job becomes CANCELLED at once; for a running job the request
    /// is recorded and its worker learns it at its next [`Store::heartbeat`]. Returns the
    /// job's state afterwards (a finished job is left as it is).
    pub async fn cancel_job(&self, id: i64) -> Result<JobState> {
        let ts = fmt_ts(now());
        let (queued, running) = with_pool!(self, pool => {
            let op = "cancel a job";
            let queued = sqlx::query(
                "UPDATE jobs SET state = 'CANCELLED', updated_at = $1 WHERE id = $2 AND state = 'QUEUED'",
            )
            .bind(&ts)
            .bind(id)
            .execute(pool)
            .await
            .map_err(db(op))?
            .rows_affected();
            let running = if queued == 0 {
                sqlx::query(
                    "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, $1), \
                     updated_at = $1 WHERE id = $2 AND state = 'RUNNING'",
                )
                .bind(&ts)
                .bind(id)
                .execute(pool)
                .await
                .map_err(db(op))?
                .rows_affected()
            } else {
                0
            };
            (queued, running)
        });
        if queued > 0 {
            Ok(JobState::Cancelled)
        } else if running > 0 {
            Ok(JobState::Running)
        } else {
            Ok(self.get_job(id).await?.state)
        }
    }

    /// Fail every RUNNING job of `kind` whose lease has expired (its worker died or its
    /// server stopped), with `error`, whatever attempts it has left: for jobs that must not be
    /// run twice. Returns the jobs failed.
    pub async fn fail_expired_jobs(&self, kind: &str, error: &str) -> Result<Vec<Job>> {
        let ts = fmt_ts(now());
        let sql = format!(
            "UPDATE jobs SET state = 'FAILED', error = $1, lease_expires_at = NULL, updated_at = $2 \
             WHERE kind = $3 AND state = 'RUNNING' AND lease_expires_at < $2 RETURNING {JOB_COLUMNS}"
        );
        let rows: Vec<JobRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(error)
                .bind(&ts)
                .bind(kind)
                .fetch_all(pool)
                .await
                .map_err(db("fail expired jobs"))?
        });
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// One job.
    pub async fn get_job(&self, id: i64) -> Result<Job> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row: Option<JobRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(db("read a job"))?
        });
        row.ok_or(StoreError::JobNotFound { id })?.into_job()
    }

    /// Jobs oldest first, only those in `state` when given.
    pub async fn list_jobs(&self, state: Option<JobState>) -> Result<Vec<Job>> {
        let filter = if state.is_some() { "WHERE state = $1 " } else { "" };
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs {filter}ORDER BY id");
        let rows: Vec<JobRow> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            if let Some(state) = state {
                q = q.bind(state.as_str());
            }
            q.fetch_all(pool).await.map_err(db("list jobs"))?
        });
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// How many jobs wait for a worker (QUEUED), for metrics.
    pub async fn queue_depth(&self) -> Result<u64> {
        let (n,): (i64,) = with_pool!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE state = 'QUEUED'")
                .fetch_one(pool)
                .await
                .map_err(db("count queued jobs"))?
        });
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
