//! The coordinator role: of all `kiln serve` processes on one state, one fires schedules, runs
//! lifecycle policies and follows the feeds (webhooks, threat detection on usage), so none of
//! that happens twice. The role is held in the store with a term renewed three times per term
//! ([`kiln_store::Store::hold_role`]); when its holder dies, another server takes it once the
//! term has run out, and carries on from the follower's saved position.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::Server;

/// The role's name in the store.
pub const ROLE: &str = "coordinator";
/// How long the role is held without a renewal.
pub const TERM: Duration = Duration::from_secs(30);

impl Server {
    /// Whether this server holds the coordinator role (as of its last renewal).
    pub fn is_coordinator(&self) -> bool {
        self.inner.coordinator.load(Ordering::SeqCst)
    }

    /// This server process's name as a holder of roles (`HOST-PID-N`).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Takes or renews the role; returns whether this server holds it now. A store error
    /// counts as not holding it, so two servers never both act on a doubt.
    pub async fn renew_coordinator(&self, term: Duration) -> bool {
        let held = match self.store().hold_role(ROLE, self.node(), term).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!("renewing the coordinator role: {e}");
                false
            }
        };
        let was = self.inner.coordinator.swap(held, Ordering::SeqCst);
        if held != was {
            if held {
                tracing::info!(
                    node = self.node(),
                    "this server coordinates: schedules, lifecycle policies, feeds"
                );
            } else {
                tracing::warn!(node = self.node(), "another server coordinates now");
            }
        }
        held
    }

    /// Gives the role up (a clean shutdown), so another server need not wait out the term.
    pub async fn release_coordinator(&self) {
        self.inner.coordinator.store(false, Ordering::SeqCst);
        if let Err(e) = self.store().release_role(ROLE, self.node()).await {
            tracing::warn!("giving up the coordinator role: {e}");
        }
    }
}

/// Renews the role three times per `term` until aborted.
pub(crate) async fn keep_renewing(server: Server, term: Duration) {
    loop {
        tokio::time::sleep(term / 3).await;
        server.renew_coordinator(term).await;
    }
}

/// A name for this process among the servers on one state: the host, the process id, and a
/// counter (tests run several servers in one process).
pub(crate) fn node_name() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}-{}", host.trim(), std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
