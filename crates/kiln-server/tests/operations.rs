//! The operations through kiln-api's router, in process (tower), signed as the SDKs sign:
//! every family of operations, idempotency, pagination, errors, users and policies, and the
//! execution records (no worker runs here, so nothing is built).

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn components_idempotency_pagination_and_errors() {
    let env = Env::new().await;
    let arn = env.component("hello", "1.0.0").await;
    assert_eq!(arn, "arn:aws:imagebuilder:local:111122223333:component/hello/1.0.0/1");
    // The same token and request: the same answer; another request: a mismatch.
    let again = env
        .ok("PUT", "/CreateComponent", json!({"name": "hello", "semanticVersion": "1.0.0", "platform": "Linux", "data": DOC, "clientToken": "hello-1.0.0"}))
        .await;
    assert_eq!(again["componentBuildVersionArn"], arn.as_str());
    assert_eq!(again["clientToken"], "hello-1.0.0");
    let code = env
        .err("PUT", "/CreateComponent", json!({"name": "other", "semanticVersion": "1.0.0", "platform": "Linux", "data": DOC, "clientToken": "hello-1.0.0"}))
        .await;
    assert_eq!(code, "IdempotentParameterMismatchException");
    let create = |name: &str, version: &str, data: &str, token: &str| json!({"name": name, "semanticVersion": version, "platform": "Linux", "data": data, "clientToken": token});
    assert_eq!(
        env.err("PUT", "/CreateComponent", create("hello", "1.0.0", DOC, "t2")).await,
        "ResourceAlreadyExistsException"
    );
    assert_eq!(
        env.err("PUT", "/CreateComponent", create("hello", "1.0", DOC, "t3")).await,
        "InvalidVersionNumberException"
    );
    assert_eq!(
        env.err("PUT", "/CreateComponent", create("hello", "1.x.0", DOC, "t4")).await,
        "InvalidVersionNumberException"
    );
    assert_eq!(
        env.err("PUT", "/CreateComponent", create("bad", "1.0.0", "phases: 3", "t5")).await,
        "InvalidParameterValueException"
    );
    assert_eq!(
        env.err("PUT", "/CreateComponent", create("kiln-x", "1.0.0", DOC, "t6")).await,
        "InvalidParameterValueException"
    );
    assert_eq!(
        env.err("PUT", "/CreateComponent", create("a", "1.0.0", DOC, "t7")).await,
        "InvalidParameterValueException"
    );
    // A document from a local file.
    let file = env.dir.path().join("doc.yml");
    std::fs::write(&file, DOC).unwrap();
    let uri = format!("file://{}", file.display());
    env.ok("PUT", "/CreateComponent", json!({"name": "hello", "semanticVersion": "1.1.0", "platform": "Linux", "uri": uri, "clientToken": "u1"}))
        .await;
    env.component("hello", "2.0.0").await;
    // Pages of two.
    let first = env.ok("POST", "/ListComponents", json!({"maxResults": 2})).await;
    let list = first["componentVersionList"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["arn"], "arn:aws:imagebuilder:local:111122223333:component/hello/1.0.0");
    let token = first["nextToken"].as_str().unwrap();
    let second = env.ok("POST", "/ListComponents", json!({"maxResults": 2, "nextToken": token})).await;
    assert_eq!(second["componentVersionList"].as_array().unwrap().len(), 1);
    assert!(second.get("nextToken").is_none());
    assert_eq!(second["componentVersionList"][0]["version"], "2.0.0");
    let code = env
        .err(
            "POST",
            "/ListComponents",
            json!({"nextToken": token, "filters": [{"name": "name", "values": ["x"]}]}),
        )
        .await;
    assert_eq!(code, "InvalidPaginationTokenException");
    assert_eq!(
        env.err("POST", "/ListComponents", json!({"nextToken": "garbage"})).await,
        "InvalidPaginationTokenException"
    );
    let by_name = env.ok("POST", "/ListComponents", json!({"byName": true})).await;
    assert_eq!(by_name["componentVersionList"].as_array().unwrap().len(), 1);
    let builds = env
        .ok(
            "POST",
            "/ListComponentBuildVersions",
            json!({"componentVersionArn": "arn:aws:imagebuilder:local:111122223333:component/hello/1.x.x"}),
        )
        .await;
    assert_eq!(builds["componentSummaryList"].as_array().unwrap().len(), 2);
    let got =
        env.ok("GET", &format!("/GetComponent?componentBuildVersionArn={}", enc(&arn)), Value::Null).await;
    assert_eq!(got["component"]["data"], DOC);
    assert_eq!(got["component"]["state"]["status"], "ACTIVE");
    assert!(got["requestId"].is_string());
    env.ok("DELETE", &format!("/DeleteComponent?componentBuildVersionArn={}", enc(&arn)), Value::Null).await;
    let code =
        env.err("GET", &format!("/GetComponent?componentBuildVersionArn={}", enc(&arn)), Value::Null).await;
    assert_eq!(code, "ResourceNotFoundException");
    // Operations kiln does not carry out still answer the router's error.
    assert_eq!(
        env.err(
            "PUT",
            "/CreateWorkflow",
            json!({"name": "w", "semanticVersion": "1.0.0", "type": "BUILD", "clientToken": "w"})
        )
        .await,
        "NotImplementedException"
    );
}

#[tokio::test]
async fn recipes_configurations_pipelines_and_tags() {
    let env = Env::new().await;
    let pipeline = env.pipeline("web").await;
    let recipe = "arn:aws:imagebuilder:local:111122223333:image-recipe/web/1.0.0";
    let infra = "arn:aws:imagebuilder:local:111122223333:infrastructure-configuration/web";
    let dist = "arn:aws:imagebuilder:local:111122223333:distribution-configuration/web";
    // The parent as an ARN, a parent kiln does not know.
    let component = "arn:aws:imagebuilder:local:111122223333:component/web-c/1.0.0/1";
    env.ok("PUT", "/CreateImageRecipe", json!({"name": "web", "semanticVersion": "1.0.1", "parentImage": "arn:aws:imagebuilder:local:kiln:image/debian-12-x86/x.x.x",
        "components": [{"componentArn": "arn:aws:imagebuilder:local:111122223333:component/web-c/x.x.x"}], "clientToken": "r2"})).await;
    let bad_parent = json!({"name": "web", "semanticVersion": "1.0.2", "parentImage": "windows-2022", "components": [{"componentArn": component}], "clientToken": "r3"});
    assert_eq!(env.err("PUT", "/CreateImageRecipe", bad_parent).await, "InvalidParameterValueException");
    let missing = json!({"name": "web", "semanticVersion": "1.0.2", "parentImage": "debian-12-x86", "components": [{"componentArn": "arn:aws:imagebuilder:local:111122223333:component/nope/1.0.0"}], "clientToken": "r4"});
    assert_eq!(env.err("PUT", "/CreateImageRecipe", missing).await, "ResourceNotFoundException");
    let got = env.ok("GET", &format!("/GetImageRecipe?imageRecipeArn={}", enc(recipe)), Value::Null).await;
    assert_eq!(got["imageRecipe"]["parentImage"], "debian-12-x86");
    assert_eq!(got["imageRecipe"]["version"], "1.0.0");
    let list =
        env.ok("POST", "/ListImageRecipes", json!({"filters": [{"name": "name", "values": ["web"]}]})).await;
    assert_eq!(list["imageRecipeSummaryList"].as_array().unwrap().len(), 2);
    // In use by the pipeline.
    for (path, member, arn) in [
        ("/DeleteImageRecipe", "imageRecipeArn", recipe),
        ("/DeleteInfrastructureConfiguration", "infrastructureConfigurationArn", infra),
        ("/DeleteDistributionConfiguration", "distributionConfigurationArn", dist),
        ("/DeleteComponent", "componentBuildVersionArn", component),
    ] {
        let code = env.err("DELETE", &format!("{path}?{member}={}", enc(arn)), Value::Null).await;
        assert_eq!(code, "ResourceInUseException", "{path}");
    }
    // Updates.
    env.ok("PUT", "/UpdateInfrastructureConfiguration", json!({"infrastructureConfigurationArn": infra, "instanceProfileName": "other", "description": "d", "clientToken": "u1"})).await;
    let got = env
        .ok(
            "GET",
            &format!("/GetInfrastructureConfiguration?infrastructureConfigurationArn={}", enc(infra)),
            Value::Null,
        )
        .await;
    assert_eq!(got["infrastructureConfiguration"]["instanceProfileName"], "other");
    assert_eq!(got["infrastructureConfiguration"]["name"], "web");
    assert!(got["infrastructureConfiguration"]["dateUpdated"].is_string());
    env.ok("PUT", "/UpdateDistributionConfiguration", json!({"distributionConfigurationArn": dist, "distributions": [{"region": "local"}, {"region": "eu"}], "clientToken": "u2"})).await;
    let list = env.ok("POST", "/ListDistributionConfigurations", json!({})).await;
    assert_eq!(list["distributionConfigurationSummaryList"][0]["regions"], json!(["local", "eu"]));
    let unsupported = json!({"distributionConfigurationArn": dist, "distributions": [{"region": "local", "s3ExportConfiguration": {}}], "clientToken": "u3"});
    assert_eq!(
        env.err("PUT", "/UpdateDistributionConfiguration", unsupported).await,
        "InvalidParameterValueException"
    );
    env.ok("PUT", "/UpdateImagePipeline", json!({"imagePipelineArn": pipeline, "imageRecipeArn": "arn:aws:imagebuilder:local:111122223333:image-recipe/web/1.0.1",
        "infrastructureConfigurationArn": infra, "status": "DISABLED", "schedule": {"scheduleExpression": "cron(0 3 * * ? *)"}, "clientToken": "u4"})).await;
    let got =
        env.ok("GET", &format!("/GetImagePipeline?imagePipelineArn={}", enc(&pipeline)), Value::Null).await;
    assert_eq!(got["imagePipeline"]["status"], "DISABLED");
    assert!(got["imagePipeline"].get("distributionConfigurationArn").is_none());
    let bad_cron = json!({"imagePipelineArn": pipeline, "imageRecipeArn": recipe, "infrastructureConfigurationArn": infra, "schedule": {"scheduleExpression": "cron(0 25 * * ? *)"}, "clientToken": "u5"});
    assert_eq!(env.err("PUT", "/UpdateImagePipeline", bad_cron).await, "InvalidParameterValueException");
    let code = env
        .err(
            "PUT",
            "/StartImagePipelineExecution",
            json!({"imagePipelineArn": pipeline, "clientToken": "s1"}),
        )
        .await;
    assert_eq!(code, "InvalidRequestException");
    // The distribution configuration is free now.
    env.ok(
        "DELETE",
        &format!("/DeleteDistributionConfiguration?distributionConfigurationArn={}", enc(dist)),
        Value::Null,
    )
    .await;
    // Tags on every kind.
    for arn in [pipeline.as_str(), recipe, infra, component] {
        env.ok("POST", &format!("/tags/{}", enc(arn)), json!({"tags": {"team": "platform", "env": "dev"}}))
            .await;
        env.ok("DELETE", &format!("/tags/{}?tagKeys=env", enc(arn)), Value::Null).await;
        let tags = env.ok("GET", &format!("/tags/{}", enc(arn)), Value::Null).await;
        assert_eq!(tags, json!({"tags": {"team": "platform"}}), "{arn}");
    }
    let code = env.err("POST", &format!("/tags/{}", enc(dist)), json!({"tags": {"a": "b"}})).await;
    assert_eq!(code, "ResourceNotFoundException");
    let code = env.err("POST", &format!("/tags/{}", enc(recipe)), json!({"tags": {"aws:x": "b"}})).await;
    assert_eq!(code, "InvalidParameterValueException");
    // Deleted in order, nothing is in use any more.
    env.ok("DELETE", &format!("/DeleteImagePipeline?imagePipelineArn={}", enc(&pipeline)), Value::Null).await;
    env.ok("DELETE", &format!("/DeleteImageRecipe?imageRecipeArn={}", enc(recipe)), Value::Null).await;
    env.ok(
        "DELETE",
        &format!("/DeleteInfrastructureConfiguration?infrastructureConfigurationArn={}", enc(infra)),
        Value::Null,
    )
    .await;
    assert_eq!(env.ok("POST", "/ListImagePipelines", json!({})).await["imagePipelineList"], json!([]));
}

#[tokio::test]
async fn executions_are_recorded_cancelled_deleted_and_recovered() {
    let env = Env::new().await;
    let pipeline = env.pipeline("web").await;
    let start = json!({"imagePipelineArn": pipeline, "clientToken": "s1", "tags": {"run": "1"}});
    let out = env.ok("PUT", "/StartImagePipelineExecution", start.clone()).await;
    let image = out["imageBuildVersionArn"].as_str().unwrap().to_owned();
    assert_eq!(image, "arn:aws:imagebuilder:local:111122223333:image/web/1.0.0/1");
    // The same token: the same execution, no second image.
    assert_eq!(
        env.ok("PUT", "/StartImagePipelineExecution", start).await["imageBuildVersionArn"],
        image.as_str()
    );
    let got = env.ok("GET", &format!("/GetImage?imageBuildVersionArn={}", enc(&image)), Value::Null).await;
    assert_eq!(got["image"]["state"]["status"], "PENDING");
    assert_eq!(got["image"]["version"], "1.0.0/1");
    assert_eq!(got["image"]["sourcePipelineArn"], pipeline.as_str());
    assert_eq!(got["image"]["imageRecipe"]["name"], "web");
    assert_eq!(got["image"]["tags"]["run"], "1");
    let jobs = env.server.store().list_jobs(Some(kiln_store::JobState::Queued)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload["noTest"], true);
    let listed = env.ok("POST", "/ListImagePipelineImages", json!({"imagePipelineArn": pipeline})).await;
    assert_eq!(listed["imageSummaryList"][0]["arn"], image.as_str());
    assert_eq!(
        env.err("DELETE", &format!("/DeleteImage?imageBuildVersionArn={}", enc(&image)), Value::Null).await,
        "ResourceInUseException"
    );
    // Cancelling a queued execution cancels its job.
    env.ok("PUT", "/CancelImageCreation", json!({"imageBuildVersionArn": image, "clientToken": "c1"})).await;
    let got = env.ok("GET", &format!("/GetImage?imageBuildVersionArn={}", enc(&image)), Value::Null).await;
    assert_eq!(got["image"]["state"]["status"], "CANCELLED");
    assert_eq!(env.server.store().get_job(jobs[0].id).await.unwrap().state, kiln_store::JobState::Cancelled);
    let code = env
        .err("PUT", "/CancelImageCreation", json!({"imageBuildVersionArn": image, "clientToken": "c2"}))
        .await;
    assert_eq!(code, "ResourceInUseException");
    let versions = env.ok("POST", "/ListImages", json!({})).await;
    assert_eq!(
        versions["imageVersionList"][0]["arn"],
        "arn:aws:imagebuilder:local:111122223333:image/web/1.0.0"
    );
    env.ok("DELETE", &format!("/DeleteImage?imageBuildVersionArn={}", enc(&image)), Value::Null).await;
    assert_eq!(env.ok("POST", "/ListImages", json!({})).await["imageVersionList"], json!([]));
    // A server that died while building: its lease runs out and the image fails with a reason.
    let out = env
        .ok("PUT", "/StartImagePipelineExecution", json!({"imagePipelineArn": pipeline, "clientToken": "s2"}))
        .await;
    let image = out["imageBuildVersionArn"].as_str().unwrap().to_owned();
    assert!(image.ends_with("/web/1.0.0/2"), "{image}");
    let store = env.server.store();
    store.claim("dead-server", std::time::Duration::from_millis(1)).await.unwrap().unwrap();
    store.transition(&image, kiln_store::ImageState::Building, None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(env.server.recover().await.unwrap(), vec![image.clone()]);
    let got = env.ok("GET", &format!("/GetImage?imageBuildVersionArn={}", enc(&image)), Value::Null).await;
    assert_eq!(got["image"]["state"], json!({"status": "FAILED", "reason": kiln_server::INTERRUPTED_REASON}));
    let builds = env
        .ok(
            "POST",
            "/ListImageBuildVersions",
            json!({"imageVersionArn": "arn:aws:imagebuilder:local:111122223333:image/web/1.0.0"}),
        )
        .await;
    assert_eq!(builds["imageSummaryList"].as_array().unwrap().len(), 1);
    let findings = env
        .ok(
            "POST",
            "/ListImageScanFindings",
            json!({"filters": [{"name": "imageBuildVersionArn", "values": [image]}]}),
        )
        .await;
    assert_eq!(findings["findings"], json!([]));
}

#[tokio::test]
async fn policies_accounts_and_keys() {
    let env = Env::new().await;
    let component = env.component("hello", "1.0.0").await;
    let restricted = env.user("builder", "111122223333", NO_RECIPES).await;
    let create = json!({"name": "web", "semanticVersion": "1.0.0", "parentImage": "debian-12-x86", "components": [{"componentArn": component}], "clientToken": "r1"});
    let (status, code, out) = env.send(&restricted, "PUT", "/CreateImageRecipe", create.clone()).await;
    assert_eq!((status, code.as_str()), (403, "AccessDeniedException"));
    assert!(out["message"].as_str().unwrap().contains("NoRecipes"), "{out}");
    let (_, _, list) = env.send(&restricted, "POST", "/ListImageRecipes", json!({})).await;
    assert_eq!(list["imageRecipeSummaryList"], json!([]));
    // Another account sees nothing of this one's.
    let other = env.user("other", "444455556666", ADMIN).await;
    let (_, code, _) = env
        .send(
            &other,
            "GET",
            &format!("/GetComponent?componentBuildVersionArn={}", enc(&component)),
            Value::Null,
        )
        .await;
    assert_eq!(code, "ResourceNotFoundException");
    let (_, _, list) = env.send(&other, "POST", "/ListComponents", json!({})).await;
    assert_eq!(list["componentVersionList"], json!([]));
    // Users: a bad policy names its JSON path; a deleted user's key stops working.
    let err = kiln_server::create_user(
        &env.server,
        "x",
        "111122223333",
        "x",
        r#"{"Statement":[{"Effect":"allow"}]}"#,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("$.Statement[0].Effect"), "{err}");
    assert!(kiln_server::create_user(&env.server, "bad name", "111122223333", "p", ADMIN).await.is_err());
    assert!(kiln_server::create_user(&env.server, "y", "123", "p", ADMIN).await.is_err());
    let users = kiln_server::list_users(&env.server).await.unwrap();
    assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["admin", "builder", "other"]);
    kiln_server::delete_user(&env.server, "other").await.unwrap();
    let (status, code, _) = env.send(&other, "POST", "/ListComponents", json!({})).await;
    assert_eq!((status, code.as_str()), (403, "InvalidClientTokenId"));
    assert!(kiln_server::delete_user(&env.server, "other").await.is_err());
    // The secret is not stored in clear.
    let db = std::fs::read(env.dir.path().join("state/kiln.db")).unwrap_or_default();
    let wal = std::fs::read(env.dir.path().join("state/kiln.db-wal")).unwrap_or_default();
    let needle = env.admin.secret_access_key.as_bytes();
    for bytes in [db, wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
}

/// `kiln admin delete-user` runs in another process: the serving one, which keeps recently
/// used keys in memory, refuses the key once `CREDENTIAL_TTL` has passed.
#[tokio::test]
async fn a_deletion_by_another_process_applies_within_the_ttl() {
    let env = Env::new().await;
    let user = env.user("gone", "111122223333", ADMIN).await;
    let (status, _, _) = env.send(&user, "POST", "/ListComponents", json!({})).await;
    assert_eq!(status, 200);
    let admin = kiln_server::Server::open(env.dir.path()).await.unwrap();
    kiln_server::delete_user(&admin, "gone").await.unwrap();
    tokio::time::sleep(kiln_server::CREDENTIAL_TTL + std::time::Duration::from_millis(100)).await;
    let (status, code, _) = env.send(&user, "POST", "/ListComponents", json!({})).await;
    assert_eq!((status, code.as_str()), (403, "InvalidClientTokenId"));
}

#[tokio::test]
async fn create_image_queues_an_execution_without_a_pipeline() {
    let env = Env::new().await;
    let pipeline = env.pipeline("web").await;
    let recipe = "arn:aws:imagebuilder:local:111122223333:image-recipe/web/1.0.0";
    let infra = "arn:aws:imagebuilder:local:111122223333:infrastructure-configuration/web";
    let dist = "arn:aws:imagebuilder:local:111122223333:distribution-configuration/web";
    let request = json!({"imageRecipeArn": recipe, "infrastructureConfigurationArn": infra,
        "distributionConfigurationArn": dist, "imageTestsConfiguration": {"imageTestsEnabled": false},
        "tags": {"via": "create-image"}, "clientToken": "ci1"});
    let out = env.ok("PUT", "/CreateImage", request.clone()).await;
    let image = out["imageBuildVersionArn"].as_str().unwrap().to_owned();
    assert_eq!(image, "arn:aws:imagebuilder:local:111122223333:image/web/1.0.0/1");
    assert_eq!(out["clientToken"], "ci1");
    assert!(out["requestId"].is_string());
    // The same token: the same image, no second execution.
    assert_eq!(env.ok("PUT", "/CreateImage", request.clone()).await["imageBuildVersionArn"], image.as_str());
    let jobs = env.server.store().list_jobs(Some(kiln_store::JobState::Queued)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload["imageArn"], image.as_str());
    assert_eq!(jobs[0].payload["noTest"], true);
    assert_eq!(jobs[0].payload["resourceFile"]["imageRecipe"]["name"], "web");
    let got = env.ok("GET", &format!("/GetImage?imageBuildVersionArn={}", enc(&image)), Value::Null).await;
    let got = &got["image"];
    assert_eq!(got["state"]["status"], "PENDING");
    assert!(got.get("sourcePipelineArn").is_none() && got.get("sourcePipelineName").is_none(), "{got}");
    assert_eq!(got["imageRecipe"]["name"], "web");
    assert_eq!(got["infrastructureConfiguration"]["name"], "web");
    assert_eq!(got["distributionConfiguration"]["name"], "web");
    assert_eq!(got["imageTestsConfiguration"], json!({"imageTestsEnabled": false}));
    assert_eq!(got["enhancedImageMetadataEnabled"], true);
    assert_eq!(got["tags"]["via"], "create-image");
    let record = env.server.store().execution_of(&image).await.unwrap().unwrap();
    assert_eq!((record.pipeline_arn, record.job_id), (None, jobs[0].id));
    // Not one of the pipeline's images.
    let listed = env.ok("POST", "/ListImagePipelineImages", json!({"imagePipelineArn": pipeline})).await;
    assert_eq!(listed["imageSummaryList"], json!([]));
    // Tests run unless turned off, as for pipelines; the distribution is optional.
    let out = env
        .ok(
            "PUT",
            "/CreateImage",
            json!({"imageRecipeArn": recipe, "infrastructureConfigurationArn": infra, "clientToken": "ci2"}),
        )
        .await;
    let second = out["imageBuildVersionArn"].as_str().unwrap();
    assert!(second.ends_with("/web/1.0.0/2"), "{second}");
    let jobs = env.server.store().list_jobs(Some(kiln_store::JobState::Queued)).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs.iter().find(|j| j.payload["imageArn"] == second).unwrap().payload["noTest"], false);
    // A CreateImage image is cancelled like any other.
    env.ok("PUT", "/CancelImageCreation", json!({"imageBuildVersionArn": image, "clientToken": "c1"})).await;
    assert_eq!(
        env.server.store().get_job(record.job_id).await.unwrap().state,
        kiln_store::JobState::Cancelled
    );

    let with = |member: &str, value: Value, token: &str| {
        let mut r = request.clone();
        r[member] = value;
        r["clientToken"] = json!(token);
        r
    };
    let unknown = with(
        "imageRecipeArn",
        json!("arn:aws:imagebuilder:local:111122223333:image-recipe/nope/1.0.0"),
        "e1",
    );
    assert_eq!(env.err("PUT", "/CreateImage", unknown).await, "ResourceNotFoundException");
    let unknown = with(
        "infrastructureConfigurationArn",
        json!("arn:aws:imagebuilder:local:111122223333:infrastructure-configuration/nope"),
        "e2",
    );
    assert_eq!(env.err("PUT", "/CreateImage", unknown).await, "ResourceNotFoundException");
    let workflows = with(
        "workflows",
        json!([{"workflowArn": "arn:aws:imagebuilder:local:aws:workflow/build/x/1.0.0"}]),
        "e3",
    );
    let (status, code, body) = env.send(&env.admin, "PUT", "/CreateImage", workflows).await;
    assert_eq!((status, code.as_str()), (400, "InvalidParameterValueException"));
    assert!(body["message"].as_str().unwrap().contains("built-in build and test workflow"), "{body}");
    assert_eq!(
        env.ok("PUT", "/CreateImage", with("workflows", json!([]), "e4")).await["imageBuildVersionArn"],
        "arn:aws:imagebuilder:local:111122223333:image/web/1.0.0/3"
    );
    let container = with(
        "containerRecipeArn",
        json!("arn:aws:imagebuilder:local:111122223333:container-recipe/c/1.0.0"),
        "e5",
    );
    assert_eq!(env.err("PUT", "/CreateImage", container).await, "InvalidParameterValueException");
    let mut no_recipe = request.clone();
    no_recipe.as_object_mut().unwrap().remove("imageRecipeArn");
    no_recipe["clientToken"] = json!("e6");
    assert_eq!(env.err("PUT", "/CreateImage", no_recipe).await, "InvalidRequestException");
    // Another account cannot build from this account's recipe.
    let other = env.user("other", "444455556666", ADMIN).await;
    let (_, code, _) = env.send(&other, "PUT", "/CreateImage", with("clientToken", json!("o1"), "o1")).await;
    assert_eq!(code, "ResourceNotFoundException");
}
