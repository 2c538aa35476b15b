//! Components, image recipes, infrastructure and distribution configurations, image pipelines
//! and tags.

use kiln_api::ApiError;
use kiln_store::{ApiResource, ComponentSource, NewComponent, StoreError, Tags, Version, VersionFilter};
use serde_json::{Map, Value, json};

use super::{
    COMPONENT, Ctx, DISTRIBUTION, INFRASTRUCTURE, LIFECYCLE, PIPELINE, RECIPE, arn, check_name,
    check_tag_key, check_version, copy_members, date, internal, passes, strings, tags_of, tags_value,
};

/// The largest inline component document the model allows.
const MAX_DATA: usize = 16_000;

// ---- components ------------------------------------------------------------------------

pub(super) async fn create_component(c: &Ctx<'_>) -> Result<Value, ApiError> {
    c.no_dry_run()?;
    let name = c.req_str("name")?;
    check_name(&name)?;
    if name.starts_with("kiln-") {
        return Err(ApiError::InvalidParameterValue(
            "Component names starting with kiln- are reserved for kiln's built-in components.".into(),
        ));
    }
    let version = check_version(&c.req_str("semanticVersion")?)?;
    let platform = c.opt_str("platform")?.unwrap_or_else(|| "Linux".into());
    if platform != "Linux" {
        return Err(ApiError::InvalidParameterValue(format!(
            "Platform {platform} is not supported: kiln builds Linux images."
        )));
    }
    let document = match (c.opt_str("data")?, c.opt_str("uri")?) {
        (Some(data), None) => {
            if data.is_empty() || data.chars().count() > MAX_DATA {
                return Err(ApiError::InvalidParameterValue(format!(
                    "data must be 1 to {MAX_DATA} characters; give a larger document with uri."
                )));
            }
            data
        }
        (None, Some(uri)) => read_uri(&uri)?,
        _ => {
            return Err(ApiError::InvalidParameterCombination(
                "Give exactly one of data (the document inline) and uri.".into(),
            ));
        }
    };
    let origin = format!("{name}/{version}");
    if let Err(diags) = kiln_component::document::parse_document(&origin, &document) {
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        return Err(ApiError::InvalidParameterValue(format!(
            "The component document is not valid: {}",
            text.join("; ")
        )));
    }
    let tags = c.tags("tags")?;
    let description = c.opt_str("description")?;
    let build_arn = arn(c.account(), COMPONENT, &name, Some(&version.to_string()), Some(1));
    let store = c.server.store();
    store
        .create_component(&NewComponent {
            name: name.clone(),
            version,
            platform: platform.clone(),
            description: description.clone().unwrap_or_default(),
            document: document.clone(),
            source: ComponentSource::Api,
            tags: tags.clone(),
        })
        .await
        .map_err(|e| match e {
            StoreError::ComponentExists { .. } => ApiError::ResourceAlreadyExists(format!(
                "The component {name} version {version} already exists; components are immutable, create a new version."
            )),
            e => internal(e),
        })?;
    let now = time::OffsetDateTime::now_utc();
    let mut body =
        copy_members(c.input(), &["description", "changeDescription", "supportedOsVersions", "kmsKeyId"]);
    body.extend([
        ("arn".into(), json!(build_arn)),
        ("name".into(), json!(name)),
        ("version".into(), json!(version.to_string())),
        ("type".into(), json!("BUILD")),
        ("platform".into(), json!(platform)),
        ("state".into(), json!({ "status": "ACTIVE" })),
        ("owner".into(), json!(c.account())),
        ("data".into(), json!(document)),
        ("encrypted".into(), json!(false)),
        ("dateCreated".into(), date(now)),
    ]);
    let resource = ApiResource {
        arn: build_arn.clone(),
        kind: COMPONENT.into(),
        name: name.clone(),
        version: Some(version.to_string()),
        account: c.account().to_owned(),
        body: Value::Object(body),
        tags,
        created_at: now,
        updated_at: now,
    };
    if let Err(e) = store.create_api_resource(&resource).await {
        let _ = store.delete_component(&name, &version).await;
        return Err(match e {
            StoreError::ApiResourceExists { arn } => {
                ApiError::ResourceAlreadyExists(format!("{arn} already exists."))
            }
            e => internal(e),
        });
    }
    Ok(json!({ "componentBuildVersionArn": build_arn }))
}

/// A component document from `file:///path` or an absolute path on the server.
fn read_uri(uri: &str) -> Result<String, ApiError> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if !path.starts_with('/') {
        return Err(ApiError::InvalidParameterValue(format!(
            "uri {uri} is not a file:///absolute/path on the kiln server (kiln reads no s3:// or http URLs)."
        )));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 1024 * 1024 => {
            return Err(ApiError::InvalidParameterValue(format!("{uri} is larger than 1 MiB.")));
        }
        Ok(m) if !m.is_file() => {
            return Err(ApiError::InvalidParameterValue(format!("{uri} is not a file.")));
        }
        _ => {}
    }
    std::fs::read_to_string(path)
        .map_err(|e| ApiError::InvalidParameterValue(format!("The server cannot read {uri}: {e}.")))
}

/// A component ARN with or without its build number, to the stored (build) ARN.
fn component_build_arn(arn: &str) -> String {
    match kiln_model::Arn::parse(arn) {
        Some(a) if a.resource_type == COMPONENT && a.build.is_none() && a.version.is_some() => {
            format!("{arn}/1")
        }
        _ => arn.to_owned(),
    }
}

pub(super) async fn get_component(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let arn = component_build_arn(&c.req_str("componentBuildVersionArn")?);
    let r = c.owned_arn(COMPONENT, &arn).await?;
    Ok(json!({ "component": with_tags(&r) }))
}

fn with_tags(r: &ApiResource) -> Value {
    let mut body = r.body.clone();
    if let Some(o) = body.as_object_mut() {
        o.insert("tags".into(), tags_value(&r.tags));
    }
    body
}

/// `(name, version)` order with versions compared numerically.
fn by_name_version(rs: &mut [ApiResource]) {
    rs.sort_by(|a, b| {
        let va = a.version.as_deref().and_then(|v| Version::parse(v).ok());
        let vb = b.version.as_deref().and_then(|v| Version::parse(v).ok());
        a.name.cmp(&b.name).then(va.cmp(&vb))
    });
}

fn field(r: &ApiResource, name: &str) -> Option<String> {
    match name {
        "name" => Some(r.name.clone()),
        "version" => r.version.clone(),
        other => r.body.get(other).and_then(Value::as_str).map(str::to_owned),
    }
}

pub(super) async fn list_components(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let filters = c.filters(&["name", "platform", "supportedOsVersion", "type", "version"])?;
    let mut rs = if c.owner_is_self()? {
        c.server.store().list_api_resources(COMPONENT, Some(c.account())).await.map_err(internal)?
    } else {
        Vec::new()
    };
    rs.retain(|r| passes(&filters, |f| field(r, f)));
    by_name_version(&mut rs);
    if c.opt_bool("byName")? == Some(true) {
        // The newest version of each name.
        let mut latest: Vec<ApiResource> = Vec::new();
        for r in rs {
            match latest.last_mut() {
                Some(last) if last.name == r.name => *last = r,
                _ => latest.push(r),
            }
        }
        rs = latest;
    }
    let items = rs
        .iter()
        .map(|r| {
            let mut v = summary(
                r,
                &[
                    "name",
                    "version",
                    "description",
                    "platform",
                    "supportedOsVersions",
                    "type",
                    "owner",
                    "dateCreated",
                ],
            );
            v.insert("arn".into(), json!(arn(&r.account, COMPONENT, &r.name, r.version.as_deref(), None)));
            v.insert("status".into(), json!("ACTIVE"));
            Value::Object(v)
        })
        .collect();
    Ok(page.output("componentVersionList", items))
}

fn summary(r: &ApiResource, members: &[&str]) -> Map<String, Value> {
    let mut v = copy_members(&r.body, members);
    v.insert("arn".into(), json!(r.arn));
    v
}

pub(super) async fn list_component_build_versions(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let version_arn = c.req_str("componentVersionArn")?;
    let parsed = kiln_model::Arn::parse(&version_arn)
        .filter(|a| a.resource_type == COMPONENT && a.build.is_none())
        .ok_or_else(|| {
            ApiError::InvalidParameterValue(format!("{version_arn} is not a component version ARN."))
        })?;
    let filter = VersionFilter::parse(parsed.version.as_deref().unwrap_or("x.x.x"))
        .map_err(|e| ApiError::InvalidVersionNumber(e.to_string()))?;
    let mut rs = c.server.store().list_api_resources(COMPONENT, Some(c.account())).await.map_err(internal)?;
    rs.retain(|r| {
        r.name == parsed.name
            && r.version.as_deref().and_then(|v| Version::parse(v).ok()).is_some_and(|v| filter.matches(&v))
    });
    by_name_version(&mut rs);
    let items = rs
        .iter()
        .map(|r| {
            let mut v = summary(
                r,
                &[
                    "name",
                    "version",
                    "platform",
                    "supportedOsVersions",
                    "state",
                    "type",
                    "owner",
                    "description",
                    "changeDescription",
                    "dateCreated",
                ],
            );
            v.insert("tags".into(), tags_value(&r.tags));
            Value::Object(v)
        })
        .collect();
    Ok(page.output("componentSummaryList", items))
}

pub(super) async fn delete_component(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let arn = c.req_str("componentBuildVersionArn")?;
    let r = c.owned_arn(COMPONENT, &arn).await?;
    let version = r.version.as_deref().and_then(|v| Version::parse(v).ok());
    let store = c.server.store();
    for recipe in store.list_api_resources(RECIPE, Some(c.account())).await.map_err(internal)? {
        let uses = recipe.body["components"].as_array().into_iter().flatten().any(|cc| {
            cc["componentArn"].as_str().and_then(kiln_model::Arn::parse).is_some_and(|a| {
                a.name == r.name
                    && a.version
                        .as_deref()
                        .and_then(|f| VersionFilter::parse(f).ok())
                        .zip(version)
                        .is_some_and(|(f, v)| f.matches(&v))
            })
        });
        if uses {
            return Err(ApiError::ResourceInUse(format!(
                "The component {arn} is used by the image recipe {}; delete the recipe first.",
                recipe.arn
            )));
        }
    }
    if let Some(v) = version {
        match store.delete_component(&r.name, &v).await {
            Ok(()) | Err(StoreError::ComponentNotFound { .. }) => {}
            Err(e) => return Err(internal(e)),
        }
    }
    store.delete_api_resource(&arn).await.map_err(internal)?;
    Ok(json!({ "componentBuildVersionArn": arn }))
}

// ---- image recipes ---------------------------------------------------------------------

pub(super) async fn create_recipe(c: &Ctx<'_>) -> Result<Value, ApiError> {
    c.no_dry_run()?;
    let name = c.req_str("name")?;
    check_name(&name)?;
    let version = check_version(&c.req_str("semanticVersion")?)?;
    let parent = c.req_str("parentImage")?;
    kiln_parent::ParentRef::parse(&parent).map_err(|e| {
        ApiError::InvalidParameterValue(format!(
            "parentImage {parent}: {e} (kiln's managed parents are debian-11-x86, debian-12-x86 and debian-13-x86, or their ARNs arn:aws:imagebuilder:local:kiln:image/debian-12-x86/x.x.x)"
        ))
    })?;
    let components = c.input().get("components").cloned().unwrap_or(Value::Null);
    let list = components.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        ApiError::InvalidParameterValue("components must list at least one component.".into())
    })?;
    let store = c.server.store();
    for (i, cc) in list.iter().enumerate() {
        let reference = super::opt_str(cc, "componentArn")?
            .ok_or_else(|| super::missing(&format!("components[{i}].componentArn")))?;
        let (cname, filter) = match kiln_model::Arn::parse(&reference) {
            Some(a) if a.resource_type == COMPONENT => (a.name, a.version.unwrap_or_else(|| "x.x.x".into())),
            _ => {
                return Err(ApiError::InvalidParameterValue(format!(
                    "components[{i}].componentArn {reference} is not a component ARN."
                )));
            }
        };
        let filter = VersionFilter::parse(&filter)
            .map_err(|e| ApiError::InvalidVersionNumber(format!("components[{i}].componentArn: {e}")))?;
        // Built-in components are registered by the build itself.
        if !cname.starts_with("kiln-") {
            store.resolve_component(&cname, &filter).await.map_err(|e| match e {
                StoreError::ComponentNotFound { .. } => {
                    ApiError::ResourceNotFound(format!("components[{i}].componentArn {reference}: {e}"))
                }
                e => internal(e),
            })?;
        }
    }
    let recipe_arn = arn(c.account(), RECIPE, &name, Some(&version.to_string()), None);
    let now = time::OffsetDateTime::now_utc();
    let mut body = copy_members(
        c.input(),
        &[
            "description",
            "components",
            "parentImage",
            "blockDeviceMappings",
            "workingDirectory",
            "additionalInstanceConfiguration",
            "amiTags",
        ],
    );
    body.extend([
        ("arn".into(), json!(recipe_arn)),
        ("type".into(), json!("AMI")),
        ("name".into(), json!(name)),
        ("platform".into(), json!("Linux")),
        ("owner".into(), json!(c.account())),
        ("version".into(), json!(version.to_string())),
        ("dateCreated".into(), date(now)),
    ]);
    let body = Value::Object(body);
    // Everything kiln's resource file checks (parameters' shapes, working directory...).
    check_resource_file(&resource_file_for(&body, None, None, None))?;
    let resource = ApiResource {
        arn: recipe_arn.clone(),
        kind: RECIPE.into(),
        name,
        version: Some(version.to_string()),
        account: c.account().to_owned(),
        body,
        tags: c.tags("tags")?,
        created_at: now,
        updated_at: now,
    };
    create_resource(c, &resource).await?;
    Ok(json!({ "imageRecipeArn": recipe_arn }))
}

pub(super) async fn create_resource(c: &Ctx<'_>, r: &ApiResource) -> Result<(), ApiError> {
    c.server.store().create_api_resource(r).await.map_err(|e| match e {
        StoreError::ApiResourceExists { arn } => ApiError::ResourceAlreadyExists(format!(
            "{arn} already exists; delete it first or choose another name{}.",
            if r.version.is_some() { " or version" } else { "" }
        )),
        e => internal(e),
    })
}

/// Stores a named, unversioned resource (an infrastructure or distribution configuration, a
/// pipeline) from `body`. An update (`update` names the ARN member) keeps the old ARN, name,
/// tags and the `keep` members of the old body; a create checks `name` and makes the ARN.
/// `check` sees the final body before anything is stored. Returns the ARN.
async fn save_named(
    c: &Ctx<'_>,
    kind: &str,
    update: Option<&str>,
    mut body: Map<String, Value>,
    keep: &[&str],
    check: impl Fn(&Value) -> Result<(), ApiError>,
) -> Result<String, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    match update {
        Some(member) => {
            let old = c.owned(kind, member).await?;
            for k in keep {
                if let Some(v) = old.body.get(*k).filter(|v| !v.is_null()) {
                    body.insert((*k).into(), v.clone());
                }
            }
            body.extend([
                ("arn".into(), json!(old.arn)),
                ("name".into(), json!(old.name)),
                ("dateUpdated".into(), date(now)),
            ]);
            let body = Value::Object(body);
            check(&body)?;
            c.server.store().update_api_resource(&old.arn, &body, &old.tags).await.map_err(internal)?;
            Ok(old.arn)
        }
        None => {
            let name = c.req_str("name")?;
            check_name(&name)?;
            let new_arn = arn(c.account(), kind, &name, None, None);
            body.extend([
                ("arn".into(), json!(new_arn)),
                ("name".into(), json!(name)),
                ("dateCreated".into(), date(now)),
            ]);
            let body = Value::Object(body);
            check(&body)?;
            let resource = ApiResource {
                arn: new_arn.clone(),
                kind: kind.into(),
                name,
                version: None,
                account: c.account().to_owned(),
                body,
                tags: c.tags("tags")?,
                created_at: now,
                updated_at: now,
            };
            create_resource(c, &resource).await?;
            Ok(new_arn)
        }
    }
}

pub(super) async fn list_recipes(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let filters = c.filters(&["name", "parentImage", "platform"])?;
    let mut rs = if c.owner_is_self()? {
        c.server.store().list_api_resources(RECIPE, Some(c.account())).await.map_err(internal)?
    } else {
        Vec::new()
    };
    rs.retain(|r| passes(&filters, |f| field(r, f)));
    by_name_version(&mut rs);
    let members = ["name", "platform", "owner", "parentImage", "dateCreated"];
    let items = rs.iter().map(|r| Value::Object(summary_with_tags(r, &members))).collect();
    Ok(page.output("imageRecipeSummaryList", items))
}

/// The account's stored resources of `kind` that pass the request's filters (`filter_names`
/// are the ones the operation accepts).
async fn filtered(c: &Ctx<'_>, kind: &str, filter_names: &[&str]) -> Result<Vec<ApiResource>, ApiError> {
    let filters = c.filters(filter_names)?;
    let mut rs = c.server.store().list_api_resources(kind, Some(c.account())).await.map_err(internal)?;
    rs.retain(|r| passes(&filters, |f| field(r, f)));
    Ok(rs)
}

/// A list item: the `members` of a resource's body, and its tags.
fn summary_with_tags(r: &ApiResource, members: &[&str]) -> Map<String, Value> {
    let mut v = summary(r, members);
    v.insert("tags".into(), tags_value(&r.tags));
    v
}

// ---- infrastructure configurations -----------------------------------------------------

const INFRASTRUCTURE_MEMBERS: &[&str] = &[
    "description",
    "instanceTypes",
    "instanceProfileName",
    "securityGroupIds",
    "subnetId",
    "logging",
    "keyPair",
    "terminateInstanceOnFailure",
    "terminateInstanceOnCompletion",
    "snsTopicArn",
    "resourceTags",
    "instanceMetadataOptions",
    "placement",
    "parentInstance",
];

/// Create (`update` None) or update (`update` names the ARN member) an infrastructure
/// configuration. Only `instanceProfileName` is required by the model; kiln records it.
pub(super) async fn put_infrastructure(c: &Ctx<'_>, update: Option<&str>) -> Result<Value, ApiError> {
    c.no_dry_run()?;
    c.req_str("instanceProfileName")?;
    tags_of(c.input().get("resourceTags"), "resourceTags")?;
    let body = copy_members(c.input(), INFRASTRUCTURE_MEMBERS);
    let config_arn = save_named(c, INFRASTRUCTURE, update, body, &["dateCreated"], |_| Ok(())).await?;
    Ok(json!({ "infrastructureConfigurationArn": config_arn }))
}

pub(super) async fn list_infrastructure(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let members = [
        "name",
        "description",
        "dateCreated",
        "dateUpdated",
        "resourceTags",
        "instanceTypes",
        "instanceProfileName",
        "placement",
    ];
    let rs = filtered(c, INFRASTRUCTURE, &["name"]).await?;
    let items = rs.iter().map(|r| Value::Object(summary_with_tags(r, &members))).collect();
    Ok(page.output("infrastructureConfigurationSummaryList", items))
}

// ---- distribution configurations -------------------------------------------------------

/// Members of a `Distribution` kiln does not carry out; refused rather than ignored.
const UNSUPPORTED_DISTRIBUTION: &[&str] = &[
    "containerDistributionConfiguration",
    "licenseConfigurationArns",
    "launchTemplateConfigurations",
    "s3ExportConfiguration",
    "fastLaunchConfigurations",
    "ssmParameterConfigurations",
];

pub(super) async fn put_distribution(c: &Ctx<'_>, update: Option<&str>) -> Result<Value, ApiError> {
    c.no_dry_run()?;
    let distributions = c.input().get("distributions").cloned().unwrap_or(Value::Null);
    let list = distributions.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        ApiError::InvalidParameterValue("distributions must list at least one region.".into())
    })?;
    for (i, d) in list.iter().enumerate() {
        super::opt_str(d, "region")?.ok_or_else(|| super::missing(&format!("distributions[{i}].region")))?;
        if let Some(m) = UNSUPPORTED_DISTRIBUTION.iter().find(|m| d.get(**m).is_some_and(|v| !v.is_null())) {
            return Err(ApiError::InvalidParameterValue(format!(
                "distributions[{i}].{m} is not supported by kiln (it distributes disk images with amiDistributionConfiguration)."
            )));
        }
    }
    let mut body = copy_members(c.input(), &["description", "distributions"]);
    body.insert("timeoutMinutes".into(), json!(720));
    let check =
        |body: &Value| check_resource_file(&resource_file_for(&placeholder_recipe(), None, Some(body), None));
    let config_arn = save_named(c, DISTRIBUTION, update, body, &["dateCreated"], check).await?;
    Ok(json!({ "distributionConfigurationArn": config_arn }))
}

/// A recipe that passes the resource file's checks, to check a configuration alone.
fn placeholder_recipe() -> Value {
    json!({ "name": "check", "version": "1.0.0", "parentImage": "debian-12-x86",
            "components": [{ "componentArn": "arn:aws:imagebuilder:local:kiln:component/check/1.0.0" }] })
}

pub(super) async fn list_distribution(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let rs = filtered(c, DISTRIBUTION, &["name"]).await?;
    let items = rs
        .iter()
        .map(|r| {
            let mut v = summary_with_tags(r, &["name", "description", "dateCreated", "dateUpdated"]);
            let regions: Vec<Value> = r.body["distributions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d["region"].clone())
                .collect();
            v.insert("regions".into(), Value::Array(regions));
            Value::Object(v)
        })
        .collect();
    Ok(page.output("distributionConfigurationSummaryList", items))
}

// ---- image pipelines -------------------------------------------------------------------

pub(super) async fn put_pipeline(c: &Ctx<'_>, update: Option<&str>) -> Result<Value, ApiError> {
    c.no_dry_run()?;
    if c.opt_str("containerRecipeArn")?.is_some() {
        return Err(ApiError::InvalidParameterValue(
            "kiln builds no container images: give imageRecipeArn.".into(),
        ));
    }
    let recipe_arn = c.req_str("imageRecipeArn")?;
    c.owned_arn(RECIPE, &recipe_arn).await?;
    let infra_arn = c.req_str("infrastructureConfigurationArn")?;
    c.owned_arn(INFRASTRUCTURE, &infra_arn).await?;
    if let Some(dist_arn) = c.opt_str("distributionConfigurationArn")? {
        c.owned_arn(DISTRIBUTION, &dist_arn).await?;
    }
    let status = c.opt_str("status")?.unwrap_or_else(|| "ENABLED".into());
    if status != "ENABLED" && status != "DISABLED" {
        return Err(ApiError::InvalidParameterValue(format!("status {status} is not ENABLED or DISABLED.")));
    }
    if let Some(schedule) = c.input().get("schedule").filter(|v| !v.is_null()) {
        // The scheduler's own reading, so a stored schedule is one it can run.
        kiln_build::schedule::PipelineSchedule::parse(
            super::opt_str(schedule, "scheduleExpression")?.as_deref(),
            super::opt_str(schedule, "timezone")?.as_deref(),
            super::opt_str(schedule, "pipelineExecutionStartCondition")?.as_deref(),
            &Default::default(),
        )
        .map_err(|e| ApiError::InvalidParameterValue(e.to_string()))?;
    }
    c.tags("imageTags")?;
    let mut body = copy_members(
        c.input(),
        &[
            "description",
            "imageRecipeArn",
            "infrastructureConfigurationArn",
            "distributionConfigurationArn",
            "imageTestsConfiguration",
            "schedule",
            "imageScanningConfiguration",
            "imageTags",
            "executionRole",
            "workflows",
            "loggingConfiguration",
        ],
    );
    body.insert("platform".into(), json!("Linux"));
    body.insert("status".into(), json!(status));
    body.insert(
        "enhancedImageMetadataEnabled".into(),
        json!(c.opt_bool("enhancedImageMetadataEnabled")?.unwrap_or(true)),
    );
    let keep = ["dateCreated", "dateLastRun", "lastRunStatus"];
    let pipeline_arn = save_named(c, PIPELINE, update, body, &keep, |_| Ok(())).await?;
    Ok(json!({ "imagePipelineArn": pipeline_arn }))
}

pub(super) async fn list_pipelines(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let page = c.page()?;
    let rs = filtered(c, PIPELINE, &["name", "status"]).await?;
    Ok(page.output("imagePipelineList", rs.iter().map(with_tags).collect()))
}

// ---- shared Get and Delete ---------------------------------------------------------------

/// `Get*` of a stored resource: `{output_member: body with tags}`.
pub(super) async fn get(
    c: &Ctx<'_>,
    kind: &str,
    member: &str,
    output_member: &str,
) -> Result<Value, ApiError> {
    let r = c.owned(kind, member).await?;
    let mut out = Map::new();
    out.insert(output_member.into(), with_tags(&r));
    Ok(Value::Object(out))
}

/// `Delete*` of a recipe, configuration or pipeline; refused while a pipeline uses it.
pub(super) async fn delete(c: &Ctx<'_>, kind: &str, member: &str) -> Result<Value, ApiError> {
    let r = c.owned(kind, member).await?;
    let store = c.server.store();
    let reference = match kind {
        RECIPE => Some("imageRecipeArn"),
        INFRASTRUCTURE => Some("infrastructureConfigurationArn"),
        DISTRIBUTION => Some("distributionConfigurationArn"),
        _ => None,
    };
    if let Some(reference) = reference {
        for p in store.list_api_resources(PIPELINE, Some(c.account())).await.map_err(internal)? {
            if p.body[reference].as_str() == Some(r.arn.as_str()) {
                return Err(ApiError::ResourceInUse(format!(
                    "The {kind} {} is used by the image pipeline {}; delete or update the pipeline first.",
                    r.arn, p.arn
                )));
            }
        }
    }
    store.delete_api_resource(&r.arn).await.map_err(internal)?;
    let mut out = Map::new();
    out.insert(member.into(), json!(r.arn));
    Ok(Value::Object(out))
}

// ---- tags ------------------------------------------------------------------------------

/// Where a resource's tags live.
enum Tagged {
    Image(kiln_store::Image),
    Resource(ApiResource),
}

async fn tagged(c: &Ctx<'_>) -> Result<Tagged, ApiError> {
    let arn = c.req_str("resourceArn")?;
    let parsed = kiln_model::Arn::parse(&arn)
        .ok_or_else(|| ApiError::InvalidParameterValue(format!("{arn} is not an Image Builder ARN.")))?;
    let not_found = || ApiError::ResourceNotFound(format!("The resource {arn} does not exist."));
    match parsed.resource_type.as_str() {
        "image" => {
            let image = c.server.store().get_image_by_arn(&arn).await.map_err(|e| match e {
                StoreError::ImageNotFound { .. } => not_found(),
                e => internal(e),
            })?;
            if image.account != c.account() || image.state == kiln_store::ImageState::Deleted {
                return Err(not_found());
            }
            Ok(Tagged::Image(image))
        }
        COMPONENT => Ok(Tagged::Resource(c.owned_arn(COMPONENT, &component_build_arn(&arn)).await?)),
        kind @ (RECIPE | INFRASTRUCTURE | DISTRIBUTION | PIPELINE | LIFECYCLE) => {
            Ok(Tagged::Resource(c.owned_arn(kind, &arn).await?))
        }
        _ => Err(not_found()),
    }
}

async fn set_tags(c: &Ctx<'_>, target: &Tagged, tags: &Tags) -> Result<(), ApiError> {
    let store = c.server.store();
    match target {
        Tagged::Image(image) => store.set_image_tags(&image.arn, tags).await.map_err(internal),
        Tagged::Resource(r) => {
            store.update_api_resource(&r.arn, &r.body, tags).await.map(|_| ()).map_err(internal)
        }
    }
}

fn current_tags(target: &Tagged) -> &Tags {
    match target {
        Tagged::Image(image) => &image.tags,
        Tagged::Resource(r) => &r.tags,
    }
}

pub(super) async fn tag_resource(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let add = tags_of(c.input().get("tags"), "tags")?;
    if add.is_empty() {
        return Err(ApiError::InvalidParameterValue("tags must have at least one tag.".into()));
    }
    let target = tagged(c).await?;
    let mut tags = current_tags(&target).clone();
    tags.extend(add);
    if tags.len() > 50 {
        return Err(ApiError::InvalidParameterValue("A resource has at most 50 tags.".into()));
    }
    set_tags(c, &target, &tags).await?;
    Ok(json!({}))
}

pub(super) async fn untag_resource(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let keys = strings(c.input().get("tagKeys"), "tagKeys")?;
    if keys.is_empty() {
        return Err(ApiError::InvalidParameterValue("tagKeys must name at least one key.".into()));
    }
    for k in &keys {
        check_tag_key(k)?;
    }
    let target = tagged(c).await?;
    let mut tags = current_tags(&target).clone();
    for k in &keys {
        tags.remove(k);
    }
    set_tags(c, &target, &tags).await?;
    Ok(json!({}))
}

pub(super) async fn list_tags(c: &Ctx<'_>) -> Result<Value, ApiError> {
    let target = tagged(c).await?;
    Ok(json!({ "tags": current_tags(&target) }))
}

// ---- the resource file of a build ----------------------------------------------------------

/// kiln's resource file (JSON, which its YAML reader accepts) for a recipe, its
/// configurations and the pipeline's (or `CreateImage` request's) settings, with the API shapes mapped to kiln's: component ARNs without
/// build numbers, only the members kiln knows.
pub(crate) fn resource_file_for(
    recipe: &Value,
    infrastructure: Option<&Value>,
    distribution: Option<&Value>,
    pipeline: Option<&Value>,
) -> Value {
    let components: Vec<Value> = recipe["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|cc| {
            let reference = cc["componentArn"].as_str().unwrap_or_default();
            let reference = match kiln_model::Arn::parse(reference) {
                Some(mut a) if a.build.is_some() => {
                    a.build = None;
                    a.to_string()
                }
                _ => reference.to_owned(),
            };
            let mut out = Map::new();
            out.insert("componentArn".into(), json!(reference));
            if let Some(p) = cc.get("parameters").filter(|p| !p.is_null()) {
                out.insert("parameters".into(), p.clone());
            }
            Value::Object(out)
        })
        .collect();
    let mut image_recipe = copy_members(
        recipe,
        &[
            "name",
            "description",
            "parentImage",
            "workingDirectory",
            "blockDeviceMappings",
            "additionalInstanceConfiguration",
        ],
    );
    image_recipe.insert("semanticVersion".into(), recipe["version"].clone());
    image_recipe.insert("components".into(), Value::Array(components));
    let mut file = Map::new();
    file.insert("imageRecipe".into(), Value::Object(image_recipe));
    if let Some(infra) = infrastructure {
        let config = copy_members(
            infra,
            &[
                "name",
                "description",
                "instanceProfileName",
                "instanceTypes",
                "terminateInstanceOnFailure",
                "snsTopicArn",
                "resourceTags",
            ],
        );
        file.insert("infrastructureConfiguration".into(), Value::Object(config));
    }
    if let Some(dist) = distribution {
        let distributions: Vec<Value> = dist["distributions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let mut out = copy_members(d, &["region"]);
                if let Some(ami) = d.get("amiDistributionConfiguration").filter(|a| !a.is_null()) {
                    out.insert(
                        "amiDistributionConfiguration".into(),
                        Value::Object(copy_members(
                            ami,
                            &[
                                "name",
                                "description",
                                "targetAccountIds",
                                "amiTags",
                                "kmsKeyId",
                                "launchPermission",
                            ],
                        )),
                    );
                }
                Value::Object(out)
            })
            .collect();
        let mut config = copy_members(dist, &["name", "description"]);
        config.insert("distributions".into(), Value::Array(distributions));
        file.insert("distributionConfiguration".into(), Value::Object(config));
    }
    if let Some(enabled) =
        pipeline.and_then(|p| p["imageScanningConfiguration"]["imageScanningEnabled"].as_bool())
    {
        file.insert("imageScanningConfiguration".into(), json!({ "imageScanningEnabled": enabled }));
    }
    Value::Object(file)
}

/// kiln-model's checks of a resource file, as InvalidParameterValue.
pub(crate) fn check_resource_file(file: &Value) -> Result<(), ApiError> {
    let text = file.to_string();
    kiln_model::parse_resource_file("request", &text).map(|_| ()).map_err(|diags| {
        let messages: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
        ApiError::InvalidParameterValue(format!("kiln cannot build this: {}", messages.join("; ")))
    })
}
