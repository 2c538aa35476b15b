//! Vulnerability feeds: the Debian Security Tracker JSON and OSV records, parsed into one
//! in-memory index keyed by source package.
//!
//! The format is detected from the content, never from a file name. Loading is all or nothing:
//! a feed is parsed into a staging [`Database`] and only merged when every file of it parsed, so
//! a truncated or wrong file leaves what was loaded before untouched. Individual values a real
//! feed could carry but kiln cannot use (an unparsable version, an unknown status) skip that one
//! entry and are counted in [`FeedInfo::warnings`], because one odd line in a 60 MB feed must
//! not block every update.
//!
//! The tracker JSON is deserialized with visitors that index each issue as it is read, so the
//! whole document is never held as a tree (peak memory stays near the size of the index).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeSeed, MapAccess, Visitor};

use crate::inventory::debian_codename;
use crate::severity::{Cvss, Severity, cvss3_base_score};
use crate::version::Version;

/// Which kind of document a feed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedFormat {
    /// `https://security-tracker.debian.org/tracker/data/json`.
    DebianTracker,
    /// OSV records (one file, a directory of them, or a zip such as OSV's Debian export).
    Osv,
}

impl FeedFormat {
    /// The name findings carry as their feed (`debian-security-tracker`, `osv`).
    pub fn as_str(self) -> &'static str {
        match self {
            FeedFormat::DebianTracker => "debian-security-tracker",
            FeedFormat::Osv => "osv",
        }
    }
}

/// What was loaded from one feed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeedInfo {
    /// Name findings carry (the format's name unless the caller gave one).
    pub name: String,
    /// The detected format.
    pub format: FeedFormat,
    /// Where it was read from.
    pub location: String,
    /// The feed's date (RFC 3339): the newest OSV `modified`, else the file's modification time,
    /// unless the caller set it (for example to the fetch time).
    pub date: Option<String>,
    /// (source package, vulnerability, release) entries indexed.
    pub entries: usize,
    /// Entries that say "not affected" (tracker `fixed_version: "0"`), counted, not indexed.
    pub not_affected: usize,
    /// Entries skipped because a value was unusable, with the first few reasons.
    pub warnings: Vec<String>,
    /// Total number of skipped entries (warnings holds at most [`MAX_WARNINGS`]).
    pub skipped: usize,
}

/// How many skip reasons a [`FeedInfo`] keeps verbatim.
pub const MAX_WARNINGS: usize = 20;

/// A feed could not be loaded; nothing of it was merged.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The file or directory could not be read.
    #[error("cannot read feed {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The content is neither tracker JSON, OSV JSON nor a zip of OSV JSON.
    #[error(
        "feed {location} is not a vulnerability feed kiln reads ({detail}); give the Debian Security Tracker \
         JSON, an OSV JSON record, or a directory or zip of OSV records"
    )]
    UnknownFormat {
        /// Where.
        location: String,
        /// What was seen instead.
        detail: String,
    },
    /// The JSON is malformed or truncated, or has the wrong shape for its format.
    #[error(
        "feed {location} ({format}) is not valid at line {line}, column {column}: {message}; the file may be \
         truncated or corrupt, fetch it again"
    )]
    Json {
        /// Where (file, or `zip!member`).
        location: String,
        /// The detected format's name.
        format: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// The zip archive is corrupt.
    #[error("feed {location} is a corrupt zip archive: {message}; fetch it again")]
    Zip {
        /// Where.
        location: String,
        /// What the zip reader said.
        message: String,
    },
    /// A directory or zip held no OSV records.
    #[error("feed {location} holds no .json files; give a directory or zip of OSV records")]
    Empty {
        /// Where.
        location: String,
    },
}

/// The Debian tracker's view of one (source, vulnerability, release) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackerStatus {
    /// Fixed in `fixed_version` (for the release's archive).
    Resolved,
    /// Not fixed in the release.
    Open,
    /// Not yet known whether it is affected.
    Undetermined,
}

/// Why Debian will not ship a DSA for an open issue (`nodsa_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoDsa {
    /// `<no-dsa>`: minor issue, may be fixed in a point release.
    NoDsa,
    /// `<ignored>`: will not be fixed.
    Ignored,
    /// `<postponed>`: a fix is deferred.
    Postponed,
}

/// A version interval in which a package is affected. `introduced: None` means from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffectedRange {
    /// `introduced ≤ v < fixed` (no `fixed`: unbounded).
    Until {
        /// First affected version.
        introduced: Option<Version>,
        /// First fixed version.
        fixed: Option<Version>,
    },
    /// `introduced ≤ v ≤ last_affected`.
    Through {
        /// First affected version.
        introduced: Option<Version>,
        /// Last affected version.
        last_affected: Version,
    },
    /// Exactly this version (OSV `versions` lists without ranges).
    Exact(Version),
}

impl AffectedRange {
    /// Whether `v` lies in the range.
    pub fn contains(&self, v: &Version) -> bool {
        match self {
            AffectedRange::Until { introduced, fixed } => {
                introduced.as_ref().is_none_or(|i| v >= i) && fixed.as_ref().is_none_or(|f| v < f)
            }
            AffectedRange::Through { introduced, last_affected } => {
                introduced.as_ref().is_none_or(|i| v >= i) && v <= last_affected
            }
            AffectedRange::Exact(e) => v == e,
        }
    }

    /// The fix that ends this range, if any.
    pub fn fixed(&self) -> Option<&Version> {
        match self {
            AffectedRange::Until { fixed, .. } => fixed.as_ref(),
            _ => None,
        }
    }
}

/// Text and scores of one vulnerability as one feed gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct VulnInfo {
    /// The id findings use (`CVE-2024-1234`, `TEMP-…`, or an advisory id when it names no CVE).
    pub id: String,
    /// Other ids (`DEBIAN-CVE-…`, `DSA-…`, `DLA-…`, aliases).
    pub aliases: Vec<String>,
    /// Summary or description.
    pub description: Option<String>,
    /// Scores the feed publishes.
    pub cvss: Vec<Cvss>,
    /// Index into [`Database::feeds`].
    pub feed: usize,
}

/// One (source package, vulnerability, release) statement of a feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Index into [`Database::vulns`].
    pub vuln: u32,
    /// Release codename (`bookworm`).
    pub release: Box<str>,
    /// Tracker status (OSV: resolved when a range has a fix, else open).
    pub status: TrackerStatus,
    /// Where the package is affected; empty never matches.
    pub ranges: Vec<AffectedRange>,
    /// The raw urgency (`low**`, `not yet assigned`).
    pub urgency: Option<Box<str>>,
    /// `nodsa_reason`, for open issues.
    pub nodsa: Option<NoDsa>,
    /// Whether the entry is the per-vulnerability record (tracker, OSV `DEBIAN-CVE-…`) rather than
    /// one derived from an advisory (DSA/DLA/DTSA) that only says which update fixed it.
    pub primary: bool,
}

impl Entry {
    /// Whether the urgency says the release is end-of-life for this package.
    pub fn is_end_of_life(&self) -> bool {
        self.urgency.as_deref() == Some("end-of-life")
    }
}

/// Every loaded feed, indexed by source package.
#[derive(Debug, Default)]
pub struct Database {
    /// The feeds, in the order loaded (earlier ones take precedence when two disagree).
    pub feeds: Vec<FeedInfo>,
    /// Vulnerability texts.
    pub vulns: Vec<VulnInfo>,
    by_source: HashMap<Box<str>, Vec<Entry>>,
}

impl Database {
    /// An empty database.
    pub fn new() -> Database {
        Database::default()
    }

    /// Entries for a source package.
    pub fn entries_for(&self, source: &str) -> &[Entry] {
        self.by_source.get(source).map_or(&[], Vec::as_slice)
    }

    /// Number of indexed entries.
    pub fn len(&self) -> usize {
        self.by_source.values().map(Vec::len).sum()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    /// Loads a feed from a file (tracker JSON, OSV JSON, zip of OSV) or a directory of OSV
    /// files. On error nothing is changed.
    pub fn load_path(&mut self, path: &Path) -> Result<&FeedInfo, FeedError> {
        let io = |source| FeedError::Io { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let location = path.display().to_string();
        let mtime = meta.modified().ok().and_then(rfc3339);
        let mut staging = Staging::new(self.feeds.len(), &location);
        if meta.is_dir() {
            staging.format = Some(FeedFormat::Osv);
            let mut files = Vec::new();
            collect_json_files(path, &mut files, 0).map_err(io)?;
            if files.is_empty() {
                return Err(FeedError::Empty { location });
            }
            files.sort();
            for f in files {
                let bytes = std::fs::read(&f).map_err(|source| FeedError::Io { path: f.clone(), source })?;
                staging.load_osv_bytes(&bytes, &f.display().to_string())?;
            }
        } else {
            let bytes = std::fs::read(path).map_err(io)?;
            staging.load_bytes(&bytes, &location)?;
        }
        staging.date_fallback = mtime;
        Ok(self.absorb(staging))
    }

    /// Loads a feed held in memory (`location` names it in messages). On error nothing changes.
    pub fn load_bytes(&mut self, bytes: &[u8], location: &str) -> Result<&FeedInfo, FeedError> {
        let mut staging = Staging::new(self.feeds.len(), location);
        staging.load_bytes(bytes, location)?;
        Ok(self.absorb(staging))
    }

    /// Renames the last loaded feed and/or sets its date (e.g. the fetch time).
    pub fn set_last_feed_meta(&mut self, name: Option<&str>, date: Option<&str>) {
        if let Some(f) = self.feeds.last_mut() {
            if let Some(n) = name {
                f.name = n.to_string();
            }
            if let Some(d) = date {
                f.date = Some(d.to_string());
            }
        }
    }

    fn absorb(&mut self, s: Staging) -> &FeedInfo {
        let offset = self.vulns.len() as u32;
        let format = s.format.unwrap_or(FeedFormat::Osv);
        let entries: usize = s.entries.values().map(Vec::len).sum();
        self.vulns.extend(s.vulns);
        for (src, mut list) in s.entries {
            for e in &mut list {
                e.vuln += offset;
            }
            self.by_source.entry(src).or_default().extend(list);
        }
        self.feeds.push(FeedInfo {
            name: format.as_str().to_string(),
            format,
            location: s.location,
            date: s.max_modified.or(s.date_fallback),
            entries,
            not_affected: s.not_affected,
            warnings: s.warnings,
            skipped: s.skipped,
        });
        self.feeds.last().expect("just pushed")
    }
}

fn rfc3339(t: std::time::SystemTime) -> Option<String> {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339).ok()
}

fn collect_json_files(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
    // OSV exports are flat; a little depth allows `osv/Debian/*.json` layouts without walking
    // an accidentally given home directory forever.
    if depth > 3 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let p = entry.path();
        if ft.is_dir() {
            collect_json_files(&p, out, depth + 1)?;
        } else if ft.is_file() && p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// Keys that open an OSV record; a tracker document's keys are source package names.
const OSV_KEYS: &[&str] = &[
    "id",
    "schema_version",
    "modified",
    "published",
    "withdrawn",
    "aliases",
    "upstream",
    "related",
    "summary",
    "details",
    "severity",
    "affected",
    "references",
    "credits",
    "database_specific",
];

enum Detected {
    Zip,
    Tracker,
    OsvRecord,
    OsvList,
}

fn detect(bytes: &[u8], location: &str) -> Result<Detected, FeedError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(Detected::Zip);
    }
    let unknown = |detail: String| FeedError::UnknownFormat { location: location.to_string(), detail };
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut i =
        text.iter().position(|b| !b.is_ascii_whitespace()).ok_or_else(|| unknown("it is empty".into()))?;
    match text[i] {
        b'[' => return Ok(Detected::OsvList),
        b'{' => {}
        _ => return Err(unknown("it is not JSON: it does not start with `{`, `[` or a zip header".into())),
    }
    i += 1;
    while i < text.len() && text[i].is_ascii_whitespace() {
        i += 1;
    }
    match text.get(i) {
        // `{}`: an empty tracker document is valid (and indexes nothing).
        Some(b'}') => return Ok(Detected::Tracker),
        Some(b'"') => {}
        None => return Ok(Detected::Tracker), // truncated: the JSON parser reports where
        _ => return Err(unknown("its first object key is not a string".into())),
    }
    let start = i + 1;
    let end =
        text[start..].iter().position(|&b| b == b'"' || b == b'\\').map(|p| start + p).unwrap_or(text.len());
    let key = String::from_utf8_lossy(&text[start..end]);
    if OSV_KEYS.contains(&key.as_ref()) {
        return Ok(Detected::OsvRecord);
    }
    // Tracker JSON maps a source package to an object of issues; anything else (a CycloneDX
    // document's `"bomFormat": "CycloneDX"`, say) is some other JSON.
    let mut j = end + 1;
    while j < text.len() && (text[j].is_ascii_whitespace() || text[j] == b':') {
        j += 1;
    }
    match text.get(j) {
        Some(b'{') | None => Ok(Detected::Tracker),
        Some(_) => Err(unknown(format!(
            "its first key {key:?} holds no object of issues, as tracker JSON would, and is not an OSV field"
        ))),
    }
}

fn json_error(e: serde_json::Error, location: &str, format: FeedFormat) -> FeedError {
    FeedError::Json {
        location: location.to_string(),
        format: format.as_str(),
        line: e.line(),
        column: e.column(),
        message: e.to_string().split(" at line ").next().unwrap_or("").to_string(),
    }
}

/// A feed being loaded; merged into the [`Database`] only when complete.
struct Staging {
    feed: usize,
    location: String,
    format: Option<FeedFormat>,
    vulns: Vec<VulnInfo>,
    entries: HashMap<Box<str>, Vec<Entry>>,
    releases: HashMap<String, Box<str>>,
    not_affected: usize,
    warnings: Vec<String>,
    skipped: usize,
    max_modified: Option<String>,
    date_fallback: Option<String>,
}

impl Staging {
    fn new(feed: usize, location: &str) -> Staging {
        Staging {
            feed,
            location: location.to_string(),
            format: None,
            vulns: Vec::new(),
            entries: HashMap::new(),
            releases: HashMap::new(),
            not_affected: 0,
            warnings: Vec::new(),
            skipped: 0,
            max_modified: None,
            date_fallback: None,
        }
    }

    fn warn(&mut self, msg: String) {
        self.skipped += 1;
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(msg);
        }
    }

    fn release(&mut self, name: &str) -> Box<str> {
        // Interned so 200,000 entries share a handful of codename strings' worth of text.
        if let Some(r) = self.releases.get(name) {
            return r.clone();
        }
        let b: Box<str> = name.into();
        self.releases.insert(name.to_string(), b.clone());
        b
    }

    fn set_format(&mut self, f: FeedFormat, location: &str) -> Result<(), FeedError> {
        match self.format {
            Some(existing) if existing != f => Err(FeedError::UnknownFormat {
                location: location.to_string(),
                detail: format!("it is {} inside a feed of {}", f.as_str(), existing.as_str()),
            }),
            _ => {
                self.format = Some(f);
                Ok(())
            }
        }
    }

    fn load_bytes(&mut self, bytes: &[u8], location: &str) -> Result<(), FeedError> {
        match detect(bytes, location)? {
            Detected::Zip => self.load_zip(bytes, location),
            Detected::Tracker => {
                self.set_format(FeedFormat::DebianTracker, location)?;
                let mut de = serde_json::Deserializer::from_slice(bytes);
                TrackerRoot(self)
                    .deserialize(&mut de)
                    .and_then(|()| de.end())
                    .map_err(|e| json_error(e, location, FeedFormat::DebianTracker))
            }
            Detected::OsvRecord | Detected::OsvList => self.load_osv_bytes(bytes, location),
        }
    }

    fn load_zip(&mut self, bytes: &[u8], location: &str) -> Result<(), FeedError> {
        let zerr = |e: zip::result::ZipError| FeedError::Zip {
            location: location.to_string(),
            message: e.to_string(),
        };
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zerr)?;
        let mut n = 0;
        for i in 0..archive.len() {
            let mut file = archive.by_index(i).map_err(zerr)?;
            if !file.is_file() || !file.name().ends_with(".json") {
                continue;
            }
            let member = format!("{location}!{}", file.name());
            // Declared sizes can lie; the read is capped anyway.
            let mut buf = Vec::new();
            (&mut file)
                .take(crate::rootfs::MAX_FILE_SIZE)
                .read_to_end(&mut buf)
                .map_err(|e| FeedError::Zip { location: member.clone(), message: e.to_string() })?;
            self.load_osv_bytes(&buf, &member)?;
            n += 1;
        }
        if n == 0 {
            return Err(FeedError::Empty { location: location.to_string() });
        }
        Ok(())
    }

    fn load_osv_bytes(&mut self, bytes: &[u8], location: &str) -> Result<(), FeedError> {
        let many = match detect(bytes, location)? {
            Detected::OsvRecord => false,
            Detected::OsvList => true,
            Detected::Zip => {
                return Err(FeedError::UnknownFormat {
                    location: location.to_string(),
                    detail: "a zip inside an OSV feed".into(),
                });
            }
            Detected::Tracker => {
                return Err(FeedError::UnknownFormat {
                    location: location.to_string(),
                    detail: "it looks like Debian tracker JSON inside an OSV directory or zip".into(),
                });
            }
        };
        self.set_format(FeedFormat::Osv, location)?;
        let err = |e| json_error(e, location, FeedFormat::Osv);
        if many {
            let list: Vec<OsvRecord> = serde_json::from_slice(bytes).map_err(err)?;
            list.into_iter().for_each(|r| self.add_osv(r));
        } else {
            let rec: OsvRecord = serde_json::from_slice(bytes).map_err(err)?;
            self.add_osv(rec);
        }
        Ok(())
    }

    fn push_entry(&mut self, source: &str, entry: Entry) {
        if let Some(list) = self.entries.get_mut(source) {
            list.push(entry);
        } else {
            self.entries.insert(source.into(), vec![entry]);
        }
    }

    fn add_tracker(&mut self, source: &str, id: String, issue: TrackerIssue) {
        let releases = match issue.releases {
            TrackerReleases::Map(m) => m,
            // The tracker writes `"releases": []` for issues with no release entries.
            TrackerReleases::List => return,
        };
        let mut vuln: Option<u32> = None;
        for (rel, r) in releases {
            let status = match r.status.as_str() {
                "resolved" => TrackerStatus::Resolved,
                "open" => TrackerStatus::Open,
                "undetermined" => TrackerStatus::Undetermined,
                other => {
                    self.warn(format!("{source} {id} {rel}: unknown status {other:?}, entry skipped"));
                    continue;
                }
            };
            if let Some(u) = r.urgency.as_deref()
                && Severity::from_debian_urgency(u).is_none()
            {
                self.warn(format!("{source} {id} {rel}: unknown urgency {u:?}, treated as not yet assigned"));
            }
            let ranges = match (status, r.fixed_version.as_deref()) {
                (TrackerStatus::Resolved, Some("0")) => {
                    self.not_affected += 1;
                    continue;
                }
                (TrackerStatus::Resolved, Some(fv)) => match Version::parse(fv) {
                    Ok(v) => vec![AffectedRange::Until { introduced: None, fixed: Some(v) }],
                    Err(e) => {
                        self.warn(format!("{source} {id} {rel}: {e}; entry skipped"));
                        continue;
                    }
                },
                (TrackerStatus::Resolved, None) => {
                    self.warn(format!("{source} {id} {rel}: resolved without fixed_version; entry skipped"));
                    continue;
                }
                _ => vec![AffectedRange::Until { introduced: None, fixed: None }],
            };
            let nodsa = match r.nodsa_reason.as_deref() {
                Some("ignored") => Some(NoDsa::Ignored),
                Some("postponed") => Some(NoDsa::Postponed),
                _ if r.nodsa.is_some() => Some(NoDsa::NoDsa),
                _ => None,
            };
            let v = *vuln.get_or_insert_with(|| {
                self.vulns.push(VulnInfo {
                    id: id.clone(),
                    aliases: Vec::new(),
                    description: issue.description.clone(),
                    cvss: Vec::new(),
                    feed: self.feed,
                });
                (self.vulns.len() - 1) as u32
            });
            let entry = Entry {
                vuln: v,
                release: self.release(&rel),
                status,
                ranges,
                urgency: r.urgency.map(Into::into),
                nodsa: if status == TrackerStatus::Open { nodsa } else { None },
                primary: true,
            };
            self.push_entry(source, entry);
        }
    }

    fn add_osv(&mut self, rec: OsvRecord) {
        if rec.withdrawn.is_some() {
            return;
        }
        if let Some(m) = &rec.modified
            && self.max_modified.as_ref().is_none_or(|cur| m > cur)
        {
            self.max_modified = Some(m.clone());
        }
        let is_advisory = ["DSA-", "DLA-", "DTSA-"].iter().any(|p| rec.id.starts_with(p));
        let mut others: Vec<String> = Vec::new();
        for a in rec.upstream.iter().chain(&rec.aliases) {
            if !others.contains(a) && *a != rec.id {
                others.push(a.clone());
            }
        }
        // (vulnerability id, aliases) pairs this record speaks for.
        let ids: Vec<(String, Vec<String>)> = if is_advisory {
            let cves: Vec<&String> = others.iter().filter(|a| !a.starts_with("DEBIAN-")).collect();
            if cves.is_empty() {
                vec![(rec.id.clone(), others.clone())]
            } else {
                cves.into_iter().map(|c| (c.clone(), vec![rec.id.clone()])).collect()
            }
        } else if let Some(cve) = rec.id.strip_prefix("DEBIAN-") {
            let mut aliases = vec![rec.id.clone()];
            aliases.extend(others.iter().filter(|a| a.as_str() != cve).cloned());
            vec![(cve.to_string(), aliases)]
        } else {
            vec![(rec.id.clone(), others.clone())]
        };
        let source_name = self.format.map_or("osv", FeedFormat::as_str).to_string();
        let mut cvss: Vec<Cvss> = rec.severity.iter().filter_map(|s| osv_cvss(s, &source_name)).collect();
        let description = rec.summary.clone().or(rec.details.clone());
        let mut vuln_ids: Vec<u32> = Vec::new();
        for affected in &rec.affected {
            let Some(pkg) = &affected.package else { continue };
            let Some(rel) = osv_release(&pkg.ecosystem) else {
                if pkg.ecosystem.starts_with("Debian") {
                    self.warn(format!(
                        "{}: ecosystem {:?} names no known Debian release",
                        rec.id, pkg.ecosystem
                    ));
                }
                continue;
            };
            let mut ranges = Vec::new();
            let mut bad = None;
            for r in affected.ranges.iter().filter(|r| r.kind == "ECOSYSTEM") {
                if let Err(e) = osv_ranges(&r.events, &mut ranges) {
                    bad = Some(e);
                }
            }
            if affected.ranges.is_empty() {
                for v in &affected.versions {
                    match Version::parse(v) {
                        Ok(v) => ranges.push(AffectedRange::Exact(v)),
                        Err(e) => bad = Some(e.to_string()),
                    }
                }
            }
            if let Some(e) = bad {
                self.warn(format!("{} {} {}: {e}; entry skipped", rec.id, pkg.name, pkg.ecosystem));
                continue;
            }
            if ranges.is_empty() {
                continue;
            }
            cvss.extend(affected.severity.iter().filter_map(|s| osv_cvss(s, &source_name)));
            let urgency = affected
                .ecosystem_specific
                .as_ref()
                .and_then(|v| v.get("urgency"))
                .and_then(|v| v.as_str())
                .map(|s| s.into());
            let status = if ranges.iter().any(|r| r.fixed().is_some()) {
                TrackerStatus::Resolved
            } else {
                TrackerStatus::Open
            };
            if vuln_ids.is_empty() {
                for (id, aliases) in &ids {
                    self.vulns.push(VulnInfo {
                        id: id.clone(),
                        aliases: aliases.clone(),
                        description: description.clone(),
                        cvss: cvss.clone(),
                        feed: self.feed,
                    });
                    vuln_ids.push((self.vulns.len() - 1) as u32);
                }
            }
            let release = self.release(rel);
            for &v in &vuln_ids {
                let entry = Entry {
                    vuln: v,
                    release: release.clone(),
                    status,
                    ranges: ranges.clone(),
                    urgency: urgency.clone(),
                    nodsa: None,
                    primary: !is_advisory,
                };
                self.push_entry(&pkg.name, entry);
            }
        }
    }
}

/// `Debian:12` → `bookworm`; `Debian:13` → `trixie`. Bare `Debian` (no release) → None.
fn osv_release(ecosystem: &str) -> Option<&'static str> {
    let num = ecosystem.strip_prefix("Debian:")?;
    debian_codename(num.split('.').next()?)
}

fn osv_ranges(events: &[OsvEvent], out: &mut Vec<AffectedRange>) -> Result<(), String> {
    let parse = |s: &str| -> Result<Option<Version>, String> {
        if s == "0" { Ok(None) } else { Version::parse(s).map(Some).map_err(|e| e.to_string()) }
    };
    let mut open: Option<Option<Version>> = None;
    for ev in events {
        if let Some(i) = &ev.introduced {
            if let Some(start) = open.take() {
                out.push(AffectedRange::Until { introduced: start, fixed: None });
            }
            open = Some(parse(i)?);
        } else if let Some(f) = &ev.fixed {
            let start = open.take().unwrap_or(None);
            out.push(AffectedRange::Until {
                introduced: start,
                fixed: Some(Version::parse(f).map_err(|e| e.to_string())?),
            });
        } else if let Some(l) = &ev.last_affected {
            let start = open.take().unwrap_or(None);
            let last = Version::parse(l).map_err(|e| e.to_string())?;
            out.push(AffectedRange::Through { introduced: start, last_affected: last });
        }
    }
    if let Some(start) = open {
        out.push(AffectedRange::Until { introduced: start, fixed: None });
    }
    Ok(())
}

fn osv_cvss(s: &OsvSeverity, source: &str) -> Option<Cvss> {
    let version = match s.kind.as_str() {
        "CVSS_V2" => "2.0".to_string(),
        "CVSS_V3" => {
            s.score.strip_prefix("CVSS:").and_then(|r| r.split('/').next()).unwrap_or("3.1").to_string()
        }
        "CVSS_V4" => "4.0".to_string(),
        _ => return None,
    };
    Some(Cvss {
        base_score: cvss3_base_score(&s.score),
        scoring_vector: s.score.clone(),
        version,
        source: source.to_string(),
    })
}

// ---- serde shapes ----

#[derive(Deserialize)]
struct TrackerIssue {
    description: Option<String>,
    #[serde(default)]
    releases: TrackerReleases,
}

#[derive(Default)]
enum TrackerReleases {
    Map(std::collections::BTreeMap<String, TrackerRelease>),
    #[default]
    List,
}

// Hand-written rather than `#[serde(untagged)]`: untagged enums replace the real error (say, a
// release entry without `status`) by "did not match any variant", losing what was wrong.
impl<'de> Deserialize<'de> for TrackerReleases {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TrackerReleases;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of releases (or an empty list)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = std::collections::BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, TrackerRelease>()? {
                    out.insert(k, v);
                }
                Ok(TrackerReleases::Map(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(TrackerReleases::List)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct TrackerRelease {
    status: String,
    fixed_version: Option<String>,
    urgency: Option<String>,
    nodsa: Option<String>,
    nodsa_reason: Option<String>,
}

struct TrackerRoot<'a>(&'a mut Staging);

impl<'de> DeserializeSeed<'de> for TrackerRoot<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TrackerRoot<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of source packages")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(source) = map.next_key::<String>()? {
            map.next_value_seed(TrackerPackage { source: &source, st: self.0 })?;
        }
        Ok(())
    }
}

struct TrackerPackage<'a> {
    source: &'a str,
    st: &'a mut Staging,
}

impl<'de> DeserializeSeed<'de> for TrackerPackage<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TrackerPackage<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object of issues for source package {}", self.source)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(id) = map.next_key::<String>()? {
            let issue: TrackerIssue = map.next_value()?;
            self.st.add_tracker(self.source, id, issue);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct OsvRecord {
    id: String,
    modified: Option<String>,
    withdrawn: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    upstream: Vec<String>,
    summary: Option<String>,
    details: Option<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: Option<OsvPackage>,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    versions: Vec<String>,
    ecosystem_specific: Option<serde_json::Value>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<OsvEvent>,
}

#[derive(Deserialize)]
struct OsvEvent {
    introduced: Option<String>,
    fixed: Option<String>,
    last_affected: Option<String>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}
