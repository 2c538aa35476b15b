//! A cancellation token shared by everything a build drives: the sandbox, the step engine,
//! test and build instances, the parent bootstrap.
//!
//! Polling a flag at stage boundaries is not enough: a step blocked in `sleep 3600`, an
//! mmdebstrap run or a booting guest never reaches the next check. So besides
//! [`Cancel::is_cancelled`] for loops, a token runs *hooks* when it is cancelled: whoever owns
//! a blocking resource registers a hook that unblocks it (kills the sandbox helper, the
//! tool's process group), and the blocked call then returns an error its caller maps to
//! "cancelled" by asking the token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

type HookFn = Box<dyn FnOnce() + Send>;

/// One registered hook. Its closure is taken out when it runs or when its guard is dropped,
/// under its own lock, so a guard's drop waits for a hook that is running right then.
struct Hook {
    f: Mutex<Option<HookFn>>,
}

impl Hook {
    fn run(&self) {
        let mut slot = lock(&self.f);
        if let Some(f) = slot.take() {
            // Called with the slot locked: a guard dropped meanwhile waits, so after the drop
            // returns nothing still acts on what the hook refers to (a child's pid, say).
            f();
        }
    }
}

#[derive(Default)]
struct Hooks {
    next_id: u64,
    list: Vec<(u64, Arc<Hook>)>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    hooks: Mutex<Hooks>,
}

/// A cancellation token: cheap to clone, every clone is the same token. Cancelling is
/// one-way and idempotent.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel").field("cancelled", &self.is_cancelled()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A hook that panicked leaves nothing half-updated in these locks' data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Cancel: every registered hook runs once, in the calling thread, outside the registry's
    /// lock (so a hook may register or drop other hooks). Later calls do nothing.
    pub fn cancel(&self) {
        if self.inner.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        let hooks = std::mem::take(&mut lock(&self.inner.hooks).list);
        for (_, hook) in hooks {
            hook.run();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Run `hook` once when the token is cancelled — at once, in this thread, if it already
    /// is. Dropping the returned guard unregisters the hook; if the hook is running in another
    /// thread at that moment, the drop waits for it to finish. A hook should be quick (send a
    /// signal, set a flag) and must not drop its own guard.
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) -> CancelGuard {
        let hook = Arc::new(Hook { f: Mutex::new(Some(Box::new(hook))) });
        let id = {
            let mut hooks = lock(&self.inner.hooks);
            // Checked under the registry's lock: `cancel` sets the flag before it takes the
            // list, so a hook is either in the list it takes or sees the flag here — never
            // neither, never both.
            if self.is_cancelled() {
                None
            } else {
                hooks.next_id += 1;
                let id = hooks.next_id;
                hooks.list.push((id, Arc::clone(&hook)));
                Some(id)
            }
        };
        if id.is_none() {
            hook.run();
        }
        CancelGuard { inner: Arc::clone(&self.inner), id, hook }
    }
}

/// Keeps a hook of [`Cancel::on_cancel`] registered; dropping it unregisters the hook.
#[must_use = "dropping the guard unregisters the hook at once"]
pub struct CancelGuard {
    inner: Arc<Inner>,
    id: Option<u64>,
    hook: Arc<Hook>,
}

impl std::fmt::Debug for CancelGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelGuard").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.inner.hooks).list.retain(|(i, _)| *i != id);
        }
        // Waits for a run in progress (it holds this lock), and makes any later run a no-op.
        lock(&self.hook.f).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&n);
        (n, move || {
            m.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn a_hook_runs_once_on_cancel_and_clones_share_the_state() {
        let token = Cancel::new();
        let (n, hook) = counter();
        let _guard = token.on_cancel(hook);
        assert_eq!(n.load(Ordering::SeqCst), 0, "not before the cancel");
        let other = token.clone();
        assert!(!other.is_cancelled());
        other.cancel();
        other.cancel();
        token.cancel();
        assert!(token.is_cancelled() && other.is_cancelled());
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_hook_registered_after_the_cancel_runs_at_once() {
        let token = Cancel::new();
        token.cancel();
        let (n, hook) = counter();
        let guard = token.on_cancel(hook);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        drop(guard);
        token.cancel();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_guard_unregisters_its_hook_only() {
        let token = Cancel::new();
        let (dropped, hook) = counter();
        let (kept, other) = counter();
        drop(token.on_cancel(hook));
        let _keep = token.on_cancel(other);
        token.cancel();
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        assert_eq!(kept.load(Ordering::SeqCst), 1);
        assert!(lock(&token.inner.hooks).list.is_empty(), "cancel empties the registry");
    }

    #[test]
    fn a_hook_may_register_another_hook() {
        let token = Cancel::new();
        let (n, inner) = counter();
        let t = token.clone();
        let slot: Arc<Mutex<Option<CancelGuard>>> = Arc::default();
        let s = Arc::clone(&slot);
        let _guard = token.on_cancel(move || {
            // Runs at once: the token is cancelled by now.
            *lock(&s) = Some(t.on_cancel(inner));
        });
        token.cancel();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dropping_a_guard_waits_for_its_running_hook() {
        let token = Cancel::new();
        let started = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (s, d) = (Arc::clone(&started), Arc::clone(&done));
        let guard = token.on_cancel(move || {
            s.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            d.store(true, Ordering::SeqCst);
        });
        let t = token.clone();
        let canceller = std::thread::spawn(move || t.cancel());
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        drop(guard);
        assert!(done.load(Ordering::SeqCst), "the drop returned while the hook was still running");
        canceller.join().unwrap();
    }

    #[test]
    fn concurrent_cancels_and_registrations_run_every_hook_exactly_once() {
        for _ in 0..50 {
            let token = Cancel::new();
            let n = Arc::new(AtomicUsize::new(0));
            let mut threads = Vec::new();
            for i in 0..8 {
                let t = token.clone();
                let n = Arc::clone(&n);
                threads.push(std::thread::spawn(move || {
                    if i % 2 == 0 {
                        t.cancel();
                        None
                    } else {
                        let n = Arc::clone(&n);
                        Some(t.on_cancel(move || {
                            n.fetch_add(1, Ordering::SeqCst);
                        }))
                    }
                }));
            }
            let guards: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(n.load(Ordering::SeqCst), 4, "each of the 4 hooks runs exactly once");
            drop(guards);
        }
    }
}
