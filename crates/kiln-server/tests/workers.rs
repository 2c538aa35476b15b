//! Worker processes sharing one state database (`kiln worker`, `kiln serve --workers 0`): when
//! the process building an execution dies, the next process to start (or any running one, once
//! per lease) fails the execution with a reason once the lease has run out; a queued
//! execution nobody claimed stays queued for the next worker; nothing stays BUILDING.

mod common;

use std::time::Duration;

use common::*;
use kiln_server::{INTERRUPTED_REASON, WorkerOptions};
use kiln_store::{ImageState, JobState};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_build_fails_with_a_reason_and_queued_ones_wait() {
    let env = Env::new().await;
    let pipeline = env.pipeline("web").await;
    let start = |token: &str| json!({"imagePipelineArn": pipeline, "clientToken": token});
    let building = env.ok("PUT", "/StartImagePipelineExecution", start("a")).await["imageBuildVersionArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let store = env.server.store();
    // A worker in another process claimed it (lease of 3 s), started building, and died.
    let claimed = store.claim("worker-elsewhere-4242-0", Duration::from_secs(3)).await.unwrap().unwrap();
    store.transition(&building, ImageState::Building, None).await.unwrap();
    let queued = env.ok("PUT", "/StartImagePipelineExecution", start("b")).await["imageBuildVersionArn"]
        .as_str()
        .unwrap()
        .to_owned();

    // A new worker process (reaping only: no builds in a unit test; it reaps once a second)
    // while the lease holds: the build is still someone's.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = WorkerOptions { workers: 0, lease: Duration::from_secs(1), ..Default::default() };
    let worker = tokio::spawn(kiln_server::work(env.server.clone(), options, || {}, async {
        let _ = stop_rx.await;
    }));
    let state = |arn: String| async move { store.get_image_by_arn(&arn).await.unwrap().state };
    assert_eq!(state(building.clone()).await, ImageState::Building);

    // Once the lease has run out, the worker's reaper fails it with the reason, within a lease.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state(building.clone()).await == ImageState::Building {
        assert!(tokio::time::Instant::now() < deadline, "the dead worker's build stayed BUILDING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = env.ok("GET", &format!("/GetImage?imageBuildVersionArn={}", enc(&building)), Value::Null).await;
    assert_eq!(got["image"]["state"], json!({"status": "FAILED", "reason": INTERRUPTED_REASON}));
    let job = store.get_job(claimed.id).await.unwrap();
    assert_eq!((job.state, job.error.as_deref()), (JobState::Failed, Some(INTERRUPTED_REASON)));
    // The execution nobody claimed is untouched, for the next worker with capacity.
    assert_eq!(state(queued.clone()).await, ImageState::Pending);
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    stop_tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
}
