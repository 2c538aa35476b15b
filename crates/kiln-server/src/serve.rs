//! `kiln serve`: the router inside the monitoring layer on a socket (with `GET /metrics`), the
//! audit writer and the store follower, the worker pool, the reaper and the scheduler, until
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_api::observe::{Monitor, with_monitoring};
use kiln_api::server::{ServerConfig, router};

use crate::monitor::{MonitorOptions, Monitoring};
use crate::scheduler::{self, SchedulerOptions};
use crate::worker::{self, LEASE};
use crate::{INTERRUPTED_REASON, Server, ServerError};

/// How `kiln serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `HOST:PORT` to listen on (port 0: any free port).
    pub listen: String,
    /// Builds run at once.
    pub workers: usize,
    /// How long shutdown waits for running builds to stop before failing them.
    pub shutdown_grace: Duration,
    /// Metrics, audit log, threat detection and webhooks.
    pub monitor: MonitorOptions,
    /// The scheduler of pipelines (`None`: schedules do not fire).
    pub scheduler: Option<SchedulerOptions>,
}

impl ServeOptions {
    /// Listening on `listen` with one worker, monitoring without webhooks, the scheduler on.
    pub fn new(listen: &str) -> ServeOptions {
        ServeOptions {
            listen: listen.to_owned(),
            workers: 1,
            shutdown_grace: Duration::from_secs(30),
            monitor: MonitorOptions::default(),
            scheduler: Some(SchedulerOptions::default()),
        }
    }
}

/// Serves until `shutdown` resolves, calling `ready` with the bound address once requests
/// are accepted. On shutdown, running builds are asked to stop and get `shutdown_grace` to
/// do so; those still running are then failed ("the server stopped during the build").
pub async fn serve(
    server: Server,
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // Executions a previous server left running are failed before any worker claims.
    let failed = worker::reap(&server).await?;
    if !failed.is_empty() {
        tracing::warn!("failed {} execution(s) interrupted by a stopped server", failed.len());
    }
    let listener = tokio::net::TcpListener::bind(&options.listen).await.map_err(|source| {
        ServerError::Io { what: "listening on", path: options.listen.clone().into(), source }
    })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Io {
        what: "reading the address of",
        path: options.listen.clone().into(),
        source,
    })?;
    let mut workers = Vec::new();
    for n in 0..options.workers.max(1) {
        let id = format!("serve-{}-{n}", std::process::id());
        workers.push(tokio::spawn(worker::run(server.clone(), id)));
    }
    let reaper = {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE).await;
                if let Err(e) = worker::reap(&server).await {
                    tracing::warn!("reaping interrupted executions: {e}");
                }
            }
        })
    };
    let monitoring = Monitoring::start(server.store().clone(), &options.monitor).await?;
    let (sink, audit_writer) = monitoring.audit_sink(options.monitor.audit_queue);
    let follower = tokio::spawn(Arc::clone(&monitoring).follow(options.monitor.follow_interval));
    let schedule = options.scheduler.clone().map(|o| tokio::spawn(scheduler::run(server.clone(), o)));
    let api = router(ServerConfig::default(), Arc::new(server.clone()), Arc::new(server.clone()));
    let app = with_monitoring(api, Arc::new(Monitor::new(monitoring.metrics.clone(), Arc::new(sink))));
    ready(addr);
    let stopping = server.clone();
    let result = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            stopping.begin_shutdown();
        })
        .await;
    server.begin_shutdown();
    reaper.abort();
    follower.abort();
    if let Some(s) = schedule {
        s.abort();
    }
    // The router (and with it the last sink) is gone: the writer drains the queue and ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), audit_writer).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), monitoring.flush()).await;
    let all = futures_join(workers);
    if tokio::time::timeout(options.shutdown_grace, all).await.is_err() {
        let running: Vec<String> = server.running().keys().cloned().collect();
        for arn in running {
            tracing::warn!("{arn}: {INTERRUPTED_REASON}");
            let store = server.store();
            if let Ok(image) = store.get_image_by_arn(&arn).await {
                if image.state.is_in_progress() {
                    let _ = store
                        .transition(&arn, kiln_store::ImageState::Failed, Some(INTERRUPTED_REASON))
                        .await;
                }
            }
            // The job keeps its lease until it runs out; the next server's reaper fails it.
        }
    }
    result.map_err(|source| ServerError::Io { what: "serving on", path: addr.to_string().into(), source })
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
