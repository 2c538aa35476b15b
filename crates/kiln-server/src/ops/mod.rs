//! The operations: dispatch by name, and what they share (reading members, ARNs, owners,
//! pagination, client tokens, dates).

mod catalog;
mod images;
mod lifecycle;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_api::ApiError;
use kiln_api::server::{Call, not_implemented};
use kiln_store::{StoreError, Tags};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{REGION, Server};

pub(crate) use catalog::resource_file_for;
pub(crate) use images::start_pipeline_execution;
pub(crate) use lifecycle::stored_policy;

/// Resource kinds as they appear in ARNs.
pub(crate) const COMPONENT: &str = "component";
pub(crate) const RECIPE: &str = "image-recipe";
pub(crate) const INFRASTRUCTURE: &str = "infrastructure-configuration";
pub(crate) const DISTRIBUTION: &str = "distribution-configuration";
pub(crate) const PIPELINE: &str = "image-pipeline";
pub(crate) const LIFECYCLE: &str = "lifecycle-policy";

const DEFAULT_PAGE: usize = 25;

pub(crate) async fn dispatch(server: &Server, call: Call) -> Result<Value, ApiError> {
    let mut output = run(server, &call).await?;
    // Every output shape but the tag operations' has `requestId`.
    if !matches!(call.operation.name, "TagResource" | "UntagResource" | "ListTagsForResource") {
        if let Some(object) = output.as_object_mut() {
            object.insert("requestId".into(), Value::String(request_id()));
        }
    }
    Ok(output)
}

/// A request id for the body's `requestId` (unique within the process).
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = OffsetDateTime::now_utc().unix_timestamp_nanos() as u128;
    format!("{:016x}-{n:08x}", t & u128::from(u64::MAX))
}

async fn run(server: &Server, call: &Call) -> Result<Value, ApiError> {
    let c = Ctx { server, call };
    match call.operation.name {
        "CreateComponent" => c.idempotent(|| catalog::create_component(&c)).await,
        "GetComponent" => catalog::get_component(&c).await,
        "ListComponents" => catalog::list_components(&c).await,
        "ListComponentBuildVersions" => catalog::list_component_build_versions(&c).await,
        "DeleteComponent" => catalog::delete_component(&c).await,
        "CreateImageRecipe" => c.idempotent(|| catalog::create_recipe(&c)).await,
        "GetImageRecipe" => catalog::get(&c, RECIPE, "imageRecipeArn", "imageRecipe").await,
        "ListImageRecipes" => catalog::list_recipes(&c).await,
        "DeleteImageRecipe" => catalog::delete(&c, RECIPE, "imageRecipeArn").await,
        "CreateInfrastructureConfiguration" => c.idempotent(|| catalog::put_infrastructure(&c, None)).await,
        "UpdateInfrastructureConfiguration" => {
            c.idempotent(|| catalog::put_infrastructure(&c, Some("infrastructureConfigurationArn"))).await
        }
        "GetInfrastructureConfiguration" => {
            catalog::get(&c, INFRASTRUCTURE, "infrastructureConfigurationArn", "infrastructureConfiguration")
                .await
        }
        "ListInfrastructureConfigurations" => catalog::list_infrastructure(&c).await,
        "DeleteInfrastructureConfiguration" => {
            catalog::delete(&c, INFRASTRUCTURE, "infrastructureConfigurationArn").await
        }
        "CreateDistributionConfiguration" => c.idempotent(|| catalog::put_distribution(&c, None)).await,
        "UpdateDistributionConfiguration" => {
            c.idempotent(|| catalog::put_distribution(&c, Some("distributionConfigurationArn"))).await
        }
        "GetDistributionConfiguration" => {
            catalog::get(&c, DISTRIBUTION, "distributionConfigurationArn", "distributionConfiguration").await
        }
        "ListDistributionConfigurations" => catalog::list_distribution(&c).await,
        "DeleteDistributionConfiguration" => {
            catalog::delete(&c, DISTRIBUTION, "distributionConfigurationArn").await
        }
        "CreateImagePipeline" => c.idempotent(|| catalog::put_pipeline(&c, None)).await,
        "UpdateImagePipeline" => c.idempotent(|| catalog::put_pipeline(&c, Some("imagePipelineArn"))).await,
        "GetImagePipeline" => catalog::get(&c, PIPELINE, "imagePipelineArn", "imagePipeline").await,
        "ListImagePipelines" => catalog::list_pipelines(&c).await,
        "DeleteImagePipeline" => catalog::delete(&c, PIPELINE, "imagePipelineArn").await,
        "TagResource" => catalog::tag_resource(&c).await,
        "UntagResource" => catalog::untag_resource(&c).await,
        "ListTagsForResource" => catalog::list_tags(&c).await,
        "GetImage" => images::get_image(&c).await,
        "ListImages" => images::list_images(&c).await,
        "ListImageBuildVersions" => images::list_image_build_versions(&c).await,
        "ListImagePipelineImages" => images::list_pipeline_images(&c).await,
        "DeleteImage" => images::delete_image(&c).await,
        "CancelImageCreation" => c.idempotent(|| images::cancel_image_creation(&c)).await,
        "StartImagePipelineExecution" => c.idempotent(|| images::start_execution(&c)).await,
        "CreateImage" => c.idempotent(|| images::create_image(&c)).await,
        "CreateLifecyclePolicy" => c.idempotent(|| lifecycle::create_policy(&c)).await,
        "GetLifecyclePolicy" => catalog::get(&c, LIFECYCLE, "lifecyclePolicyArn", "lifecyclePolicy").await,
        "ListLifecyclePolicies" => lifecycle::list_policies(&c).await,
        "UpdateLifecyclePolicy" => c.idempotent(|| lifecycle::update_policy(&c)).await,
        "DeleteLifecyclePolicy" => lifecycle::delete_policy(&c).await,
        "GetLifecycleExecution" => lifecycle::get_execution(&c).await,
        "ListLifecycleExecutions" => lifecycle::list_executions(&c).await,
        "ListLifecycleExecutionResources" => lifecycle::list_execution_resources(&c).await,
        "CancelLifecycleExecution" => c.idempotent(|| lifecycle::cancel_execution(&c)).await,
        "ListImageScanFindings" => images::list_scan_findings(&c).await,
        "GetImageLogs" => images::get_image_logs(&c).await,
        _ => Err(not_implemented(call.operation)),
    }
}

/// One call being carried out.
pub(crate) struct Ctx<'a> {
    pub server: &'a Server,
    pub call: &'a Call,
}

impl Ctx<'_> {
    pub fn account(&self) -> &str {
        &self.call.caller.account_id
    }

    pub fn input(&self) -> &Value {
        &self.call.input
    }

    /// A string member, if present.
    pub fn opt_str(&self, name: &str) -> Result<Option<String>, ApiError> {
        opt_str(self.input(), name)
    }

    /// A required string member.
    pub fn req_str(&self, name: &str) -> Result<String, ApiError> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    /// A boolean member, if present.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.input().get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => {
                Err(ApiError::InvalidParameterValue(format!("The value of {name} must be a boolean.")))
            }
        }
    }

    /// A TagMap member (`tags`, `imageTags`...).
    pub fn tags(&self, name: &str) -> Result<Tags, ApiError> {
        tags_of(self.input().get(name), name)
    }

    /// Refuses `dryRun: true`: kiln has no dry runs, and ignoring one would create the resource.
    pub fn no_dry_run(&self) -> Result<(), ApiError> {
        if self.opt_bool("dryRun")? == Some(true) {
            return Err(ApiError::InvalidParameterValue("kiln does not support dryRun.".into()));
        }
        Ok(())
    }

    /// Runs a create or update under its `clientToken`: the same token with the same request
    /// answers the first response again; with another request, IdempotentParameterMismatch.
    pub async fn idempotent<F, Fut>(&self, run: F) -> Result<Value, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Value, ApiError>>,
    {
        let Some(token) = self.opt_str("clientToken")? else {
            return run().await;
        };
        if token.is_empty() || token.len() > 64 {
            return Err(ApiError::InvalidParameterValue("clientToken must be 1 to 64 characters.".into()));
        }
        let mut request = self.input().clone();
        if let Some(object) = request.as_object_mut() {
            object.remove("clientToken");
        }
        let hash = hex::encode(Sha256::digest(canonical(&request).as_bytes()));
        let operation = self.call.operation.name;
        let store = self.server.store();
        let mismatch = || {
            ApiError::IdempotentParameterMismatch(format!(
                "The client token {token} was used for a different {operation} request."
            ))
        };
        if let Some(seen) = store.client_token(self.account(), operation, &token).await.map_err(internal)? {
            return if seen.request_hash == hash { Ok(seen.response) } else { Err(mismatch()) };
        }
        let mut response = run().await?;
        if let Some(object) = response.as_object_mut() {
            object.insert("clientToken".into(), Value::String(token.clone()));
        }
        let record = kiln_store::ClientTokenRecord { request_hash: hash.clone(), response };
        let kept =
            store.record_client_token(self.account(), operation, &token, &record).await.map_err(internal)?;
        if kept.request_hash != hash {
            return Err(mismatch());
        }
        Ok(kept.response)
    }

    /// `maxResults` and the offset from `nextToken`, checked against this query.
    pub fn page(&self) -> Result<Page, ApiError> {
        let max = match self.input().get("maxResults") {
            None | Some(Value::Null) => DEFAULT_PAGE,
            Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                Some(n @ 1..=100) => n as usize,
                _ => {
                    return Err(ApiError::InvalidParameterValue(
                        "maxResults must be an integer from 1 to 100.".into(),
                    ));
                }
            },
        };
        let mut query = self.input().clone();
        if let Some(object) = query.as_object_mut() {
            object.remove("nextToken");
            object.remove("maxResults");
        }
        let fingerprint = hex::encode(
            &Sha256::digest(
                format!("{}\n{}\n{}", self.call.operation.name, self.account(), canonical(&query)).as_bytes(),
            )[..8],
        );
        let offset = match self.opt_str("nextToken")? {
            None => 0,
            Some(token) => {
                let bad = || {
                    ApiError::InvalidPaginationToken(
                        "The nextToken was not issued by kiln for this request.".into(),
                    )
                };
                let text = URL_SAFE_NO_PAD.decode(token.as_bytes()).map_err(|_| bad())?;
                let text = String::from_utf8(text).map_err(|_| bad())?;
                let (print, offset) = text.split_once(':').ok_or_else(bad)?;
                if print != fingerprint {
                    return Err(bad());
                }
                offset.parse().map_err(|_| bad())?
            }
        };
        Ok(Page { max, offset, fingerprint })
    }

    /// The `filters` member as (name, values), each name one of `known`.
    pub fn filters(&self, known: &[&str]) -> Result<Vec<(String, Vec<String>)>, ApiError> {
        let Some(list) = self.input().get("filters").filter(|v| !v.is_null()) else {
            return Ok(Vec::new());
        };
        let list = list
            .as_array()
            .ok_or_else(|| ApiError::InvalidParameterValue("filters must be a list.".into()))?;
        let mut out = Vec::new();
        for f in list {
            let name = opt_str(f, "name")?.ok_or_else(|| missing("filters[].name"))?;
            if !known.contains(&name.as_str()) {
                return Err(ApiError::InvalidParameterValue(format!(
                    "Unsupported filter name {name}; this operation filters on {}.",
                    known.join(", ")
                )));
            }
            let values = strings(f.get("values"), "filters[].values")?;
            out.push((name, values));
        }
        Ok(out)
    }

    /// The `owner` member: only `Self` (the default) lists anything, since kiln has no
    /// Amazon-owned, shared or marketplace resources in these lists.
    pub fn owner_is_self(&self) -> Result<bool, ApiError> {
        match self.opt_str("owner")?.as_deref() {
            None | Some("Self") => Ok(true),
            Some("Shared" | "Amazon" | "ThirdParty" | "AWSMarketplace") => Ok(false),
            Some(other) => Err(ApiError::InvalidParameterValue(format!("Unknown owner {other}."))),
        }
    }

    /// The resource of `kind` at the ARN in member `member`, owned by the caller.
    pub async fn owned(&self, kind: &str, member: &str) -> Result<kiln_store::ApiResource, ApiError> {
        let arn = self.req_str(member)?;
        self.owned_arn(kind, &arn).await
    }

    pub async fn owned_arn(&self, kind: &str, arn: &str) -> Result<kiln_store::ApiResource, ApiError> {
        owned_arn(self.server, self.account(), kind, arn).await
    }
}

/// The resource of `kind` at `arn`, owned by `account`.
pub(crate) async fn owned_arn(
    server: &Server,
    account: &str,
    kind: &str,
    arn: &str,
) -> Result<kiln_store::ApiResource, ApiError> {
    let parsed = kiln_model::Arn::parse(arn)
        .ok_or_else(|| ApiError::InvalidParameterValue(format!("{arn} is not an Image Builder ARN.")))?;
    if parsed.resource_type != kind {
        return Err(ApiError::InvalidParameterValue(format!("{arn} is not a {kind} ARN.")));
    }
    let found = server.store().get_api_resource(arn).await.map_err(internal)?;
    match found {
        Some(r) if r.kind == kind && r.account == account => Ok(r),
        _ => Err(ApiError::ResourceNotFound(format!("The {kind} {arn} does not exist."))),
    }
}

/// A page request: at most `max` items from `offset`.
pub(crate) struct Page {
    pub max: usize,
    pub offset: usize,
    fingerprint: String,
}

impl Page {
    /// The page of `items`, and the token of the next one.
    pub fn cut<T>(&self, items: Vec<T>) -> (Vec<T>, Option<String>) {
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(self.offset).take(self.max).collect();
        let end = self.offset.saturating_add(page.len());
        let next = (end < total).then(|| URL_SAFE_NO_PAD.encode(format!("{}:{end}", self.fingerprint)));
        (page, next)
    }

    /// `{list_member: page, nextToken?}`.
    pub fn output(&self, list_member: &str, items: Vec<Value>) -> Value {
        let (page, next) = self.cut(items);
        let mut out = Map::new();
        out.insert(list_member.into(), Value::Array(page));
        if let Some(next) = next {
            out.insert("nextToken".into(), Value::String(next));
        }
        Value::Object(out)
    }
}

/// Whether a value passes the (name, values) filters, `field` giving the value of a name.
pub(crate) fn passes(filters: &[(String, Vec<String>)], field: impl Fn(&str) -> Option<String>) -> bool {
    filters.iter().all(|(name, values)| field(name).is_some_and(|v| values.contains(&v)))
}

pub(crate) fn opt_str(input: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::InvalidParameterValue(format!("The value of {name} must be a string."))),
    }
}

pub(crate) fn missing(name: &str) -> ApiError {
    ApiError::InvalidRequest(format!("The request is missing the required member {name}."))
}

pub(crate) fn strings(value: Option<&Value>, name: &str) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::InvalidParameterValue(format!("{name} must be a list of strings."))
                })
            })
            .collect(),
        Some(_) => Err(ApiError::InvalidParameterValue(format!("{name} must be a list of strings."))),
    }
}

/// A TagMap, with Image Builder's limits (50 tags, keys 1-128, values up to 256 characters).
pub(crate) fn tags_of(value: Option<&Value>, name: &str) -> Result<Tags, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(Tags::new()) };
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::InvalidParameterValue(format!("{name} must be a map of strings.")))?;
    if object.len() > 50 {
        return Err(ApiError::InvalidParameterValue(format!("{name} has more than 50 tags.")));
    }
    let mut tags = Tags::new();
    for (k, v) in object {
        let v = v.as_str().ok_or_else(|| {
            ApiError::InvalidParameterValue(format!("The tag {k} of {name} is not a string."))
        })?;
        check_tag_key(k)?;
        if v.chars().count() > 256 {
            return Err(ApiError::InvalidParameterValue(format!(
                "The value of tag {k} is over 256 characters."
            )));
        }
        tags.insert(k.clone(), v.to_owned());
    }
    Ok(tags)
}

pub(crate) fn check_tag_key(k: &str) -> Result<(), ApiError> {
    if k.is_empty() || k.chars().count() > 128 || k.starts_with("aws:") {
        return Err(ApiError::InvalidParameterValue(format!(
            "The tag key {k:?} is not valid: 1 to 128 characters, not starting with aws:."
        )));
    }
    Ok(())
}

/// JSON text with object keys sorted, so equal requests hash equally.
pub(crate) fn canonical(value: &Value) -> String {
    fn sort(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&map[k]))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

/// `arn:aws:imagebuilder:local:ACCOUNT:KIND/NAME[/VERSION[/BUILD]]`.
pub(crate) fn arn(
    account: &str,
    kind: &str,
    name: &str,
    version: Option<&str>,
    build: Option<u32>,
) -> String {
    let mut out = format!("arn:aws:imagebuilder:{REGION}:{account}:{kind}/{name}");
    if let Some(v) = version {
        out.push('/');
        out.push_str(v);
        if let Some(b) = build {
            out.push_str(&format!("/{b}"));
        }
    }
    out
}

/// Image Builder's resource names: 3 to 128 of letters, digits, `-`, `_` and inner spaces.
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    let ok_edge = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let len = name.chars().count();
    let valid = (3..=128).contains(&len)
        && name.chars().all(|c| ok_edge(c) || c == ' ')
        && name.chars().next().is_some_and(ok_edge)
        && name.chars().last().is_some_and(ok_edge);
    if valid {
        Ok(())
    } else {
        Err(ApiError::InvalidParameterValue(format!(
            "The name {name:?} is not valid: 3 to 128 letters, digits, hyphens, underscores or inner spaces."
        )))
    }
}

/// A semantic version as Image Builder requires it on create (`1.2.3`, no wildcard).
pub(crate) fn check_version(text: &str) -> Result<kiln_store::Version, ApiError> {
    kiln_store::Version::parse(text).map_err(|e| {
        ApiError::InvalidVersionNumber(format!(
            "The semantic version {text:?} is not valid: {e}. Use MAJOR.MINOR.PATCH, such as 1.0.0."
        ))
    })
}

/// The date format of the API's `DateTime` strings.
pub(crate) fn date(t: OffsetDateTime) -> Value {
    Value::String(t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())
}

/// A store failure the caller cannot fix: logged, answered as ServiceException.
pub(crate) fn internal(e: StoreError) -> ApiError {
    tracing::error!("store: {e}");
    ApiError::Service(format!("kiln could not complete the request: {e}"))
}

/// Copies the listed members of the input that are present.
pub(crate) fn copy_members(input: &Value, members: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for m in members {
        if let Some(v) = input.get(*m).filter(|v| !v.is_null()) {
            out.insert((*m).to_owned(), v.clone());
        }
    }
    out
}

pub(crate) fn tags_value(tags: &Tags) -> Value {
    json!(tags)
}
