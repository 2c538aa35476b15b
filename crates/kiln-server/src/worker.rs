//! The worker pool: pipeline executions claimed from kiln-store's job queue with a lease kept
//! alive by heartbeats, each built by kiln-build on a blocking thread from the resource file
//! the execution was started with; and the reaper that fails executions whose server stopped
//! (their lease expired), so that no image stays BUILDING forever.

use std::time::Duration;

use kiln_host::Cancel;

use kiln_build::{BuildEvent, BuildProgress, BuildRequest, Kiln, OnError};
use kiln_component::engine::{Event, Observer};
use kiln_store::{ImageState, Job, JobState, StoreError};
use serde_json::{Value, json};

use crate::Server;

/// The job kind of a pipeline execution.
pub const EXECUTION_JOB: &str = "pipeline-execution";
/// Why an execution interrupted by a stopped server or worker failed.
pub const INTERRUPTED_REASON: &str = "the kiln worker running the build stopped";

/// How long a claimed execution is held without a heartbeat, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// How often an idle worker looks for work when no in-process wake-up comes (the only way a
/// worker in another process, `kiln worker`, learns of a new execution).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// What a queued execution carries: the image record made at start and the resource file
/// materialised then (later changes to the recipe or configurations do not affect it).
#[derive(Debug, Clone)]
pub(crate) struct ExecutionPayload {
    pub image_arn: String,
    pub resource_file: Value,
    pub no_test: bool,
}

impl ExecutionPayload {
    pub fn to_json(&self) -> Value {
        json!({ "imageArn": self.image_arn, "resourceFile": self.resource_file, "noTest": self.no_test })
    }

    fn from_json(v: &Value) -> Option<ExecutionPayload> {
        Some(ExecutionPayload {
            image_arn: v["imageArn"].as_str()?.to_owned(),
            resource_file: v.get("resourceFile")?.clone(),
            no_test: v["noTest"].as_bool().unwrap_or(false),
        })
    }
}

/// One worker: claims executions, held for `lease` between heartbeats, until the server
/// shuts down.
pub(crate) async fn run(server: Server, worker_id: String, lease: Duration) {
    while !server.is_shutting_down() {
        match server.store().claim(&worker_id, lease).await {
            Ok(Some(job)) if job.kind == EXECUTION_JOB => execute(&server, &worker_id, job, lease).await,
            Ok(Some(job)) => {
                let error = format!("kiln serve has no handler for jobs of kind {}", job.kind);
                let _ = server.store().fail(job.id, &worker_id, &error).await;
            }
            Ok(None) => {
                let _ = tokio::time::timeout(IDLE_POLL, server.inner.queued.notified()).await;
            }
            Err(e) => {
                tracing::warn!("worker {worker_id}: claiming a job: {e}");
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }
}

async fn execute(server: &Server, worker_id: &str, job: Job, lease: Duration) {
    let store = server.store();
    let Some(payload) = ExecutionPayload::from_json(&job.payload) else {
        let _ = store.fail(job.id, worker_id, "the job's payload is not an execution").await;
        return;
    };
    let arn = payload.image_arn.clone();
    match store.get_image_by_arn(&arn).await {
        Ok(image) if image.state == ImageState::Pending => {}
        Ok(image) => {
            // Cancelled (or failed by the reaper) between the queue and the claim.
            tracing::info!("execution of {arn} not started: the image is {}", image.state);
            let _ = store.mark_cancelled(job.id, worker_id).await;
            return;
        }
        Err(e) => {
            let _ = store.fail(job.id, worker_id, &e.to_string()).await;
            return;
        }
    }
    let work = server.home().join("api").join("executions").join(job.id.to_string());
    let file = work.join("resource.json");
    let written = std::fs::create_dir_all(&work).and_then(|()| {
        std::fs::write(&file, serde_json::to_vec_pretty(&payload.resource_file).unwrap_or_default())
    });
    if let Err(e) = written {
        let reason = format!("cannot write the resource file {}: {e}", file.display());
        finish_failed(server, worker_id, job.id, &arn, &reason).await;
        return;
    }
    let cancel = Cancel::new();
    server.running().insert(arn.clone(), cancel.clone());
    let heartbeat =
        tokio::spawn(heartbeat(server.clone(), worker_id.to_owned(), job.id, lease, cancel.clone()));
    let request = BuildRequest {
        resource_file: file,
        out_dir: None,
        no_cache: false,
        no_test: payload.no_test,
        on_error: OnError::Abort,
        source_date_epoch: None,
        image_arn: Some(arn.clone()),
        cancel: Some(cancel.clone()),
    };
    let home = server.home().to_path_buf();
    let log_arn = arn.clone();
    tracing::info!("worker {worker_id}: building {arn} (job {})", job.id);
    let result = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let kiln = Kiln::open(&home).map_err(|e| e.to_string())?;
        kiln.build(&request, &Logged { arn: log_arn }).map(|o| o.arn).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("the build thread failed: {e}")));
    heartbeat.abort();
    server.running().remove(&arn);
    // Whatever the outcome: the resource file is also in the image's record and manifest.
    if let Err(e) = std::fs::remove_dir_all(&work) {
        tracing::warn!("removing the execution folder {}: {e}", work.display());
    }
    match result {
        Ok(_) => {
            tracing::info!("worker {worker_id}: {arn} is AVAILABLE");
            let _ = store.complete(job.id, worker_id).await;
        }
        Err(reason) => {
            let state = store.get_image_by_arn(&arn).await.map(|i| i.state).ok();
            if state == Some(ImageState::Cancelled) {
                let _ = store.mark_cancelled(job.id, worker_id).await;
            } else if server.is_shutting_down() && cancel.is_cancelled() {
                finish_failed(server, worker_id, job.id, &arn, INTERRUPTED_REASON).await;
            } else {
                tracing::warn!("worker {worker_id}: {arn} failed: {reason}");
                finish_failed(server, worker_id, job.id, &arn, &reason).await;
            }
        }
    }
}

/// The image FAILED with `reason` (unless already final) and the job failed.
async fn finish_failed(server: &Server, worker_id: &str, job: i64, arn: &str, reason: &str) {
    fail_image(server, arn, reason).await;
    let _ = server.store().fail(job, worker_id, reason).await;
}

pub(crate) async fn fail_image(server: &Server, arn: &str, reason: &str) {
    let store = server.store();
    if let Ok(image) = store.get_image_by_arn(arn).await {
        if image.state.is_in_progress() {
            let _ = store.transition(arn, ImageState::Failed, Some(reason)).await;
        }
    }
}

/// Renews the lease (three times per lease, so one slow write does not lose it) until
/// aborted; a cancellation request or a lost lease stops the build.
async fn heartbeat(server: Server, worker_id: String, job: i64, lease: Duration, cancel: Cancel) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match server.store().heartbeat(job, &worker_id, lease).await {
            Ok(false) => {}
            // `cancel` kills what the build is running (a step, a test instance) at once.
            Ok(true) => cancel.cancel(),
            Err(StoreError::LeaseLost { .. }) => {
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!("heartbeat of job {job}: {e}"),
        }
    }
}

/// Fails executions whose worker is gone: RUNNING jobs whose lease expired, and images still
/// in progress whose job is finished (failed by a claim after its lease expired, say).
/// Returns the images failed.
pub(crate) async fn reap(server: &Server) -> Result<Vec<String>, StoreError> {
    let store = server.store();
    store.fail_expired_jobs(EXECUTION_JOB, INTERRUPTED_REASON).await?;
    let mut failed = Vec::new();
    for state in ImageState::IN_PROGRESS {
        let filter = kiln_store::ImageFilter { state: Some(state), ..Default::default() };
        for image in store.list_images(&filter).await? {
            let Some(execution) = store.execution_of(&image.arn).await? else { continue };
            if server.running().contains_key(&image.arn) {
                continue;
            }
            let job = store.get_job(execution.job_id).await?;
            let gone = match job.state {
                JobState::Queued => false,
                JobState::Running => {
                    job.lease_expires_at.is_some_and(|t| t < time::OffsetDateTime::now_utc())
                }
                JobState::Succeeded | JobState::Failed | JobState::Cancelled => true,
            };
            if gone {
                fail_image(server, &image.arn, INTERRUPTED_REASON).await;
                failed.push(image.arn);
            }
        }
    }
    Ok(failed)
}

/// Build progress goes to the server's log, one event per line with the image's ARN (one JSON
/// object per line with `--log-format json`).
struct Logged {
    arn: String,
}

impl Observer for Logged {
    fn event(&self, event: &Event<'_>) {
        if let Event::StepFinished { document, step, status, .. } = event {
            tracing::info!(image = %self.arn, component = %document, step = %step, status = status.as_str(), "step finished");
        }
    }
}

impl BuildProgress for Logged {
    fn build_event(&self, event: &BuildEvent<'_>) {
        match event {
            BuildEvent::Stage { name } => tracing::info!(image = %self.arn, stage = name, "stage"),
            BuildEvent::Failed { reason } => {
                tracing::warn!(image = %self.arn, reason = reason, "build failed")
            }
            BuildEvent::Finished { arn, state } => {
                tracing::info!(image = %arn, state = state, "build finished")
            }
            _ => {}
        }
    }
}
