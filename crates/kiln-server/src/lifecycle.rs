//! Runs of lifecycle policies inside `kiln serve`. AWS runs policies on its own, so there is
//! no operation to start one: the scheduler calls [`run_due_lifecycle_policies`] every pass,
//! and each ENABLED policy whose `dateLastRun` is older than the interval is planned with
//! kiln-build's pure `plan` over its own account's images and applied with
//! `Kiln::apply_lifecycle` (what `kiln lifecycle apply` does), on a blocking thread. Each run is
//! recorded as a lifecycle execution with the images it acted on, for `GetLifecycleExecution`
//! and `ListLifecycleExecutionResources`.

use std::time::Duration;

use kiln_build::Kiln;
use kiln_build::lifecycle::{Applied, plan};
use kiln_model::lifecycle::LifecyclePolicy;
use kiln_store::{ApiResource, LifecycleExecutionState};
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::ops::{LIFECYCLE, date, stored_policy};
use crate::{Server, ServerError};

/// How often a policy runs by default.
pub const LIFECYCLE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// One run of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRun {
    pub policy_arn: String,
    pub execution_id: String,
    pub state: LifecycleExecutionState,
    /// The images whose state the run changed.
    pub changed: Vec<String>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// Runs every ENABLED policy now, whenever it last ran.
pub async fn run_lifecycle_policies(
    server: &Server,
    now: OffsetDateTime,
) -> Result<Vec<LifecycleRun>, ServerError> {
    run(server, now, None).await
}

/// Runs the ENABLED policies that have not run within `interval` of `now` (their body's
/// `dateLastRun`, so a restarted server does not run them early).
pub async fn run_due_lifecycle_policies(
    server: &Server,
    now: OffsetDateTime,
    interval: Duration,
) -> Result<Vec<LifecycleRun>, ServerError> {
    run(server, now, Some(interval)).await
}

async fn run(
    server: &Server,
    now: OffsetDateTime,
    interval: Option<Duration>,
) -> Result<Vec<LifecycleRun>, ServerError> {
    let mut out = Vec::new();
    for resource in server.store().list_api_resources(LIFECYCLE, None).await? {
        if resource.body["status"].as_str() != Some("ENABLED") {
            continue;
        }
        if let (Some(interval), Some(last)) = (interval, last_run(&resource)) {
            if now - last < interval {
                continue;
            }
        }
        let policy = match stored_policy(&resource) {
            Ok(p) => p,
            Err(e) => {
                // Stored policies were checked when stored; one kiln can no longer read is
                // skipped rather than guessed at.
                tracing::warn!(policy = %resource.arn, "lifecycle policy not run: {e}");
                continue;
            }
        };
        out.push(run_one(server, &resource, policy, now).await?);
    }
    Ok(out)
}

fn last_run(resource: &ApiResource) -> Option<OffsetDateTime> {
    let text = resource.body["dateLastRun"].as_str()?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// `lce-` and 16 random bytes in the model's UUID shape.
fn execution_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let h = hex::encode(bytes);
    format!("lce-{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

async fn run_one(
    server: &Server,
    resource: &ApiResource,
    policy: LifecyclePolicy,
    now: OffsetDateTime,
) -> Result<LifecycleRun, ServerError> {
    let store = server.store();
    let id = execution_id();
    let account = resource.account.clone();
    store.start_lifecycle_execution(&id, &resource.arn, &account, now).await?;
    let home = server.home().to_path_buf();
    let owner = account.clone();
    // kiln-build's catalogue calls and the removal of deleted images' files block.
    let result = tokio::task::spawn_blocking(move || {
        let kiln = Kiln::open(&home).map_err(|e| e.to_string())?;
        let mut facts = kiln.lifecycle_facts().map_err(|e| format!("cannot read the catalogue: {e}"))?;
        // A policy selects by recipe name and tags, which other accounts may use too: only
        // its own account's images are ever planned, so only they can be touched.
        facts.retain(|f| f.image.account == owner);
        let planned = plan(&policy, &facts, now);
        Ok::<_, String>(kiln.apply_lifecycle(&planned))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the lifecycle run's thread failed: {e}")));
    let (state, reason, applied) = match result {
        Ok(applied) => {
            let failed: Vec<&Applied> = applied.iter().filter(|a| a.error.is_some()).collect();
            match failed.first() {
                None => (LifecycleExecutionState::Success, None, applied),
                Some(first) => {
                    let reason = format!(
                        "{} of {} actions failed; the first, on {}: {}",
                        failed.len(),
                        applied.len(),
                        first.change.arn,
                        first.error.as_deref().unwrap_or_default()
                    );
                    (LifecycleExecutionState::Failed, Some(reason), applied)
                }
            }
        }
        Err(e) => (LifecycleExecutionState::Failed, Some(e), Vec::new()),
    };
    let resources: Vec<Value> = applied.iter().map(|a| resource_value(&account, a)).collect();
    // The clock may be injected (tests, a scheduler's clock): the end is never before the start.
    let ended = now.max(OffsetDateTime::now_utc());
    store.finish_lifecycle_execution(&id, state, reason.as_deref(), &Value::Array(resources), ended).await?;
    if let Some(r) = &reason {
        tracing::warn!(policy = %resource.arn, execution = %id, "lifecycle run failed: {r}");
    } else {
        tracing::info!(policy = %resource.arn, execution = %id, changed = applied.len(), "lifecycle run");
    }
    // Recorded even for a failed run: a policy that keeps failing is retried next interval,
    // not every scheduler pass.
    record_last_run(server, &resource.arn, now).await?;
    let changed = applied.iter().filter(|a| a.error.is_none()).map(|a| a.change.arn.clone()).collect();
    Ok(LifecycleRun { policy_arn: resource.arn.clone(), execution_id: id, state, changed, reason })
}

/// The API's `LifecycleExecutionResource` for one change.
fn resource_value(account: &str, a: &Applied) -> Value {
    let mut state = json!({ "status": if a.error.is_some() { "FAILED" } else { "SUCCESS" } });
    if let (Some(o), Some(e)) = (state.as_object_mut(), &a.error) {
        o.insert("reason".into(), json!(e));
    }
    json!({
        "accountId": account,
        "resourceId": a.change.arn,
        "region": crate::REGION,
        "state": state,
        "action": { "name": a.change.action.as_str(), "reason": a.change.why },
    })
}

/// Sets the policy's `dateLastRun`, without undoing an update made while it ran: the body is
/// read again and written only if nothing changed it meanwhile.
async fn record_last_run(server: &Server, arn: &str, at: OffsetDateTime) -> Result<(), ServerError> {
    let store = server.store();
    for _ in 0..5 {
        // Deleted while it ran: nothing to record.
        let Some(current) = store.get_api_resource(arn).await? else { return Ok(()) };
        let mut body = current.body.clone();
        if let Some(o) = body.as_object_mut() {
            o.insert("dateLastRun".into(), date(at));
        }
        if store.update_api_resource_if_unchanged(arn, current.updated_at, &body, &current.tags).await? {
            return Ok(());
        }
    }
    Err(ServerError::Invalid(format!(
        "the lifecycle policy {arn} kept changing; its dateLastRun was not recorded"
    )))
}
