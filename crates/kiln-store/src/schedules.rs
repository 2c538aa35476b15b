//! What the server's scheduler remembers per image pipeline: the schedule it last saw, since
//! when it applies, and the last slot it consumed. One row per pipeline, replaced as a whole.

use time::OffsetDateTime;

use crate::error::{Result, db};
use crate::{Store, fmt_ts, now, parse_opt_ts, parse_ts, with_pool};

/// A pipeline's scheduling state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineScheduleState {
    pub pipeline_arn: String,
    /// The schedule as the scheduler read it (opaque text: the server's canonical JSON of the
    /// pipeline's `schedule` and tags); a different one restarts `since`.
    pub schedule: String,
    /// Slots before this are not owed.
    pub since: OffsetDateTime,
    /// The last slot consumed (built or skipped).
    pub last_slot: Option<OffsetDateTime>,
}

impl Store {
    /// The scheduling state of `pipeline_arn`, if the scheduler saw it before.
    pub async fn pipeline_schedule_state(&self, pipeline_arn: &str) -> Result<Option<PipelineScheduleState>> {
        let row: Option<(String, String, Option<String>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT schedule, since, last_slot FROM pipeline_schedules WHERE pipeline_arn = $1")
                .bind(pipeline_arn)
                .fetch_optional(pool)
                .await
                .map_err(db("read a pipeline's schedule state"))?
        });
        let Some((schedule, since, last_slot)) = row else { return Ok(None) };
        let what = format!("schedule state of {pipeline_arn}");
        Ok(Some(PipelineScheduleState {
            pipeline_arn: pipeline_arn.to_owned(),
            schedule,
            since: parse_ts(&since, &what)?,
            last_slot: parse_opt_ts(last_slot, &what)?,
        }))
    }

    /// Record `state` (inserted or replaced).
    pub async fn set_pipeline_schedule_state(&self, state: &PipelineScheduleState) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO pipeline_schedules (pipeline_arn, schedule, since, last_slot, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pipeline_arn) DO UPDATE SET \
                 schedule = excluded.schedule, since = excluded.since, last_slot = excluded.last_slot, \
                 updated_at = excluded.updated_at",
            )
            .bind(&state.pipeline_arn)
            .bind(&state.schedule)
            .bind(fmt_ts(state.since))
            .bind(state.last_slot.map(fmt_ts))
            .bind(fmt_ts(now()))
            .execute(pool)
            .await
            .map_err(db("record a pipeline's schedule state"))?
        });
        Ok(())
    }

    /// Forget the scheduling state of a deleted pipeline.
    pub async fn delete_pipeline_schedule_state(&self, pipeline_arn: &str) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM pipeline_schedules WHERE pipeline_arn = $1")
                .bind(pipeline_arn)
                .execute(pool)
                .await
                .map_err(db("forget a pipeline's schedule state"))?
        });
        Ok(())
    }
}
