//! The local feed store: vulnerability feeds imported once (from a file, a directory or zip of
//! OSV records, or an http(s) URL) and answered from disk afterwards.
//!
//! Layout under the store directory (`KILN_HOME/feeds`):
//!
//! ```text
//! data/SHA256          the feed's content (a file, or a directory of OSV records)
//! ID.json              the record of one source: where from, digest, fetch time, validators
//! .lock                what imports and readers lock (see below)
//! ```
//!
//! An import parses the new content with [`Database`] *before* anything is replaced. Only a feed
//! that loads is written: first its content under its digest (temp name + rename), then its
//! record (temp file + rename). A truncated download, a corrupt file or a document of the wrong
//! format is rejected and the previous data keeps answering. URLs are fetched with conditional
//! requests (`If-None-Match`, `If-Modified-Since` from the previous record); a `304 Not Modified`
//! keeps the stored copy.
//!
//! Several kiln processes may share a store (a build importing its recipe's feeds while
//! `kiln scan --feed` runs): an import holds an exclusive `flock` on `.lock` in the store
//! directory from reading the previous record to removing the data it replaced, and loading
//! feeds holds a shared one, so no import sees a half-done import and no reader loses data
//! under it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::feed::{Database, FeedError, FeedFormat};

/// One imported feed, as recorded beside its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRecord {
    /// Stable id of the source (a digest of it); the record is `ID.json`.
    pub id: String,
    /// Where it came from: an absolute path or a URL.
    pub source: String,
    /// SHA-256 of the content (for a directory: of its sorted relative paths and contents).
    pub sha256: String,
    /// When it was last fetched or confirmed unchanged (RFC 3339).
    pub fetched_at: String,
    /// The server's `ETag`, for the next conditional request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The server's `Last-Modified`, for the next conditional request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The detected format.
    pub format: FeedFormat,
    /// Whether the content is a directory of OSV records (else one file: JSON or zip).
    pub directory: bool,
    /// Vulnerability records loaded.
    pub vulnerabilities: usize,
    /// (source package, vulnerability, release) entries indexed.
    pub entries: usize,
    /// Entries saying "not affected".
    pub not_affected: usize,
    /// Entries skipped as unusable.
    pub skipped: usize,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// First import of this source.
    New,
    /// The content changed and replaced the stored copy.
    Updated,
    /// The content is byte-for-byte the stored copy.
    Unchanged,
    /// The server answered 304 Not Modified.
    NotModified,
}

/// The result of [`FeedStore::import`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportOutcome {
    /// The record now in the store.
    pub record: FeedRecord,
    /// What changed.
    pub change: Change,
}

/// A feed could not be imported or the store could not be read; the store is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store or the source could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a feed kiln reads; nothing was stored.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The download failed; nothing was stored.
    #[error("cannot fetch feed {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A record in the store is unreadable.
    #[error("feed store record {path} is corrupt: {message}; re-import its feed")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { what, path: path.to_path_buf(), source }
}

/// The feed store in one directory.
#[derive(Debug, Clone)]
pub struct FeedStore {
    dir: PathBuf,
}

/// New content, validated, waiting to be committed.
struct Staged {
    /// The content: bytes of a file, or a staged directory.
    content: Content,
    sha256: String,
    format: FeedFormat,
    vulnerabilities: usize,
    entries: usize,
    not_affected: usize,
    skipped: usize,
}

enum Content {
    Bytes(Vec<u8>),
    /// A directory already copied under the store's `tmp` folder.
    Dir(PathBuf),
}

impl FeedStore {
    /// Opens (creating it if needed) the store at `dir`, normally `KILN_HOME/feeds`.
    pub fn open(dir: &Path) -> Result<FeedStore> {
        std::fs::create_dir_all(dir.join("data")).map_err(io("cannot create feed store", dir))?;
        Ok(FeedStore { dir: dir.to_path_buf() })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every stored feed, sorted by source.
    pub fn list(&self) -> Result<Vec<FeedRecord>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("cannot read feed store", &self.dir))? {
            let entry = entry.map_err(io("cannot read feed store", &self.dir))?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "json") && entry.file_type().is_ok_and(|t| t.is_file()) {
                out.push(read_record(&p)?);
            }
        }
        out.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(out)
    }

    /// Loads every stored feed into one database. Each feed's location is its source, and a
    /// tracker feed's date is its fetch time.
    pub fn database(&self) -> Result<Database> {
        self.database_of(&self.list()?)
    }

    /// As [`FeedStore::database`], for some of the stored feeds.
    pub fn database_of(&self, records: &[FeedRecord]) -> Result<Database> {
        // Shared: an import must not remove data (an older version's) while it is loaded.
        let _lock = self.lock(rustix::fs::FlockOperation::LockShared)?;
        let mut db = Database::new();
        for rec in records {
            db.load_path(&self.data_path(&rec.sha256))?;
            if let Some(info) = db.feeds.last_mut() {
                info.location = rec.source.clone();
                if rec.format == FeedFormat::DebianTracker || info.date.is_none() {
                    info.date = Some(rec.fetched_at.clone());
                }
            }
        }
        Ok(db)
    }

    /// Imports `source`: a file (tracker JSON, OSV JSON, zip of OSV), a directory of OSV
    /// records, or an http(s) URL. The content must load before it replaces the stored copy.
    pub fn import(&self, source: &str) -> Result<ImportOutcome> {
        let _lock = self.lock(rustix::fs::FlockOperation::LockExclusive)?;
        let is_url = source.starts_with("http://") || source.starts_with("https://");
        let source = if is_url {
            source.to_string()
        } else {
            let p = Path::new(source);
            p.canonicalize().map_err(io("cannot read feed", p))?.display().to_string()
        };
        let id = hex(&Sha256::digest(source.as_bytes()))[..16].to_string();
        let record_path = self.dir.join(format!("{id}.json"));
        let previous = match std::fs::symlink_metadata(&record_path) {
            Ok(_) => Some(read_record(&record_path)?)
                .filter(|r| std::fs::symlink_metadata(self.data_path(&r.sha256)).is_ok()),
            Err(_) => None,
        };
        let (staged, etag, last_modified) = if is_url {
            match self.fetch(&source, previous.as_ref())? {
                Fetched::NotModified => {
                    let mut rec = previous.expect("a 304 answers a conditional request");
                    rec.fetched_at = now();
                    write_atomic(&record_path, &record_bytes(&rec))?;
                    return Ok(ImportOutcome { record: rec, change: Change::NotModified });
                }
                Fetched::Body { bytes, etag, last_modified } => {
                    (stage_bytes(bytes, &source)?, etag, last_modified)
                }
            }
        } else {
            (self.stage_path(Path::new(&source))?, None, None)
        };

        let change = match &previous {
            Some(p) if p.sha256 == staged.sha256 => Change::Unchanged,
            Some(_) => Change::Updated,
            None => Change::New,
        };
        let record = FeedRecord {
            id,
            source,
            sha256: staged.sha256.clone(),
            fetched_at: now(),
            etag,
            last_modified,
            format: staged.format,
            directory: matches!(staged.content, Content::Dir(_)),
            vulnerabilities: staged.vulnerabilities,
            entries: staged.entries,
            not_affected: staged.not_affected,
            skipped: staged.skipped,
        };
        // Content first (under its digest), then the record that points at it.
        let data = self.data_path(&staged.sha256);
        match staged.content {
            Content::Bytes(bytes) => {
                if std::fs::symlink_metadata(&data).is_err() {
                    write_atomic(&data, &bytes)?;
                }
            }
            Content::Dir(tmp) => {
                if std::fs::symlink_metadata(&data).is_err() {
                    std::fs::rename(&tmp, &data).map_err(io("cannot store feed", &data))?;
                } else {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
        }
        write_atomic(&record_path, &record_bytes(&record))?;
        if let Some(prev) = previous.filter(|p| p.sha256 != record.sha256) {
            self.remove_unreferenced(&prev.sha256);
        }
        Ok(ImportOutcome { record, change })
    }

    /// Holds the store's lock until the returned file is dropped. Never taken twice by one
    /// thread: flock locks belong to the open file, so a second one would wait for the first.
    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<std::fs::File> {
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot open the feed store lock", &path))?;
        rustix::fs::flock(&file, op).map_err(|e| StoreError::Io {
            what: "cannot lock the feed store",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(file)
    }

    fn data_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("data").join(sha256)
    }

    /// Removes the data of an old version unless another record still points at it.
    fn remove_unreferenced(&self, sha256: &str) {
        let Ok(records) = self.list() else { return };
        if records.iter().any(|r| r.sha256 == sha256) {
            return;
        }
        let p = self.data_path(sha256);
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }

    fn stage_path(&self, path: &Path) -> Result<Staged> {
        let meta = std::fs::metadata(path).map_err(io("cannot read feed", path))?;
        if !meta.is_dir() {
            let bytes = std::fs::read(path).map_err(io("cannot read feed", path))?;
            return stage_bytes(bytes, &path.display().to_string());
        }
        // Copy the records into a private directory first, so the digest, the validation and
        // what is stored are the same bytes.
        let mut files = Vec::new();
        collect_json(path, Path::new(""), &mut files, 0).map_err(io("cannot read feed", path))?;
        files.sort();
        let tmp_root = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp_root).map_err(io("cannot create", &tmp_root))?;
        let tmp = tmp_root.join(format!("import-{}-{}", std::process::id(), unique()));
        let mut hasher = Sha256::new();
        let result = (|| {
            for rel in &files {
                let from = path.join(rel);
                let bytes = std::fs::read(&from).map_err(io("cannot read feed", &from))?;
                let rel_s = rel.to_string_lossy();
                hasher.update((rel_s.len() as u64).to_le_bytes());
                hasher.update(rel_s.as_bytes());
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
                let to = tmp.join(rel);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
                }
                std::fs::write(&to, &bytes).map_err(io("cannot write", &to))?;
            }
            if files.is_empty() {
                std::fs::create_dir_all(&tmp).map_err(io("cannot create", &tmp))?;
            }
            let mut db = Database::new();
            let info = db.load_path(&tmp).map_err(|e| relocate(e, &tmp, path))?.clone();
            Ok((db.vulns.len(), info))
        })();
        match result {
            Ok((vulnerabilities, info)) => Ok(Staged {
                content: Content::Dir(tmp),
                sha256: format!("dir-{}", hex(&hasher.finalize())),
                format: info.format,
                vulnerabilities,
                entries: info.entries,
                not_affected: info.not_affected,
                skipped: info.skipped,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn fetch(&self, url: &str, previous: Option<&FeedRecord>) -> Result<Fetched> {
        let http = |message: String| StoreError::Http { url: url.to_string(), message };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| http(e.to_string()))?;
        let mut req = client.get(url);
        if let Some(prev) = previous {
            if let Some(etag) = &prev.etag {
                req = req.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &prev.last_modified {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        let resp = req.send().map_err(|e| http(error_chain(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && previous.is_some() {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(http(format!("the server answered {status}")));
        }
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);
        let expected_len = resp.content_length();
        let bytes = resp.bytes().map_err(|e| http(format!("download interrupted: {}", error_chain(&e))))?;
        if let Some(n) = expected_len.filter(|&n| n != bytes.len() as u64) {
            return Err(http(format!("download truncated: {} of {n} bytes", bytes.len())));
        }
        Ok(Fetched::Body { bytes: bytes.to_vec(), etag, last_modified })
    }
}

enum Fetched {
    NotModified,
    Body { bytes: Vec<u8>, etag: Option<String>, last_modified: Option<String> },
}

fn stage_bytes(bytes: Vec<u8>, location: &str) -> Result<Staged> {
    let mut db = Database::new();
    let info = db.load_bytes(&bytes, location)?.clone();
    Ok(Staged {
        sha256: hex(&Sha256::digest(&bytes)),
        content: Content::Bytes(bytes),
        format: info.format,
        vulnerabilities: db.vulns.len(),
        entries: info.entries,
        not_affected: info.not_affected,
        skipped: info.skipped,
    })
}

/// Error messages name the source directory, not the private copy.
fn relocate(e: FeedError, tmp: &Path, source: &Path) -> StoreError {
    let fix = |s: String| s.replace(&tmp.display().to_string(), &source.display().to_string());
    StoreError::Feed(match e {
        FeedError::UnknownFormat { location, detail } => {
            FeedError::UnknownFormat { location: fix(location), detail }
        }
        FeedError::Json { location, format, line, column, message } => {
            FeedError::Json { location: fix(location), format, line, column, message }
        }
        FeedError::Zip { location, message } => FeedError::Zip { location: fix(location), message },
        FeedError::Empty { .. } => FeedError::Empty { location: source.display().to_string() },
        other => other,
    })
}

/// Regular `*.json` files under `dir` (as the feed loader reads them: at most 3 levels deep),
/// as paths relative to it.
fn collect_json(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
    if depth > 3 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir.join(rel))? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let r = rel.join(entry.file_name());
        if ft.is_dir() {
            collect_json(dir, &r, out, depth + 1)?;
        } else if ft.is_file() && r.extension().is_some_and(|e| e == "json") {
            out.push(r);
        }
    }
    Ok(())
}

fn read_record(path: &Path) -> Result<FeedRecord> {
    let bytes = std::fs::read(path).map_err(io("cannot read feed record", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Record { path: path.to_path_buf(), message: e.to_string() })
}

fn record_bytes(rec: &FeedRecord) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(rec).expect("a record serialises");
    v.push(b'\n');
    v
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees the old content or the new, never a part.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), unique()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::Io { what: "cannot write", path: path.to_path_buf(), source: e }
    })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64) ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("the current time formats as RFC 3339")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Inventory, ScanOptions, scan};
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn case() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vuln/peer-cases/trivy-debian-buster")
    }

    fn tracker() -> Vec<u8> {
        std::fs::read(case().join("feed/debian-tracker.json")).unwrap()
    }

    /// The vulnerability ids the store's feeds find in the buster case.
    fn ids(store: &FeedStore) -> Vec<String> {
        let inv = Inventory::from_root(&case().join("rootfs")).unwrap();
        let db = store.database().unwrap();
        let mut v: Vec<String> = scan(&inv, &db, &ScanOptions::default())
            .unwrap()
            .findings
            .into_iter()
            .map(|f| f.vulnerability_id)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn import_file_then_unchanged_then_truncated_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FeedStore::open(&tmp.path().join("feeds")).unwrap();
        let feed = tmp.path().join("tracker.json");
        std::fs::write(&feed, tracker()).unwrap();

        let first = store.import(feed.to_str().unwrap()).unwrap();
        assert_eq!(first.change, Change::New);
        assert_eq!(first.record.format, FeedFormat::DebianTracker);
        assert_eq!(first.record.sha256, hex(&Sha256::digest(tracker())));
        assert!(first.record.entries > 0);
        time::OffsetDateTime::parse(&first.record.fetched_at, &time::format_description::well_known::Rfc3339)
            .unwrap();
        let good = ids(&store);
        assert_eq!(good, ["CVE-2019-18224", "CVE-2019-18276"]);

        let again = store.import(feed.to_str().unwrap()).unwrap();
        assert_eq!(again.change, Change::Unchanged);
        assert_eq!(again.record.sha256, first.record.sha256);
        assert_eq!(store.list().unwrap().len(), 1);

        // A truncated copy of the same source is rejected; the stored one keeps answering.
        let bytes = tracker();
        std::fs::write(&feed, &bytes[..bytes.len() / 2]).unwrap();
        let err = store.import(feed.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(ids(&store), good);
        assert_eq!(store.list().unwrap()[0].sha256, first.record.sha256);
    }

    #[test]
    fn an_import_waits_for_another_processes_import() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FeedStore::open(&tmp.path().join("feeds")).unwrap();
        let feed = tmp.path().join("tracker.json");
        std::fs::write(&feed, tracker()).unwrap();
        // A separate open of the lock file stands in for another kiln process mid-import.
        let held = store.lock(rustix::fs::FlockOperation::LockExclusive).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = {
            let store = store.clone();
            let feed = feed.to_str().unwrap().to_string();
            std::thread::spawn(move || tx.send(store.import(&feed).map(|o| o.change)).unwrap())
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the import went ahead while another import held the store"
        );
        assert!(store.list().unwrap().is_empty());
        drop(held);
        let change = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(change, Change::New);
        worker.join().unwrap();
        assert_eq!(ids(&store), ["CVE-2019-18224", "CVE-2019-18276"]);
    }

    #[test]
    fn concurrent_imports_of_one_source_leave_one_consistent_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("feeds");
        let feed = tmp.path().join("tracker.json");
        std::fs::write(&feed, tracker()).unwrap();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (dir, feed) = (dir.clone(), feed.clone());
                std::thread::spawn(move || {
                    FeedStore::open(&dir).unwrap().import(feed.to_str().unwrap()).map(|o| o.change)
                })
            })
            .collect();
        let changes: Vec<Change> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        // Serialised: exactly one saw the source first; the others found it stored.
        assert_eq!(changes.iter().filter(|c| **c == Change::New).count(), 1, "{changes:?}");
        assert_eq!(changes.iter().filter(|c| **c == Change::Unchanged).count(), 5, "{changes:?}");
        let store = FeedStore::open(&dir).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(ids(&store), ["CVE-2019-18224", "CVE-2019-18276"]);
    }

    #[test]
    fn wrong_format_is_rejected_and_nothing_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FeedStore::open(&tmp.path().join("feeds")).unwrap();
        let feed = tmp.path().join("cyclonedx.json");
        std::fs::write(&feed, br#"{"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}"#)
            .unwrap();
        let err = store.import(feed.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, StoreError::Feed(FeedError::UnknownFormat { .. })), "{err}");
        assert!(store.list().unwrap().is_empty());
        let err = store.import(tmp.path().join("missing.json").to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    #[test]
    fn osv_directory_is_copied_and_answers() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FeedStore::open(&tmp.path().join("feeds")).unwrap();
        let out = store.import(case().join("feed/osv").to_str().unwrap()).unwrap();
        assert_eq!(out.record.format, FeedFormat::Osv);
        assert!(out.record.directory);
        assert_eq!(
            store.import(case().join("feed/osv").to_str().unwrap()).unwrap().change,
            Change::Unchanged
        );
        assert_eq!(ids(&store), ["CVE-2019-18224", "CVE-2019-18276"]);
        assert!(std::fs::read_dir(tmp.path().join("feeds/tmp")).unwrap().next().is_none());
    }

    /// A one-thread HTTP server: answers `responses` in order, records the request headers.
    fn serve(responses: Vec<Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/tracker.json", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let handle = std::thread::spawn(move || {
            for resp in responses {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                seen2.lock().unwrap().push(head);
                let _ = stream.write_all(&resp);
                let _ = stream.flush();
            }
        });
        (url, seen, handle)
    }

    fn response(status: &str, headers: &str, body: &[u8], claimed_len: usize) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {claimed_len}\r\nConnection: close\r\n{headers}\r\n"
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn http_etag_then_304_then_truncated_download() {
        let body = tracker();
        let (url, seen, handle) = serve(vec![
            response(
                "200 OK",
                "ETag: \"v1\"\r\nLast-Modified: Tue, 01 Oct 2024 10:00:00 GMT\r\n",
                &body,
                body.len(),
            ),
            response("304 Not Modified", "ETag: \"v1\"\r\n", b"", 0),
            response("200 OK", "ETag: \"v2\"\r\n", &body[..body.len() / 2], body.len()),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let store = FeedStore::open(&tmp.path().join("feeds")).unwrap();

        let first = store.import(&url).unwrap();
        assert_eq!(first.change, Change::New);
        assert_eq!(first.record.etag.as_deref(), Some("\"v1\""));
        assert_eq!(first.record.last_modified.as_deref(), Some("Tue, 01 Oct 2024 10:00:00 GMT"));
        assert_eq!(first.record.source, url);

        let second = store.import(&url).unwrap();
        assert_eq!(second.change, Change::NotModified);
        assert_eq!(second.record.sha256, first.record.sha256);

        let err = store.import(&url).unwrap_err();
        assert!(matches!(err, StoreError::Http { .. }), "{err}");
        assert_eq!(ids(&store), ["CVE-2019-18224", "CVE-2019-18276"]);
        assert_eq!(store.list().unwrap()[0].etag.as_deref(), Some("\"v1\""));

        handle.join().unwrap();
        let seen = seen.lock().unwrap();
        assert!(!seen[0].contains("if-none-match"));
        assert!(seen[1].contains("if-none-match: \"v1\""), "{}", seen[1]);
        assert!(seen[1].contains("if-modified-since: tue, 01 oct 2024 10:00:00 gmt"), "{}", seen[1]);
    }
}
