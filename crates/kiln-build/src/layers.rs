//! The content-addressed layer cache.
//!
//! A layer is a directory: the base layer is a full root tree (the parent image); every later
//! layer is the overlayfs upper directory left by running one component's build phase over
//! the layers below it. A layer's key is a digest of everything that can change it — the key
//! of the layer below, the component document's digest, the parameter values, the network
//! policy and kiln's version — so a rebuild reuses every layer whose inputs are unchanged, and
//! changing one component rebuilds it and the layers after it.
//!
//! A layer is built in `LAYERS/tmp-KEY-PID` and renamed to `LAYERS/KEY` only when its step
//! succeeded, so a reader never sees a half-made layer and a failed build resumes from the
//! last good one. A failed layer is kept as `LAYERS/failed-KEY` for inspection.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What goes into a layer's key besides its inputs: a new kiln version rebuilds everything,
/// since the sandbox or the engine may behave differently.
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A digest of ordered, labelled parts; labels keep two different inputs from hashing alike.
pub fn key(parts: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln-layer-v1\0");
    h.update(KILN_VERSION.as_bytes());
    for (label, value) in parts {
        h.update([0]);
        h.update(label.as_bytes());
        h.update([0]);
        h.update((value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The directory of layers under `KILN_HOME/cache/layers`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    /// Open the cache, removing the scratch areas of builds that were killed (their
    /// `tmp-KEY-PID` directories whose process is gone).
    pub fn open(dir: &Path) -> std::io::Result<LayerCache> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("tmp-").and_then(|r| r.rsplit('-').next()) else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_tree(&entry.path())?;
            }
        }
        Ok(LayerCache { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The finished layer with this key, if the cache has it.
    pub fn get(&self, key: &str) -> Option<PathBuf> {
        let p = self.dir.join(key);
        p.is_dir().then_some(p)
    }

    /// Hold the lock for building layer `key`: concurrent builds (and `kiln worker`s sharing
    /// the cache) make each layer once; the others wait and then find it.
    pub fn lock(&self, key: &str) -> std::io::Result<LayerLock> {
        self.lock_until(key, None)
    }

    /// [`LayerCache::lock`], giving up with [`std::io::ErrorKind::Interrupted`] once `cancel`
    /// is cancelled: the other build holding the lock may run a long step.
    pub fn lock_until(&self, key: &str, cancel: Option<&kiln_host::Cancel>) -> std::io::Result<LayerLock> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(format!("{key}.lock")))?;
        let Some(cancel) = cancel else {
            // SAFETY: flock on a descriptor this function owns; the lock is released when the
            // file is closed (LayerLock's drop).
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(LayerLock { _file: file });
        };
        loop {
            if cancel.is_cancelled() {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled"));
            }
            // SAFETY: as above, without blocking.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(LayerLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Where the run report that made layer `key` is kept, for chaining from later phases.
    pub fn report_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.report.json"))
    }

    /// A fresh scratch area for building the layer `key`: `(upper, work)`, both empty.
    pub fn scratch(&self, key: &str) -> std::io::Result<Scratch> {
        let root = self.dir.join(format!("tmp-{key}-{}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        let upper = root.join("upper");
        let work = root.join("work");
        fs::create_dir_all(&upper)?;
        fs::create_dir_all(&work)?;
        Ok(Scratch { root, upper, work, key: key.to_string(), dir: self.dir.clone(), done: false })
    }

    /// Remove every layer, scratch and failed directory; returns the bytes freed.
    pub fn prune_all(&self) -> std::io::Result<u64> {
        let mut freed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            freed += du(&path);
            remove_tree(&path)?;
        }
        Ok(freed)
    }

    /// Remove the layers whose key is not in `keep`; returns the bytes freed.
    pub fn prune_except(&self, keep: &[String]) -> std::io::Result<u64> {
        let mut freed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A layer's side files (`KEY.report.json`) go with it.
            let layer = name.split('.').next().unwrap_or_default();
            if keep.iter().any(|k| k == layer) {
                continue;
            }
            let path = entry.path();
            freed += du(&path);
            remove_tree(&path)?;
        }
        Ok(freed)
    }
}

/// An exclusive lock on building one layer, released on drop.
#[derive(Debug)]
pub struct LayerLock {
    _file: fs::File,
}

/// A layer being built; dropped without [`Scratch::commit`] it is removed (or kept as
/// `failed-KEY` by [`Scratch::keep_failed`]).
#[derive(Debug)]
pub struct Scratch {
    root: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    key: String,
    dir: PathBuf,
    done: bool,
}

impl Scratch {
    /// Publish the upper directory as the layer `key` (an atomic rename).
    pub fn commit(mut self) -> std::io::Result<PathBuf> {
        let dest = self.dir.join(&self.key);
        if dest.exists() {
            // Another build made the same layer meanwhile; same key, same content.
            remove_tree(&self.root)?;
        } else {
            fs::rename(&self.upper, &dest)?;
            remove_tree(&self.root)?;
        }
        self.done = true;
        Ok(dest)
    }

    /// Keep the failed upper directory for inspection; returns where it is.
    pub fn keep_failed(mut self) -> std::io::Result<PathBuf> {
        let dest = self.dir.join(format!("failed-{}", self.key));
        if dest.exists() {
            remove_tree(&dest)?;
        }
        fs::rename(&self.upper, &dest)?;
        remove_tree(&self.root)?;
        self.done = true;
        Ok(dest)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_tree(&self.root);
        }
    }
}

/// Remove a tree without following symlinks (layer content is image content: hostile).
/// `fs::remove_dir_all` does not follow symlinks on Linux; overlayfs work directories can hold
/// a `work` dir with mode 000, which it handles as root.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes used by a tree (allocated blocks), never following symlinks.
pub fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for e in entries.flatten() {
            total += du(&e.path());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_any_input_and_never_collide_by_concatenation() {
        let a = key(&[("parent", "x"), ("doc", "y")]);
        assert_eq!(a, key(&[("parent", "x"), ("doc", "y")]));
        assert_ne!(a, key(&[("parent", "x"), ("doc", "z")]));
        assert_ne!(key(&[("a", "bc")]), key(&[("ab", "c")]));
        assert_ne!(key(&[("p", "a"), ("q", "")]), key(&[("p", ""), ("q", "a")]));
    }

    #[test]
    fn waiting_for_a_held_layer_lock_ends_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(dir.path()).unwrap();
        let cancel = kiln_host::Cancel::new();
        let held = cache.lock_until("k", Some(&cancel)).unwrap();
        let (c, waiter_cache) = (cancel.clone(), cache.clone());
        let waiter = std::thread::spawn(move || waiter_cache.lock_until("k", Some(&c)).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!waiter.is_finished(), "the lock is held: the second builder waits");
        cancel.cancel();
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted);
        drop(held);
        assert!(cache.lock_until("k", Some(&kiln_host::Cancel::new())).is_ok(), "free once released");
    }

    #[test]
    fn scratch_is_published_atomically_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(dir.path()).unwrap();
        let s = cache.scratch("k1").unwrap();
        fs::write(s.upper.join("f"), "x").unwrap();
        assert!(cache.get("k1").is_none(), "not visible before commit");
        let p = s.commit().unwrap();
        assert_eq!(fs::read_to_string(p.join("f")).unwrap(), "x");
        assert!(cache.get("k1").is_some());
        let s = cache.scratch("k2").unwrap();
        let root = s.root.clone();
        drop(s);
        assert!(!root.exists() && cache.get("k2").is_none(), "an abandoned layer leaves nothing");
        // A scratch area of a process that is gone is removed when the cache is opened.
        let stale = dir.path().join("tmp-k4-999999999");
        fs::create_dir_all(stale.join("upper")).unwrap();
        let cache = LayerCache::open(dir.path()).unwrap();
        assert!(!stale.exists());
        let s = cache.scratch("k3").unwrap();
        let kept = s.keep_failed().unwrap();
        assert!(kept.ends_with("failed-k3") && kept.is_dir());
        fs::write(cache.report_path("k1"), "{}").unwrap();
        assert!(cache.prune_except(&["k1".to_string()]).is_ok());
        assert!(cache.get("k1").is_some() && !kept.exists());
        assert!(cache.report_path("k1").exists(), "a kept layer keeps its report");
    }
}
