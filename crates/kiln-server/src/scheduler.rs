//! The scheduler of `kiln serve`: at start-up and every [`INTERVAL`], every ENABLED image
//! pipeline with a schedule or the `kiln:rebuildOnFixes` tag is evaluated with kiln-build's
//! pure [`decide`] (the dependency check on a blocking thread), the slot it consumes recorded
//! in the store, and a due pipeline started through the same code path as
//! `StartImagePipelineExecution`, with the decision's reason on the new image. A pipeline with
//! an execution in progress is not started again; its slot waits for the next pass. Each pass
//! also runs the lifecycle policies that have not run for `lifecycle_interval`
//! (`crate::run_due_lifecycle_policies`).

use std::sync::Arc;
use std::time::Duration;

use kiln_build::Kiln;
use kiln_build::dependencies::{DependencyError, DependencyOptions, PackageIndex};
use kiln_build::schedule::{Decision, PipelineSchedule, PipelineState, decide, rebuild_on_fixes};
use kiln_store::{ImageState, PipelineScheduleState, Tags};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::ops::{PIPELINE, canonical, start_pipeline_execution};
use crate::{Server, ServerError};

/// How often pipelines are evaluated.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// The scheduler's clock (injectable for tests).
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;
/// The package index the dependency check asks (apt in the sandbox; a fixture in tests).
pub type IndexFactory = Arc<dyn Fn(&Kiln) -> Box<dyn PackageIndex> + Send + Sync>;

/// How the scheduler runs.
#[derive(Clone)]
pub struct SchedulerOptions {
    pub interval: Duration,
    /// How often each lifecycle policy runs (from its `dateLastRun`).
    pub lifecycle_interval: Duration,
    pub clock: Clock,
    pub index: IndexFactory,
}

impl std::fmt::Debug for SchedulerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerOptions")
            .field("interval", &self.interval)
            .field("lifecycle_interval", &self.lifecycle_interval)
            .finish_non_exhaustive()
    }
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            interval: INTERVAL,
            lifecycle_interval: crate::LIFECYCLE_INTERVAL,
            clock: Arc::new(OffsetDateTime::now_utc),
            index: Arc::new(|kiln: &Kiln| Box::new(kiln.sandbox_index()) as Box<dyn PackageIndex>),
        }
    }
}

/// What one evaluation of one pipeline came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An execution was started.
    Started {
        image_arn: String,
        reason: String,
    },
    /// A slot came with no dependency update.
    Skipped {
        slot: OffsetDateTime,
    },
    NotDue {
        next: Option<OffsetDateTime>,
    },
    /// An execution is in progress; the pipeline is evaluated again next time.
    Running,
    /// The schedule cannot be read, or the execution could not start.
    Failed(String),
}

/// One pipeline's evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub pipeline_arn: String,
    pub outcome: Outcome,
}

/// Evaluates the pipelines, and runs the lifecycle policies that are due, every
/// `options.interval` until the server shuts down, while this server is the coordinator (see
/// [`crate::coordinator`]): of several servers on one state, one schedules.
pub async fn run(server: Server, options: SchedulerOptions) {
    let mut coordinating = false;
    while !server.is_shutting_down() {
        if !server.is_coordinator() {
            coordinating = false;
            tokio::time::sleep(options.interval).await;
            continue;
        }
        if !coordinating {
            // Runs are synchronous in the coordinator's scheduler: one still RUNNING now was
            // left by a coordinator that stopped.
            coordinating = true;
            let reason = "the server stopped during the run";
            match server.store().fail_running_lifecycle_executions(reason, (options.clock)()).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!("failed {n} lifecycle execution(s) interrupted by a stopped server"),
                Err(e) => tracing::warn!("scheduler: lifecycle executions: {e}"),
            }
        }
        let now = (options.clock)();
        if let Err(e) = tick(&server, now, &options.index).await {
            tracing::warn!("scheduler: {e}");
        }
        if let Err(e) = crate::run_due_lifecycle_policies(&server, now, options.lifecycle_interval).await {
            tracing::warn!("scheduler: lifecycle policies: {e}");
        }
        tokio::time::sleep(options.interval).await;
    }
}

/// One pass over every pipeline at `now`.
pub async fn tick(
    server: &Server,
    now: OffsetDateTime,
    index: &IndexFactory,
) -> Result<Vec<Evaluation>, ServerError> {
    let mut out = Vec::new();
    for pipeline in server.store().list_api_resources(PIPELINE, None).await? {
        if pipeline.body["status"].as_str() == Some("DISABLED") {
            continue;
        }
        let schedule = pipeline.body.get("schedule").filter(|v| !v.is_null());
        let expression = schedule.and_then(|s| s["scheduleExpression"].as_str());
        if expression.is_none() && !rebuild_on_fixes(&pipeline.tags) {
            continue;
        }
        let outcome = match evaluate(server, &pipeline, schedule, now, index).await {
            Ok(o) => o,
            Err(e) => Outcome::Failed(e),
        };
        match &outcome {
            Outcome::Started { image_arn, reason } => {
                tracing::info!(pipeline = %pipeline.arn, image = %image_arn, reason = %reason, "scheduled execution started");
            }
            Outcome::Skipped { slot } => {
                tracing::info!(pipeline = %pipeline.arn, slot = %slot, "slot skipped: no dependency updates");
            }
            Outcome::Failed(e) => tracing::warn!(pipeline = %pipeline.arn, "scheduler: {e}"),
            Outcome::NotDue { .. } | Outcome::Running => {}
        }
        out.push(Evaluation { pipeline_arn: pipeline.arn.clone(), outcome });
    }
    Ok(out)
}

fn text(v: Option<&Value>, name: &str) -> Option<String> {
    v.and_then(|s| s[name].as_str()).map(str::to_owned)
}

async fn evaluate(
    server: &Server,
    pipeline: &kiln_store::ApiResource,
    schedule: Option<&Value>,
    now: OffsetDateTime,
    index: &IndexFactory,
) -> Result<Outcome, String> {
    let store = server.store();
    let parsed = PipelineSchedule::parse(
        text(schedule, "scheduleExpression").as_deref(),
        text(schedule, "timezone").as_deref(),
        text(schedule, "pipelineExecutionStartCondition").as_deref(),
        &pipeline.tags,
    )
    .map_err(|e| e.to_string())?;
    // A changed schedule (or a pipeline deleted and made again) owes no slot from before.
    let key = canonical(&json!({
        "schedule": schedule,
        "rebuildOnFixes": parsed.rebuild_on_fixes,
        "created": pipeline.created_at.unix_timestamp(),
    }));
    let known = store.pipeline_schedule_state(&pipeline.arn).await.map_err(|e| e.to_string())?;
    let mut state = match known {
        Some(s) if s.schedule == key => s,
        Some(_) => PipelineScheduleState {
            pipeline_arn: pipeline.arn.clone(),
            schedule: key,
            since: now,
            last_slot: None,
        },
        None => PipelineScheduleState {
            pipeline_arn: pipeline.arn.clone(),
            schedule: key,
            since: pipeline.updated_at,
            last_slot: None,
        },
    };
    let mut latest_started = None;
    let mut latest_image: Option<kiln_store::Image> = None;
    for execution in store.pipeline_executions(&pipeline.arn).await.map_err(|e| e.to_string())? {
        let image = store.get_image_by_arn(&execution.image_arn).await.map_err(|e| e.to_string())?;
        if image.state.is_in_progress() {
            store.set_pipeline_schedule_state(&state).await.map_err(|e| e.to_string())?;
            return Ok(Outcome::Running);
        }
        latest_started = latest_started.max(Some(execution.created_at));
        if image.state == ImageState::Available
            && latest_image.as_ref().is_none_or(|l| (l.version, l.build) < (image.version, image.build))
        {
            latest_image = Some(image);
        }
    }
    let mark = match &latest_image {
        Some(i) => store.needs_rebuild(&i.arn).await.map_err(|e| e.to_string())?,
        None => None,
    };
    let home = server.home().to_path_buf();
    let index = Arc::clone(index);
    let since = state.since;
    let last_slot = state.last_slot;
    // `decide` calls the dependency check synchronously, and that blocks (catalogue, sandbox).
    let decision = tokio::task::spawn_blocking(move || {
        let state = PipelineState {
            created_at: since,
            last_slot,
            last_build_started: latest_started,
            has_image: latest_image.is_some(),
            rebuild_mark: mark.as_ref(),
        };
        decide(&parsed, &state, now, || {
            let Some(image) = &latest_image else { return Ok(Vec::new()) };
            let kiln = Kiln::open(&home).map_err(|e| DependencyError::Store(e.to_string()))?;
            let index = index(&kiln);
            kiln.dependency_changes(image, None, index.as_ref(), &DependencyOptions::default())
        })
    })
    .await
    .map_err(|e| format!("the scheduler's thread failed: {e}"))?;
    state.last_slot = decision.slot().or(state.last_slot);
    let outcome = match decision {
        Decision::Due { reason, .. } => {
            // The slot is consumed even when the start fails (a deleted recipe, say): retrying
            // every pass would only repeat the error.
            store.set_pipeline_schedule_state(&state).await.map_err(|e| e.to_string())?;
            let image_arn = start_pipeline_execution(server, pipeline, Tags::new(), &reason)
                .await
                .map_err(|e| format!("starting a scheduled execution ({reason}): {}", e.message()))?;
            return Ok(Outcome::Started { image_arn, reason });
        }
        Decision::SkippedNoUpdates { slot, .. } => Outcome::Skipped { slot },
        Decision::NotDue { next } => Outcome::NotDue { next },
    };
    store.set_pipeline_schedule_state(&state).await.map_err(|e| e.to_string())?;
    Ok(outcome)
}
