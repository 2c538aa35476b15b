//! Two `kiln serve` processes on one state: one coordinates (follows the feeds, schedules);
//! the other serves and keeps its gauges but notifies nothing; when the coordinator stops, the
//! other takes over from the saved position, so each state change is handled exactly once.

mod common;

use std::time::Duration;

use common::{new_image, sample_value};
use kiln_server::{ServeOptions, Server};
use tokio::sync::oneshot;

struct Running {
    server: Server,
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), kiln_server::ServerError>>,
}

async fn start(home: &std::path::Path) -> Running {
    let server = Server::open(home).await.unwrap();
    let mut options = ServeOptions::new("127.0.0.1:0");
    options.scheduler = None;
    options.workers.workers = 0;
    options.monitor.follow_interval = Duration::from_millis(100);
    options.coordinator_term = Duration::from_millis(600);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let done = tokio::spawn(kiln_server::serve(
        server.clone(),
        options,
        move |addr| {
            let _ = ready_tx.send(addr);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    Running { server, addr: ready_rx.await.unwrap(), stop, done }
}

/// `kiln_image_state_transitions_total{state=STATE}` on the server's `/metrics`.
async fn transitions(addr: std::net::SocketAddr, state: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let sample = format!("kiln_image_state_transitions_total{{state=\"{state}\"}}");
    sample_value(&text, &sample).map_or(0, |v| v as u64)
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_coordinates_and_another_takes_over_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path()).await;
    let b = start(dir.path()).await;
    assert!(a.server.is_coordinator(), "the first server coordinates");
    assert!(!b.server.is_coordinator(), "one coordinator at a time");

    let store = a.server.store();
    let arn = store.create_image(&new_image("web", "111122223333")).await.unwrap().arn;
    store.transition(&arn, kiln_store::ImageState::Building, None).await.unwrap();
    eventually("the coordinator to count the change", async || transitions(a.addr, "BUILDING").await == 1)
        .await;
    // Several renewals later the other server still has not handled it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(transitions(b.addr, "BUILDING").await, 0, "only the coordinator follows");
    assert!(!b.server.is_coordinator());

    // The coordinator stops (and gives the role up): the other takes over from its position.
    a.stop.send(()).unwrap();
    a.done.await.unwrap().unwrap();
    eventually("the other server to coordinate", async || b.server.is_coordinator()).await;
    store.transition(&arn, kiln_store::ImageState::Available, None).await.unwrap();
    eventually("the new coordinator to count the change", async || {
        transitions(b.addr, "AVAILABLE").await == 1
    })
    .await;
    assert_eq!(transitions(b.addr, "BUILDING").await, 0, "what the first one handled is not handled again");
    b.stop.send(()).unwrap();
    b.done.await.unwrap().unwrap();
}
