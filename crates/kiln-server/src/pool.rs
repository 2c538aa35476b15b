//! The build workers of one process, in `kiln serve` or alone in `kiln worker`: N workers
//! claiming pipeline executions from the store's job queue, and the reaper that fails
//! executions whose worker (in this process or any other) stopped. Several processes on one
//! state database share the queue: a job is claimed by exactly one of them, and a process that
//! dies loses its claims when their leases run out.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::worker::{self, DEFAULT_LEASE};
use crate::{INTERRUPTED_REASON, Server, ServerError};

/// How a process's workers run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Builds run at once (0: none; `kiln serve --workers 0` leaves building to `kiln worker`
    /// processes and only reaps).
    pub workers: usize,
    /// How long a claimed execution is held without a heartbeat; a worker renews it three
    /// times per lease, and another process fails the execution once it has run out.
    pub lease: Duration,
    /// How long shutdown waits for running builds to stop before failing them.
    pub shutdown_grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { workers: 1, lease: DEFAULT_LEASE, shutdown_grace: Duration::from_secs(30) }
    }
}

/// Running workers and their reaper.
pub(crate) struct Pool {
    workers: Vec<JoinHandle<()>>,
    reaper: JoinHandle<()>,
    grace: Duration,
}

impl Pool {
    /// Fails what stopped processes left behind, then starts the workers (named
    /// `ROLE-HOST-PID-N`, so the jobs table says which machine and process holds a job) and
    /// the reaper, which runs once per lease.
    pub(crate) async fn start(
        server: &Server,
        options: &WorkerOptions,
        role: &str,
    ) -> Result<Pool, ServerError> {
        let failed = worker::reap(server).await?;
        if !failed.is_empty() {
            tracing::warn!("failed {} execution(s) interrupted by a stopped worker", failed.len());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        let lease = options.lease.max(Duration::from_secs(1));
        let workers = (0..options.workers)
            .map(|n| {
                let id = format!("{role}-{host}-{}-{n}", std::process::id());
                tokio::spawn(worker::run(server.clone(), id, lease))
            })
            .collect();
        let reaper = {
            let server = server.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease).await;
                    if let Err(e) = worker::reap(&server).await {
                        tracing::warn!("reaping interrupted executions: {e}");
                    }
                }
            })
        };
        Ok(Pool { workers, reaper, grace: options.shutdown_grace })
    }

    /// Stops the pool after [`Server::begin_shutdown`]: the builds get the grace period to
    /// stop; those still running are then failed ("the kiln worker running the build
    /// stopped"). Their jobs keep their leases until these run out, when any other process's
    /// reaper fails them too.
    pub(crate) async fn stop(self, server: &Server) {
        self.reaper.abort();
        let all = async {
            for h in self.workers {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(self.grace, all).await.is_ok() {
            return;
        }
        let running: Vec<String> = server.running().keys().cloned().collect();
        for arn in running {
            tracing::warn!("{arn}: {INTERRUPTED_REASON}");
            worker::fail_image(server, &arn, INTERRUPTED_REASON).await;
        }
    }
}

/// `kiln worker`: builds pipeline executions queued by `kiln serve` (or by other processes
/// sharing the state database) until `shutdown` resolves, calling `ready` once the workers
/// run. No HTTP: cancellations reach a running build through its job's heartbeat.
pub async fn work(
    server: Server,
    options: WorkerOptions,
    ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let pool = Pool::start(&server, &options, "worker").await?;
    ready();
    shutdown.await;
    tracing::info!("shutting down");
    server.begin_shutdown();
    pool.stop(&server).await;
    Ok(())
}
