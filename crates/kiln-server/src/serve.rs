//! `kiln serve`: the router inside the monitoring layer on a socket (with `GET /metrics`), the
//! audit writer, the worker pool with its reaper, and — while this server holds the coordinator
//! role — the store follower and the scheduler, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_api::observe::{Monitor, with_monitoring};
use kiln_api::server::{ServerConfig, router};

use crate::coordinator;
use crate::monitor::{MonitorOptions, Monitoring};
use crate::pool::{Pool, WorkerOptions};
use crate::scheduler::{self, SchedulerOptions};
use crate::{Server, ServerError};

/// How `kiln serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `HOST:PORT` to listen on (port 0: any free port).
    pub listen: String,
    /// The builds run inside the server.
    pub workers: WorkerOptions,
    /// Metrics, audit log, threat detection and webhooks.
    pub monitor: MonitorOptions,
    /// The scheduler of pipelines (`None`: schedules do not fire).
    pub scheduler: Option<SchedulerOptions>,
    /// The term of the coordinator role (see [`crate::coordinator`]).
    pub coordinator_term: Duration,
}

impl ServeOptions {
    /// Listening on `listen` with one worker, monitoring without webhooks, the scheduler on.
    pub fn new(listen: &str) -> ServeOptions {
        ServeOptions {
            listen: listen.to_owned(),
            workers: WorkerOptions::default(),
            monitor: MonitorOptions::default(),
            scheduler: Some(SchedulerOptions::default()),
            coordinator_term: coordinator::TERM,
        }
    }
}

/// Serves until `shutdown` resolves, calling `ready` with the bound address once requests
/// are accepted. On shutdown, running builds are asked to stop and get the workers' grace
/// period to do so; those still running are then failed ("the kiln worker running the build
/// stopped").
pub async fn serve(
    server: Server,
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(&options.listen).await.map_err(|source| {
        ServerError::Io { what: "listening on", path: options.listen.clone().into(), source }
    })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Io {
        what: "reading the address of",
        path: options.listen.clone().into(),
        source,
    })?;
    // Executions a previous process left running are failed before any worker claims.
    let pool = Pool::start(&server, &options.workers, "serve").await?;
    let monitoring = Monitoring::start(server.store().clone(), &options.monitor).await?;
    let (sink, audit_writer) = monitoring.audit_sink(options.monitor.audit_queue);
    // Before the scheduler and the follower start, so a lone server coordinates from its
    // first pass.
    server.renew_coordinator(options.coordinator_term).await;
    let renewing = tokio::spawn(coordinator::keep_renewing(server.clone(), options.coordinator_term));
    let coordinating = {
        let server = server.clone();
        move || server.is_coordinator()
    };
    let follower =
        tokio::spawn(Arc::clone(&monitoring).follow(options.monitor.follow_interval, coordinating));
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
    follower.abort();
    if let Some(s) = schedule {
        s.abort();
    }
    renewing.abort();
    server.release_coordinator().await;
    // The router (and with it the last sink) is gone: the writer drains the queue and ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), audit_writer).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), monitoring.flush()).await;
    pool.stop(&server).await;
    result.map_err(|source| ServerError::Io { what: "serving on", path: addr.to_string().into(), source })
}
