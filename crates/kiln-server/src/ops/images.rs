//! Images, pipeline executions and scan findings.

use kiln_api::ApiError;
use kiln_store::{FindingFilter, Image, ImageFilter, ImageState, NewImage, StoreError, Version};
use serde_json::{Map, Value, json};

use super::catalog::check_resource_file;
use super::{
    Ctx, DISTRIBUTION, INFRASTRUCTURE, PIPELINE, RECIPE, arn, date, internal, passes, resource_file_for,
};
use crate::worker::{EXECUTION_JOB, ExecutionPayload};

fn image_not_found(arn: &str) -> ApiError {
    ApiError::ResourceNotFound(format!("The image {arn} does not exist."))
}

/// The image at `arn` (a build version, or a version: its newest build), visible to the
/// caller: its own, or shared with its account.
async fn visible_image(c: &Ctx<'_>, arn: &str) -> Result<Image, ApiError> {
    let parsed = kiln_model::Arn::parse(arn)
        .filter(|a| a.resource_type == "image" && a.version.is_some())
        .ok_or_else(|| ApiError::InvalidParameterValue(format!("{arn} is not an image ARN.")))?;
    let store = c.server.store();
    let found = match parsed.build {
        Some(_) => store.get_image_by_arn(arn).await,
        None => {
            let version = Version::parse(parsed.version.as_deref().unwrap_or_default())
                .map_err(|e| ApiError::InvalidVersionNumber(e.to_string()))?;
            store.get_image(&parsed.name, &version, None).await
        }
    };
    let image = found.map_err(|e| match e {
        StoreError::ImageNotFound { .. } => image_not_found(arn),
        e => internal(e),
    })?;
    if image.account == c.account() {
        return Ok(image);
    }
    let shared = store.launch_permissions(&image.arn).await.map_err(internal)?;
    if kiln_store::may_use(&image.account, &shared, c.account()) {
        Ok(image)
    } else {
        Err(image_not_found(arn))
    }
}

fn version_arn(image: &Image) -> String {
    arn(&image.account, "image", &image.name, Some(&image.version.to_string()), None)
}

/// What an image's output is, as the model's `outputResources` (kiln's "AMI" is the disk
/// folder in each region).
fn output_resources(image: &Image) -> Value {
    let Some(location) = &image.output_location else { return json!({ "amis": [] }) };
    if image.state != ImageState::Available {
        return json!({ "amis": [] });
    }
    json!({ "amis": [{
        "region": image.region,
        "image": location,
        "name": image.name,
        "accountId": image.account,
        "state": { "status": image.state.as_str() },
    }] })
}

fn state(image: &Image) -> Value {
    let mut s = Map::new();
    s.insert("status".into(), json!(image.state.as_str()));
    if let Some(reason) = &image.reason {
        s.insert("reason".into(), json!(reason));
    }
    Value::Object(s)
}

fn image_summary(image: &Image) -> Value {
    json!({
        "arn": image.arn,
        "name": image.name,
        "type": "AMI",
        "version": format!("{}/{}", image.version, image.build),
        "platform": "Linux",
        "state": state(image),
        "owner": image.account,
        "dateCreated": date(image.created_at),
        "outputResources": output_resources(image),
        "tags": image.tags,
        "buildType": "USER_INITIATED",
        "imageSource": "CUSTOM",
    })
}

pub(super) async fn get_image(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let arn = c.req_str("imageBuildVersionArn")?;
    let image = visible_image(c, &arn).await?;
    let mut out = image_summary(&image);
    let execution = c.server.store().execution_of(&image.arn).await.map_err(internal)?;
    if let (Some(o), Some(e)) = (out.as_object_mut(), execution) {
        // An image made by CreateImage has no pipeline, and so no sourcePipeline* members.
        if let Some(pipeline) = &e.pipeline_arn {
            o.insert("sourcePipelineArn".into(), json!(pipeline));
        }
        let built_from =
            ["sourcePipelineName", "imageRecipe", "infrastructureConfiguration", "distributionConfiguration"];
        for member in built_from.iter().chain(SETTINGS) {
            if let Some(v) = e.snapshot.get(*member).filter(|v| !v.is_null()) {
                o.insert((*member).into(), v.clone());
            }
        }
    }
    if let Some(o) = out.as_object_mut() {
        o.remove("owner");
    }
    Ok(json!({ "image": out }))
}

/// The caller's images that are not DELETED, passing `filters` (name, version, state).
async fn own_images(c: &Ctx<'_>, filters: &[(String, Vec<String>)]) -> Result<Vec<Image>, ApiError> {
    let mut images = c.server.store().list_images(&ImageFilter::default()).await.map_err(internal)?;
    images.retain(|i| {
        i.account == c.account()
            && passes(filters, |f| match f {
                "name" => Some(i.name.clone()),
                "version" => Some(i.version.to_string()),
                "state" => Some(i.state.as_str().to_owned()),
                _ => None,
            })
    });
    Ok(images)
}

pub(super) async fn list_images(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let filters = c.filters(&["name", "version"])?;
    let include_deprecated = c.opt_bool("includeDeprecated")?.unwrap_or(false);
    let mut images = if c.owner_is_self()? { own_images(c, &filters).await? } else { Vec::new() };
    if !include_deprecated {
        images.retain(|i| i.state != ImageState::Deprecated);
    }
    // One entry per name and version (the store lists them by name, version, build).
    let mut items: Vec<Value> = Vec::new();
    let mut last: Option<(String, Version)> = None;
    for i in &images {
        let key = (i.name.clone(), i.version);
        if last.as_ref() == Some(&key) {
            continue;
        }
        last = Some(key);
        items.push(json!({
            "arn": version_arn(i),
            "name": i.name,
            "type": "AMI",
            "version": i.version.to_string(),
            "platform": "Linux",
            "owner": i.account,
            "dateCreated": date(i.created_at),
            "buildType": "USER_INITIATED",
            "imageSource": "CUSTOM",
        }));
    }
    if c.opt_bool("byName")? == Some(true) {
        let mut by_name: Vec<Value> = Vec::new();
        for item in items {
            match by_name.last_mut() {
                Some(prev) if prev["name"] == item["name"] => *prev = item,
                _ => by_name.push(item),
            }
        }
        items = by_name;
    }
    Ok(page.output("imageVersionList", items))
}

pub(super) async fn list_image_build_versions(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let filters = c.filters(&["name", "version", "state"])?;
    let version_arn = c.req_str("imageVersionArn")?;
    let parsed = kiln_model::Arn::parse(&version_arn)
        .filter(|a| a.resource_type == "image" && a.build.is_none() && a.version.is_some())
        .ok_or_else(|| {
            ApiError::InvalidParameterValue(format!("{version_arn} is not an image version ARN."))
        })?;
    let mut images = own_images(c, &filters).await?;
    images.retain(|i| {
        i.name == parsed.name && parsed.version.as_deref() == Some(i.version.to_string().as_str())
    });
    Ok(page.output("imageSummaryList", images.iter().map(image_summary).collect()))
}

pub(super) async fn list_pipeline_images(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let filters = c.filters(&["name", "version", "state"])?;
    let pipeline = c.owned(PIPELINE, "imagePipelineArn").await?;
    let store = c.server.store();
    let mut items = Vec::new();
    for e in store.pipeline_executions(&pipeline.arn).await.map_err(internal)? {
        let image = store.get_image_by_arn(&e.image_arn).await.map_err(internal)?;
        let keep = image.state != ImageState::Deleted
            && passes(&filters, |f| match f {
                "name" => Some(image.name.clone()),
                "version" => Some(image.version.to_string()),
                "state" => Some(image.state.as_str().to_owned()),
                _ => None,
            });
        if keep {
            items.push(image_summary(&image));
        }
    }
    Ok(page.output("imageSummaryList", items))
}

/// The caller's own image at member `imageBuildVersionArn`.
async fn own_image(c: &Ctx<'_>) -> Result<Image, ApiError> {
    let arn = c.req_str("imageBuildVersionArn")?;
    let parsed = kiln_model::Arn::parse(&arn).filter(|a| a.resource_type == "image" && a.build.is_some());
    if parsed.is_none() {
        return Err(ApiError::InvalidParameterValue(format!("{arn} is not an image build version ARN.")));
    }
    let image = c.server.store().get_image_by_arn(&arn).await.map_err(|e| match e {
        StoreError::ImageNotFound { .. } => image_not_found(&arn),
        e => internal(e),
    })?;
    if image.account != c.account() || image.state == ImageState::Deleted {
        return Err(image_not_found(&arn));
    }
    Ok(image)
}

pub(super) async fn delete_image(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let image = own_image(c).await?;
    if image.state.is_in_progress() {
        return Err(ApiError::ResourceInUse(format!(
            "The image {} is {}; cancel its creation before deleting it.",
            image.arn, image.state
        )));
    }
    let reason = format!("deleted by {}", c.call.caller.principal_arn);
    c.server.store().transition(&image.arn, ImageState::Deleted, Some(&reason)).await.map_err(
        |e| match e {
            StoreError::InvalidTransition { .. } => ApiError::ResourceInUse(e.to_string()),
            e => internal(e),
        },
    )?;
    // The disks go with the record's deletion; only folders kiln made under its home.
    if let Some(location) = &image.output_location {
        let path = std::path::Path::new(location);
        if path.starts_with(c.server.home().join("images")) && path.is_dir() {
            if let Err(e) = std::fs::remove_dir_all(path) {
                tracing::warn!("removing the output folder {location} of deleted image {}: {e}", image.arn);
            }
        }
    }
    Ok(json!({ "imageBuildVersionArn": image.arn }))
}

pub(super) async fn cancel_image_creation(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let image = own_image(c).await?;
    if !image.state.is_in_progress() {
        return Err(ApiError::ResourceInUse(format!(
            "The image {} is {}; only an image being created can be cancelled.",
            image.arn, image.state
        )));
    }
    let store = c.server.store();
    let reason = format!("cancelled by {}", c.call.caller.principal_arn);
    store.transition(&image.arn, ImageState::Cancelled, Some(&reason)).await.map_err(|e| match e {
        StoreError::InvalidTransition { .. } => ApiError::ResourceInUse(e.to_string()),
        e => internal(e),
    })?;
    if let Some(execution) = store.execution_of(&image.arn).await.map_err(internal)? {
        // Queued: cancelled at once. Running: its worker learns it at its next heartbeat,
        // or at once below when it runs in this process.
        store.cancel_job(execution.job_id).await.map_err(internal)?;
    }
    // Cloned out: the token's hooks (killing the build's sandbox or test instance) run in
    // this thread, and not under the map's lock.
    let running = c.server.running().get(&image.arn).cloned();
    if let Some(cancel) = running {
        cancel.cancel();
    }
    Ok(json!({ "imageBuildVersionArn": image.arn }))
}

pub(super) async fn start_execution(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let pipeline = c.owned(PIPELINE, "imagePipelineArn").await?;
    let extra_tags = c.tags("tags")?;
    let reason = format!("started by {}", c.call.caller.principal_arn);
    let arn = start_pipeline_execution(c.server, &pipeline, extra_tags, &reason).await?;
    Ok(json!({ "imageBuildVersionArn": arn }))
}

/// `CreateImage`: an image built from a recipe and configurations named in the request, with
/// no pipeline, through the same start as a pipeline execution.
pub(super) async fn create_image(c: &Ctx<'_>) -> Result<Value, ApiError> {
    if c.opt_str("containerRecipeArn")?.is_some() {
        return Err(ApiError::InvalidParameterValue(
            "kiln builds no container images: give imageRecipeArn.".into(),
        ));
    }
    match c.input().get("workflows") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.is_empty() => {}
        Some(_) => {
            return Err(ApiError::InvalidParameterValue(
                "workflows is not supported: kiln runs its built-in build and test workflow; leave \
                 workflows out (imageTestsConfiguration.imageTestsEnabled turns the tests off)."
                    .into(),
            ));
        }
    }
    // The ARNs are the caller's own words here, so a missing one is ResourceNotFound, as in
    // CreateImagePipeline (a pipeline whose recipe went away since is ResourceDependency).
    let recipe = c.owned(RECIPE, "imageRecipeArn").await?;
    let infrastructure = c.owned(INFRASTRUCTURE, "infrastructureConfigurationArn").await?;
    let distribution = match c.opt_str("distributionConfigurationArn")? {
        Some(arn) => Some(c.owned_arn(DISTRIBUTION, &arn).await?),
        None => None,
    };
    let mut settings = super::copy_members(
        c.input(),
        &["imageTestsConfiguration", "imageScanningConfiguration", "executionRole", "loggingConfiguration"],
    );
    settings.insert(
        "enhancedImageMetadataEnabled".into(),
        json!(c.opt_bool("enhancedImageMetadataEnabled")?.unwrap_or(true)),
    );
    let reason = format!("created by {}", c.call.caller.principal_arn);
    let image = start_build(
        c.server,
        BuildStart {
            account: c.account(),
            recipe,
            infrastructure,
            distribution,
            settings: &Value::Object(settings),
            tags: c.tags("tags")?,
            pipeline: None,
            reason: &reason,
        },
    )
    .await?;
    Ok(json!({ "imageBuildVersionArn": image.arn }))
}

/// Starts an execution of `pipeline` (owned by its account): its recipe and configurations
/// resolved, then [`start_build`] with `reason` as why the image was created, and the
/// pipeline's `dateLastRun` updated. What `StartImagePipelineExecution` and the scheduler both
/// do; returns the new image's ARN.
pub(crate) async fn start_pipeline_execution(
    server: &crate::Server,
    pipeline: &kiln_store::ApiResource,
    extra_tags: kiln_store::Tags,
    reason: &str,
) -> Result<String, ApiError> {
    let account = pipeline.account.as_str();
    let owned_arn =
        |kind: &'static str, arn: String| async move { super::owned_arn(server, account, kind, &arn).await };
    let body = &pipeline.body;
    if body["status"].as_str() == Some("DISABLED") {
        return Err(ApiError::InvalidRequest(format!("The image pipeline {} is DISABLED.", pipeline.arn)));
    }
    let dependency = |kind: &str, arn: &str| {
        ApiError::ResourceDependency(format!("The {kind} {arn} the pipeline uses no longer exists."))
    };
    let recipe_arn = body["imageRecipeArn"].as_str().unwrap_or_default().to_owned();
    let recipe = owned_arn(RECIPE, recipe_arn.clone()).await.map_err(|_| dependency(RECIPE, &recipe_arn))?;
    let infra_arn = body["infrastructureConfigurationArn"].as_str().unwrap_or_default().to_owned();
    let infrastructure = owned_arn(INFRASTRUCTURE, infra_arn.clone())
        .await
        .map_err(|_| dependency(INFRASTRUCTURE, &infra_arn))?;
    let distribution = match body["distributionConfigurationArn"].as_str() {
        Some(a) => {
            Some(owned_arn(DISTRIBUTION, a.to_owned()).await.map_err(|_| dependency(DISTRIBUTION, a))?)
        }
        None => None,
    };
    let mut tags = super::tags_of(body.get("imageTags"), "imageTags")?;
    tags.extend(extra_tags);
    let image = start_build(
        server,
        BuildStart {
            account,
            recipe,
            infrastructure,
            distribution,
            settings: body,
            tags,
            pipeline: Some(pipeline),
            reason,
        },
    )
    .await?;
    let mut updated = pipeline.body.clone();
    if let Some(o) = updated.as_object_mut() {
        o.insert("dateLastRun".into(), date(image.created_at));
    }
    server.store().update_api_resource(&pipeline.arn, &updated, &pipeline.tags).await.map_err(internal)?;
    Ok(image.arn)
}

/// What a build is started from, resolved and owned by `account`.
pub(crate) struct BuildStart<'a> {
    pub account: &'a str,
    pub recipe: kiln_store::ApiResource,
    pub infrastructure: kiln_store::ApiResource,
    pub distribution: Option<kiln_store::ApiResource>,
    /// The pipeline's body or the `CreateImage` request: `imageTestsConfiguration`,
    /// `imageScanningConfiguration`, `enhancedImageMetadataEnabled`, `executionRole`,
    /// `loggingConfiguration`.
    pub settings: &'a Value,
    /// The new image's tags.
    pub tags: kiln_store::Tags,
    /// The pipeline that runs the build, if one does.
    pub pipeline: Option<&'a kiln_store::ApiResource>,
    /// Why the image is created (kept on the image).
    pub reason: &'a str,
}

/// The one way the API starts a build: the resource file materialised from the recipe and
/// configurations, the image recorded PENDING with the start's reason, the build queued for
/// the workers with what it was started with (GetImage's recipe and configurations).
async fn start_build(server: &crate::Server, start: BuildStart<'_>) -> Result<Image, ApiError> {
    let BuildStart { account, recipe, infrastructure, distribution, settings, tags, pipeline, reason } =
        start;
    let file = resource_file_for(
        &recipe.body,
        Some(&infrastructure.body),
        distribution.as_ref().map(|d| &d.body),
        Some(settings),
    );
    check_resource_file(&file)?;
    let version = Version::parse(&recipe.version.clone().unwrap_or_default())
        .map_err(|e| ApiError::InvalidVersionNumber(e.to_string()))?;
    let store = server.store();
    let image = store
        .create_image(&NewImage {
            name: recipe.name.clone(),
            version,
            region: crate::REGION.to_owned(),
            account: account.to_owned(),
            recipe: file.clone(),
            tags,
        })
        .await
        .map_err(internal)?;
    // Before the build is queued, so no worker has moved it past PENDING yet.
    store.set_creation_reason(&image.arn, reason).await.map_err(internal)?;
    let pipeline_arn = pipeline.map(|p| p.arn.as_str());
    tracing::info!(image = %image.arn, pipeline = pipeline_arn.unwrap_or("none"), reason, "execution started");
    let no_test = settings["imageTestsConfiguration"]["imageTestsEnabled"].as_bool() == Some(false);
    let payload = ExecutionPayload { image_arn: image.arn.clone(), resource_file: file, no_test };
    let job = kiln_store::NewJob { kind: EXECUTION_JOB.into(), payload: payload.to_json(), max_attempts: 1 };
    let queued = async {
        let id = store.enqueue_job(&job).await?;
        let mut snapshot = json!({
            "imageRecipe": recipe.body,
            "infrastructureConfiguration": infrastructure.body,
            "distributionConfiguration": distribution.as_ref().map(|d| &d.body),
        });
        if let Some(o) = snapshot.as_object_mut() {
            if let Some(p) = pipeline {
                o.insert("sourcePipelineName".into(), json!(p.name));
            }
            o.extend(super::copy_members(settings, SETTINGS));
        }
        store.record_execution(&image.arn, pipeline_arn, id, &snapshot).await
    };
    if let Err(e) = queued.await {
        let _ =
            store.transition(&image.arn, ImageState::Failed, Some("the execution could not be queued")).await;
        return Err(internal(e));
    }
    server.inner.queued.notify_one();
    Ok(image)
}

/// The members of a start's settings GetImage answers as they were.
const SETTINGS: &[&str] = &[
    "imageTestsConfiguration",
    "imageScanningConfiguration",
    "enhancedImageMetadataEnabled",
    "executionRole",
    "loggingConfiguration",
];

/// The most log lines one `GetImageLogs` call answers.
const MAX_LOG_LINES: usize = 10_000;

/// `GET /kiln/GetImageLogs` (a kiln extension, authorised as `imagebuilder:GetImage`): the
/// image's `build-log.jsonl` from line `nextToken` (0 when absent), at most `maxResults`
/// lines. `nextToken` is answered while lines remain or the build is still running, so a
/// client follows a build by calling again with it.
pub(super) async fn get_image_logs(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let arn = c.req_str("imageBuildVersionArn")?;
    let image = visible_image(c, &arn).await?;
    let bad_number = |name: &str| ApiError::InvalidParameterValue(format!("{name} must be a whole number."));
    let from: usize = match c.opt_str("nextToken")? {
        Some(t) => {
            t.parse().map_err(|_| ApiError::InvalidPaginationToken(format!("{t} is not a line number.")))?
        }
        None => 0,
    };
    let max: usize = match c.opt_str("maxResults")? {
        Some(t) => t.parse::<usize>().map_err(|_| bad_number("maxResults"))?.clamp(1, MAX_LOG_LINES),
        None => 1000,
    };
    let text = match &image.output_location {
        Some(dir) => match tokio::fs::read(std::path::Path::new(dir).join("build-log.jsonl")).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!("reading the build log of {}: {e}", image.arn);
                return Err(ApiError::Service("The image's build log cannot be read.".into()));
            }
        },
        None => String::new(),
    };
    // Only whole lines: the build may be writing the last one.
    let complete_lines = text.rfind('\n').map_or("", |end| &text[..end]);
    let lines: Vec<&str> = complete_lines.lines().collect();
    let events: Vec<Value> = lines
        .iter()
        .skip(from)
        .take(max)
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({ "raw": l })))
        .collect();
    let next = from.saturating_add(events.len()).min(lines.len().max(from));
    let running = image.state.is_in_progress();
    let mut out = Map::new();
    out.insert("imageBuildVersionArn".into(), json!(image.arn));
    out.insert("state".into(), json!(image.state.as_str()));
    out.insert("events".into(), Value::Array(events));
    if next < lines.len() || running {
        out.insert("nextToken".into(), json!(next.to_string()));
    }
    Ok(Value::Object(out))
}

pub(super) async fn list_scan_findings(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let filters = c.filters(&["imageBuildVersionArn", "imagePipelineArn", "vulnerabilityId", "severity"])?;
    let values = |name: &str| -> Vec<String> {
        filters.iter().filter(|(n, _)| n == name).flat_map(|(_, v)| v.iter().cloned()).collect()
    };
    let mut own: Vec<String> = own_images(c, &[]).await?.into_iter().map(|i| i.arn).collect();
    let wanted = values("imageBuildVersionArn");
    if !wanted.is_empty() {
        own.retain(|a| wanted.contains(a));
    }
    let pipelines = values("imagePipelineArn");
    if !pipelines.is_empty() {
        let mut of_pipelines = Vec::new();
        for p in &pipelines {
            for e in c.server.store().pipeline_executions(p).await.map_err(internal)? {
                of_pipelines.push(e.image_arn);
            }
        }
        own.retain(|a| of_pipelines.contains(a));
    }
    if own.is_empty() {
        return Ok(page.output("findings", Vec::new()));
    }
    let filter = FindingFilter {
        image_arns: own,
        vulnerability_ids: values("vulnerabilityId"),
        severities: values("severity"),
        after: None,
        limit: None,
    };
    let findings = c.server.store().list_scan_findings(&filter).await.map_err(internal)?;
    Ok(page.output("findings", findings.into_iter().map(|f| f.body).collect()))
}
