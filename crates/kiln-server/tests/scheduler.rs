//! The scheduler's passes with an injected clock: a schedule that matches starts an execution
//! (through StartImagePipelineExecution's code path, the reason on the image), a missed window
//! fires once, a running execution is not started twice, and a slot with no dependency update
//! is skipped (the package check answered by a fixture, so no network).

mod common;

use std::sync::Arc;

use common::*;
use kiln_build::Kiln;
use kiln_build::dependencies::{FixtureIndex, PackageIndex};
use kiln_server::scheduler::{IndexFactory, Outcome, tick};
use kiln_store::{ImageState, NewImage};
use serde_json::json;
use time::OffsetDateTime;

fn fixture() -> IndexFactory {
    Arc::new(|_: &Kiln| Box::new(FixtureIndex::default()) as Box<dyn PackageIndex>)
}

fn outcome_of(evaluations: &[kiln_server::scheduler::Evaluation], arn: &str) -> Outcome {
    evaluations.iter().find(|e| e.pipeline_arn == arn).map(|e| e.outcome.clone()).expect("evaluated")
}

#[tokio::test]
async fn a_matching_schedule_starts_once_per_window_and_never_twice_at_once() {
    let env = Env::new().await;
    let every_minute = json!({"schedule": {"scheduleExpression": "cron(0/1 * * * ? *)",
        "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"}});
    let pipeline = env.pipeline_with("nightly", every_minute).await;
    let manual = env.pipeline("manual").await;
    let store = env.server.store();
    let now = OffsetDateTime::now_utc();

    // Before the first slot after creation: nothing.
    let first = tick(&env.server, now, &fixture()).await.unwrap();
    assert!(matches!(outcome_of(&first, &pipeline), Outcome::NotDue { next: Some(_) }), "{first:?}");
    assert!(first.iter().all(|e| e.pipeline_arn != manual), "a pipeline without a schedule is not evaluated");

    // Two minutes later: due.
    let later = now + time::Duration::minutes(2);
    let Outcome::Started { image_arn, reason } =
        outcome_of(&tick(&env.server, later, &fixture()).await.unwrap(), &pipeline)
    else {
        panic!("not started");
    };
    assert!(reason.contains("cron(0/1 * * * ? *) matched"), "{reason}");
    let image = store.get_image_by_arn(&image_arn).await.unwrap();
    assert_eq!(image.state, ImageState::Pending);
    assert_eq!(image.reason.as_deref(), Some(reason.as_str()));
    let history = store.image_history(&image_arn).await.unwrap();
    assert_eq!(history[0].reason.as_deref(), Some(reason.as_str()), "the first history entry says why");
    assert_eq!(store.execution_of(&image_arn).await.unwrap().unwrap().pipeline_arn, Some(pipeline.clone()));

    // Still PENDING ten minutes later: not started again.
    let much_later = later + time::Duration::minutes(10);
    assert_eq!(
        outcome_of(&tick(&env.server, much_later, &fixture()).await.unwrap(), &pipeline),
        Outcome::Running
    );

    // Once it is over, the ten missed slots fire once, not ten times.
    store.transition(&image_arn, ImageState::Failed, Some("test")).await.unwrap();
    let again = outcome_of(&tick(&env.server, much_later, &fixture()).await.unwrap(), &pipeline);
    let Outcome::Started { image_arn: second, .. } = again else {
        panic!("missed window did not fire: {again:?}")
    };
    store.transition(&second, ImageState::Failed, Some("test")).await.unwrap();
    let after = outcome_of(&tick(&env.server, much_later, &fixture()).await.unwrap(), &pipeline);
    assert!(matches!(after, Outcome::NotDue { .. }), "{after:?}");
    assert_eq!(store.pipeline_executions(&pipeline).await.unwrap().len(), 2);

    // DISABLED pipelines are not evaluated.
    env.ok("PUT", "/UpdateImagePipeline", json!({"imagePipelineArn": pipeline, "imageRecipeArn": env.ok("GET", &format!("/GetImagePipeline?imagePipelineArn={}", enc(&pipeline)), serde_json::Value::Null).await["imagePipeline"]["imageRecipeArn"],
        "infrastructureConfigurationArn": env.ok("GET", &format!("/GetImagePipeline?imagePipelineArn={}", enc(&pipeline)), serde_json::Value::Null).await["imagePipeline"]["infrastructureConfigurationArn"],
        "status": "DISABLED"})).await;
    let disabled = tick(&env.server, much_later + time::Duration::minutes(5), &fixture()).await.unwrap();
    assert!(disabled.iter().all(|e| e.pipeline_arn != pipeline), "{disabled:?}");
}

#[tokio::test]
async fn a_slot_without_dependency_updates_is_skipped() {
    let env = Env::new().await;
    let condition = json!({"schedule": {"scheduleExpression": "cron(0/1 * * * ? *)",
        "pipelineExecutionStartCondition": "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"}});
    let pipeline = env.pipeline_with("deps", condition).await;
    let store = env.server.store();

    // The pipeline's latest image: AVAILABLE, built from a disk parent that has not changed and
    // no components, so nothing can have changed (and no package is asked about).
    let disk = env.dir.path().join("parent.raw");
    std::fs::write(&disk, b"disk one").unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"disk one"))
    };
    let recipe = json!({
        "imageRecipe": {"name": "deps", "semanticVersion": "1.0.0", "parentImage": disk, "components": []},
        "infrastructureConfiguration": {"name": "local", "instanceProfileName": "kiln"},
        "distributionConfiguration": {"name": "local", "distributions": []},
    });
    let image = store
        .create_image(&NewImage {
            name: "deps".into(),
            version: "1.0.0".parse().unwrap(),
            region: "local".into(),
            account: "111122223333".into(),
            recipe,
            tags: Default::default(),
        })
        .await
        .unwrap();
    let job = store.enqueue("test", &json!({})).await.unwrap();
    store.record_execution(&image.arn, Some(&pipeline), job, &json!({})).await.unwrap();
    for state in [ImageState::Building, ImageState::Available] {
        store.transition(&image.arn, state, None).await.unwrap();
    }
    let manifest = json!({
        "parent": {"reference": disk, "layers": ["base-layer"], "info": {"kind": "import", "path": disk, "sha256": sha}},
        "components": [], "layers": ["base-layer"], "packages": [],
    });
    store.set_manifest(&image.arn, "/nowhere", &manifest).await.unwrap();

    let later = OffsetDateTime::now_utc() + time::Duration::minutes(2);
    let outcome = outcome_of(&tick(&env.server, later, &fixture()).await.unwrap(), &pipeline);
    assert!(matches!(outcome, Outcome::Skipped { .. }), "{outcome:?}");
    assert_eq!(store.pipeline_executions(&pipeline).await.unwrap().len(), 1, "no execution started");
    // The slot is consumed: the same time again is not due.
    let outcome = outcome_of(&tick(&env.server, later, &fixture()).await.unwrap(), &pipeline);
    assert!(matches!(outcome, Outcome::NotDue { .. }), "{outcome:?}");
}
