//! Lifecycle policies (kiln-model's `LifecyclePolicy`, stored as the API's `LifecyclePolicy`
//! body) and the executions recorded when the server runs them (see `crate::lifecycle`).

use kiln_api::ApiError;
use kiln_model::lifecycle::{LifecyclePolicy, lifecycle_policy_from_json};
use kiln_store::{ApiResource, LifecycleExecution, LifecycleExecutionState};
use serde_json::{Map, Value, json};

use super::{Ctx, LIFECYCLE, arn, check_name, copy_members, date, internal, missing, passes, tags_value};

/// The members of a policy, in the request and in the stored body.
const POLICY_MEMBERS: &[&str] =
    &["name", "description", "status", "executionRole", "resourceType", "policyDetails", "resourceSelection"];

/// What the model requires of both `CreateLifecyclePolicy` and `UpdateLifecyclePolicy`.
const REQUIRED: &[&str] = &["executionRole", "resourceType", "policyDetails", "resourceSelection"];

/// The policy a request's members describe, checked by kiln-model; every problem names its
/// member.
fn read_policy(members: Map<String, Value>) -> Result<LifecyclePolicy, ApiError> {
    lifecycle_policy_from_json(Value::Object(members)).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        ApiError::InvalidParameterValue(format!("The lifecycle policy is not valid: {}.", text.join("; ")))
    })
}

/// The policy a stored body holds (checked when it was stored; read again to run it).
pub(crate) fn stored_policy(r: &ApiResource) -> Result<LifecyclePolicy, String> {
    lifecycle_policy_from_json(Value::Object(copy_members(&r.body, POLICY_MEMBERS))).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        text.join("; ")
    })
}

/// The body's policy members as kiln-model writes them (defaults filled in: `status`).
fn policy_members(policy: &LifecyclePolicy) -> Result<Map<String, Value>, ApiError> {
    let value = serde_json::to_value(policy)
        .map_err(|e| ApiError::Service(format!("kiln could not record the lifecycle policy: {e}")))?;
    let mut members = match value {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    // Tags live beside the body (TagResource changes them), as for every resource.
    members.remove("tags");
    Ok(members)
}

fn require(c: &Ctx<'_>, members: &[&str]) -> Result<(), ApiError> {
    match members.iter().find(|m| c.input().get(**m).is_none_or(Value::is_null)) {
        Some(m) => Err(missing(m)),
        None => Ok(()),
    }
}

/// `executionRole` as the model's `RoleNameOrArn`: a role name, or a role's IAM ARN. kiln acts
/// as itself and only records it, but a malformed one is refused as AWS refuses it.
fn check_role(role: &str) -> Result<(), ApiError> {
    let name = match role.strip_prefix("arn:") {
        Some(rest) => {
            let mut parts = rest.splitn(5, ':');
            let partition = parts.next().unwrap_or_default();
            let service = parts.next().unwrap_or_default();
            let region = parts.next().unwrap_or_default();
            let account = parts.next().unwrap_or_default();
            let resource = parts.next().unwrap_or_default();
            let ok = partition.starts_with("aws")
                && service == "iam"
                && region.is_empty()
                && kiln_store::is_account_id(account);
            match resource.strip_prefix("role/") {
                Some(name) if ok => name,
                _ => "",
            }
        }
        None => role,
    };
    let valid_char = |ch: char| ch.is_ascii_alphanumeric() || "_+=,.@-/".contains(ch);
    if name.is_empty() || role.len() > 2048 || !name.chars().all(valid_char) {
        return Err(ApiError::InvalidParameterValue(format!(
            "executionRole {role:?} is not a role name or an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)."
        )));
    }
    Ok(())
}

pub(super) async fn create_policy(c: &Ctx<'_>) -> Result<Value, ApiError> {
    c.no_dry_run()?;
    require(c, &["name"])?;
    require(c, REQUIRED)?;
    let name = c.req_str("name")?;
    check_name(&name)?;
    check_role(&c.req_str("executionRole")?)?;
    let tags = c.tags("tags")?;
    let policy = read_policy(copy_members(c.input(), POLICY_MEMBERS))?;
    let now = time::OffsetDateTime::now_utc();
    let policy_arn = arn(c.account(), LIFECYCLE, &name, None, None);
    let mut body = policy_members(&policy)?;
    body.insert("arn".into(), json!(policy_arn));
    body.insert("dateCreated".into(), date(now));
    let resource = ApiResource {
        arn: policy_arn.clone(),
        kind: LIFECYCLE.into(),
        name,
        version: None,
        account: c.account().to_owned(),
        body: Value::Object(body),
        tags,
        created_at: now,
        updated_at: now,
    };
    super::catalog::create_resource(c, &resource).await?;
    Ok(json!({ "lifecyclePolicyArn": policy_arn }))
}

pub(super) async fn update_policy(c: &Ctx<'_>) -> Result<Value, ApiError> {
    require(c, REQUIRED)?;
    check_role(&c.req_str("executionRole")?)?;
    let old = c.owned(LIFECYCLE, "lifecyclePolicyArn").await?;
    let mut members = copy_members(c.input(), &POLICY_MEMBERS[1..]);
    members.insert("name".into(), json!(old.name));
    // A policy disabled on purpose is not enabled again by an update that does not say so.
    if !members.contains_key("status") {
        if let Some(status) = old.body.get("status").filter(|s| !s.is_null()) {
            members.insert("status".into(), status.clone());
        }
    }
    let policy = read_policy(members)?;
    let mut body = policy_members(&policy)?;
    for kept in ["arn", "dateCreated", "dateLastRun"] {
        if let Some(v) = old.body.get(kept).filter(|v| !v.is_null()) {
            body.insert(kept.into(), v.clone());
        }
    }
    body.insert("dateUpdated".into(), date(time::OffsetDateTime::now_utc()));
    let store = c.server.store();
    if !store.update_api_resource(&old.arn, &Value::Object(body), &old.tags).await.map_err(internal)? {
        return Err(ApiError::ResourceNotFound(format!("The {LIFECYCLE} {} does not exist.", old.arn)));
    }
    Ok(json!({ "lifecyclePolicyArn": old.arn }))
}

pub(super) async fn list_policies(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let filters = c.filters(&["name", "status"])?;
    let mut rs = c.server.store().list_api_resources(LIFECYCLE, Some(c.account())).await.map_err(internal)?;
    rs.retain(|r| {
        passes(&filters, |f| match f {
            "name" => Some(r.name.clone()),
            other => r.body.get(other).and_then(Value::as_str).map(str::to_owned),
        })
    });
    let members = [
        "name",
        "description",
        "status",
        "executionRole",
        "resourceType",
        "dateCreated",
        "dateUpdated",
        "dateLastRun",
    ];
    let items = rs
        .iter()
        .map(|r| {
            let mut v = copy_members(&r.body, &members);
            v.insert("arn".into(), json!(r.arn));
            v.insert("tags".into(), tags_value(&r.tags));
            Value::Object(v)
        })
        .collect();
    Ok(page.output("lifecyclePolicySummaryList", items))
}

pub(super) async fn delete_policy(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let r = c.owned(LIFECYCLE, "lifecyclePolicyArn").await?;
    let store = c.server.store();
    store.delete_api_resource(&r.arn).await.map_err(internal)?;
    // A policy made again under the same name starts with no history.
    store.delete_lifecycle_executions(&r.arn).await.map_err(internal)?;
    Ok(json!({ "lifecyclePolicyArn": r.arn }))
}

// ---- executions ----------------------------------------------------------------------------

/// The caller's execution at member `lifecycleExecutionId`.
async fn own_execution(c: &Ctx<'_>) -> Result<LifecycleExecution, ApiError> {
    let id = c.req_str("lifecycleExecutionId")?;
    let found = c.server.store().lifecycle_execution(&id).await.map_err(internal)?;
    match found {
        Some(e) if e.account == c.account() => Ok(e),
        _ => Err(ApiError::ResourceNotFound(format!("The lifecycle execution {id} does not exist."))),
    }
}

/// The API's `LifecycleExecutionState`: kiln's RUNNING is the model's IN_PROGRESS.
fn state_value(e: &LifecycleExecution) -> Value {
    let status = match e.state {
        LifecycleExecutionState::Running => "IN_PROGRESS",
        LifecycleExecutionState::Success => "SUCCESS",
        LifecycleExecutionState::Failed => "FAILED",
    };
    let mut state = Map::new();
    state.insert("status".into(), json!(status));
    if let Some(reason) = &e.reason {
        state.insert("reason".into(), json!(reason));
    }
    Value::Object(state)
}

fn resources(e: &LifecycleExecution) -> Vec<Value> {
    e.resources.as_array().cloned().unwrap_or_default()
}

fn execution_value(e: &LifecycleExecution) -> Value {
    let impacted = resources(e).iter().any(|r| r["state"]["status"] == "SUCCESS");
    let mut out = Map::new();
    out.insert("lifecycleExecutionId".into(), json!(e.id));
    out.insert("lifecyclePolicyArn".into(), json!(e.policy_arn));
    out.insert("resourcesImpactedSummary".into(), json!({ "hasImpactedResources": impacted }));
    out.insert("state".into(), state_value(e));
    out.insert("startTime".into(), date(e.started_at));
    if let Some(end) = e.ended_at {
        out.insert("endTime".into(), date(end));
    }
    Value::Object(out)
}

pub(super) async fn get_execution(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let e = own_execution(c).await?;
    Ok(json!({ "lifecycleExecution": execution_value(&e) }))
}

pub(super) async fn list_executions(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let policy = c.owned(LIFECYCLE, "resourceArn").await?;
    let executions = c.server.store().lifecycle_executions(&policy.arn).await.map_err(internal)?;
    Ok(page.output("lifecycleExecutions", executions.iter().map(execution_value).collect()))
}

pub(super) async fn list_execution_resources(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let e = own_execution(c).await?;
    // `parentResourceId` lists the children of a resource (an AMI's snapshots); kiln's
    // images have none.
    let items = if c.opt_str("parentResourceId")?.is_some() { Vec::new() } else { resources(&e) };
    let mut out = page.output("resources", items);
    if let Some(o) = out.as_object_mut() {
        o.insert("lifecycleExecutionId".into(), json!(e.id));
        o.insert("lifecycleExecutionState".into(), state_value(&e));
    }
    Ok(out)
}

pub(super) async fn cancel_execution(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let e = own_execution(c).await?;
    let why = match e.state {
        LifecycleExecutionState::Running => "is running and cannot be stopped midway".to_owned(),
        state => format!("is {state}, not running"),
    };
    Err(ApiError::ResourceInUse(format!(
        "The lifecycle execution {} {why}: kiln carries out a policy's actions in one pass, so there \
         is nothing to cancel.",
        e.id
    )))
}
