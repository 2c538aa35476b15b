//! What changed since an image was built: the dependency updates behind Image Builder's
//! `EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE` start condition.
//!
//! An image's manifest records what it was made from (see `pipeline.rs`): the parent
//! (`parent.reference`, and in `parent.info` the bootstrap spec and package list, the imported
//! file's digest, or the ARN of the kiln image it was built on), every component's name,
//! version and document digest, the layer keys and the installed packages. [`Kiln::dependency_changes`]
//! compares that with what a build would get today:
//!
//! - **parent**: a managed Debian parent would bootstrap differently when the mirror offers
//!   other versions of the base's packages than the base has (or the recipe's bootstrap
//!   settings changed); a kiln image parent has a newer AVAILABLE build matching the recipe's
//!   version filter; a disk or tarball parent's file has another SHA-256.
//! - **components**: a version filter (`1.x.x`) now resolves to a newer version, or a
//!   component's document digest differs (built-ins included).
//! - **packages**: the image's own apt sources offer other versions of its installed packages
//!   (updates exist).
//!
//! The package questions go to a [`PackageIndex`]: [`SandboxIndex`] runs `apt-get update` and
//! `apt-cache policy` in the namespace sandbox over a throw-away overlay of the image's own
//! layers with the host's network (the image's apt, keyrings and sources; nothing of the host's
//! apt state is touched); [`FixtureIndex`] answers from a table for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_host::{ExecRequest, Host};
use kiln_model::{ResourceFile, SemVer, VersionFilter};
use kiln_sandbox::{Network, RootSpec, Sandbox, SandboxConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Kiln;

/// How many items a summary names before "and N more".
const SHOWN: usize = 5;

/// Why dependencies could not be checked. A scheduler that gets one cannot tell whether
/// anything changed; [`crate::schedule::decide`] builds in that case and says why.
#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    /// The image has no manifest (not built to the end), or it lacks what a check needs.
    #[error("image {arn}: {message}")]
    Manifest { arn: String, message: String },
    /// The recipe to check cannot be read.
    #[error("recipe: {0}")]
    Recipe(String),
    /// A component reference no longer resolves (a build would fail the same way).
    #[error("component {name}: {message}")]
    Component { name: String, message: String },
    /// The parent cannot be resolved or read (a build would fail the same way).
    #[error("parent image: {0}")]
    Parent(String),
    /// The image's layers were pruned from the cache, so there is no tree to ask apt in.
    #[error(
        "image {arn}: layer(s) {} are no longer in the layer cache; the package check needs the image's tree (a rebuild makes them again)",
        missing.join(", ")
    )]
    LayersMissing { arn: String, missing: Vec<String> },
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// apt failed inside the sandbox (usually the mirror could not be reached).
    #[error("{command} failed ({status}): {stderr}")]
    Apt { command: String, status: String, stderr: String },
    #[error("catalogue: {0}")]
    Store(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// What kind of dependency changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeKind {
    Parent,
    Component,
    Packages,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Parent => "parent",
            ChangeKind::Component => "component",
            ChangeKind::Packages => "packages",
        })
    }
}

/// One dependency that differs from what the image was built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyChange {
    pub kind: ChangeKind,
    /// What changed: the parent reference, a component name, a package name.
    pub subject: String,
    /// What the image has (a version, an ARN, a digest), when there is one.
    pub from: Option<String>,
    /// What a build would get now, when there is one.
    pub to: Option<String>,
    /// For people and logs: `openssl 3.0.11-1~deb12u1 → 3.0.11-1~deb12u2 available`.
    pub reason: String,
}

impl fmt::Display for DependencyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

/// One line for a log: the changes by kind, each kind naming its first few.
pub fn summary(changes: &[DependencyChange]) -> String {
    let mut parts = Vec::new();
    for kind in [ChangeKind::Parent, ChangeKind::Component, ChangeKind::Packages] {
        let reasons: Vec<&str> =
            changes.iter().filter(|c| c.kind == kind).map(|c| c.reason.as_str()).collect();
        if reasons.is_empty() {
            continue;
        }
        let mut text = reasons[..reasons.len().min(SHOWN)].join(", ");
        if reasons.len() > SHOWN {
            text.push_str(&format!(" and {} more", reasons.len() - SHOWN));
        }
        parts.push(format!("{kind} ({}): {text}", reasons.len()));
    }
    if parts.is_empty() { "no dependency changed".into() } else { parts.join("; ") }
}

/// One question to apt: the candidate versions of `packages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceQuery {
    /// One-line apt sources (`deb URL SUITE COMPONENT...`) used instead of the tree's own;
    /// `None` asks the tree's own sources.
    pub sources: Option<Vec<String>>,
    pub packages: Vec<String>,
}

/// Package name → the version apt would install now. Packages apt has no candidate for are
/// absent.
pub type Candidates = BTreeMap<String, String>;

/// Answers what versions apt sources offer, in an image's tree.
pub trait PackageIndex {
    /// One answer per query, in order. `layers` is the image's tree, bottom first.
    fn candidates(
        &self,
        layers: &[PathBuf],
        queries: &[SourceQuery],
    ) -> Result<Vec<Candidates>, DependencyError>;
}

/// A [`PackageIndex`] that answers from tables: what the image's own sources offer, and what
/// given source lists offer. For tests, and for callers that know the answers.
#[derive(Debug, Clone, Default)]
pub struct FixtureIndex {
    /// Candidates from the tree's own sources.
    pub own: Candidates,
    /// Candidates from a source list (its lines joined by `\n`); lists not here get `own`.
    pub by_sources: BTreeMap<String, Candidates>,
}

impl FixtureIndex {
    /// Every query answers from `own`.
    pub fn new<I: IntoIterator<Item = (S, S)>, S: Into<String>>(own: I) -> FixtureIndex {
        FixtureIndex {
            own: own.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            by_sources: BTreeMap::new(),
        }
    }
}

impl PackageIndex for FixtureIndex {
    fn candidates(
        &self,
        _layers: &[PathBuf],
        queries: &[SourceQuery],
    ) -> Result<Vec<Candidates>, DependencyError> {
        Ok(queries
            .iter()
            .map(|q| {
                let table =
                    q.sources.as_ref().and_then(|s| self.by_sources.get(&s.join("\n"))).unwrap_or(&self.own);
                q.packages.iter().filter_map(|p| table.get(p).map(|v| (p.clone(), v.clone()))).collect()
            })
            .collect())
    }
}

/// The real [`PackageIndex`]: apt in the namespace sandbox, over a throw-away overlay of the
/// image's layers, with the host's network.
#[derive(Debug, Clone)]
pub struct SandboxIndex {
    /// The sandbox helper: an executable that calls `kiln_sandbox::init_main_if_requested`
    /// (the running kiln by default).
    pub helper: PathBuf,
    /// Where the throw-away upper and work directories are made (removed afterwards).
    pub scratch_dir: PathBuf,
    /// Extra `-o Name=Value` options for apt-get and apt-cache (`Acquire::http::Proxy=...`).
    pub apt_options: Vec<String>,
    /// How long `apt-get update` plus `apt-cache policy` may take, per source list.
    pub timeout: Duration,
}

impl SandboxIndex {
    /// Scratch directories in `scratch_dir`, the running executable as helper, five minutes
    /// per source list.
    pub fn new(scratch_dir: &Path) -> SandboxIndex {
        SandboxIndex {
            helper: PathBuf::from("/proc/self/exe"),
            scratch_dir: scratch_dir.to_path_buf(),
            apt_options: Vec::new(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Run for each distinct source list, as `sh -c SCRIPT sh DIR PACKAGE...` with the source
/// lines on standard input. Its own lists directory keeps answers of different lists apart;
/// the tree's lists are not used (the golden-image cleanup emptied them anyway).
const APT_SCRIPT: &str = r#"set -eu
d=$1; shift
mkdir -p "$d/lists/partial" "$d/parts"
set -- -o "Dir::State::Lists=$d/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= "$@"
if [ -n "${KILN_SOURCES:-}" ]; then
  cat > "$d/sources.list"
  set -- -o "Dir::Etc::SourceList=$d/sources.list" -o "Dir::Etc::SourceParts=$d/parts" "$@"
fi
# apt-get's output is only wanted when it fails.
if ! apt-get -q "$@" update > "$d/update.log" 2>&1; then
  tail -n 20 "$d/update.log" >&2
  exit 100
fi
"#;

impl PackageIndex for SandboxIndex {
    fn candidates(
        &self,
        layers: &[PathBuf],
        queries: &[SourceQuery],
    ) -> Result<Vec<Candidates>, DependencyError> {
        let sandbox = |e: kiln_sandbox::SandboxError| DependencyError::Sandbox(e.to_string());
        std::fs::create_dir_all(&self.scratch_dir)
            .map_err(|e| io("creating the scratch folder", &self.scratch_dir, e))?;
        let scratch = tempfile::Builder::new()
            .prefix("kiln-dependencies-")
            .tempdir_in(&self.scratch_dir)
            .map_err(|e| io("creating a scratch folder", &self.scratch_dir, e))?;
        let mut config = SandboxConfig::new(RootSpec::Overlay {
            // overlayfs wants the top layer first.
            lower: layers.iter().rev().cloned().collect(),
            upper: scratch.path().join("upper"),
            work: scratch.path().join("work"),
        });
        config.network = Network::Host;
        config.helper = self.helper.clone();
        config.env.push(("LC_ALL".into(), "C".into()));
        let session = Sandbox::start(config).map_err(sandbox)?;
        let result = self.ask(&session, queries);
        let shut = session.shutdown().map_err(sandbox);
        // The overlay's upper and work directories may hold root-owned, unreadable entries.
        let _ = crate::layers::remove_tree(scratch.path());
        let answers = result?;
        shut?;
        Ok(answers)
    }
}

impl SandboxIndex {
    fn ask(&self, host: &dyn Host, queries: &[SourceQuery]) -> Result<Vec<Candidates>, DependencyError> {
        let mut done: Vec<(Option<Vec<String>>, usize)> = Vec::new();
        let mut answers = Vec::new();
        for q in queries {
            // One `apt-get update` per distinct source list.
            let dir_index = match done.iter().find(|(s, _)| *s == q.sources) {
                Some((_, i)) => *i,
                None => {
                    let i = done.len();
                    self.update(host, q.sources.as_deref(), i)?;
                    done.push((q.sources.clone(), i));
                    i
                }
            };
            answers.push(self.policy(host, &q.packages, dir_index, q.sources.is_none())?);
        }
        Ok(answers)
    }

    /// apt-cache's options for the `dir_index`th source list: the same lists and sources
    /// `apt-get update` used, and no cache files shared between lists.
    fn options(&self, dir_index: usize, own_sources: bool) -> Vec<String> {
        let d = scratch_in_sandbox(dir_index);
        let mut settings = vec![
            format!("Dir::State::Lists={d}/lists"),
            "Dir::Cache::pkgcache=".to_string(),
            "Dir::Cache::srcpkgcache=".to_string(),
        ];
        if !own_sources {
            settings.push(format!("Dir::Etc::SourceList={d}/sources.list"));
            settings.push(format!("Dir::Etc::SourceParts={d}/parts"));
        }
        let mut argv = Vec::new();
        for o in settings.iter().chain(&self.apt_options) {
            argv.push("-o".to_string());
            argv.push(o.clone());
        }
        argv
    }

    fn update(
        &self,
        host: &dyn Host,
        sources: Option<&[String]>,
        dir_index: usize,
    ) -> Result<(), DependencyError> {
        let mut env = Vec::new();
        let mut stdin = None;
        if let Some(lines) = sources {
            if let Some(bad) =
                lines.iter().find(|l| l.chars().any(char::is_control) || !l.starts_with("deb "))
            {
                return Err(DependencyError::Parent(format!(
                    "`{bad}` is not a one-line apt source (deb URL SUITE COMPONENT...)"
                )));
            }
            env.push(("KILN_SOURCES".to_string(), "1".to_string()));
            stdin = Some(format!("{}\n", lines.join("\n")).into_bytes());
        }
        let mut argv =
            vec!["sh".into(), "-c".into(), APT_SCRIPT.into(), "sh".into(), scratch_in_sandbox(dir_index)];
        argv.extend(self.apt_options.iter().flat_map(|o| ["-o".to_string(), o.clone()]));
        let out = host
            .exec(&ExecRequest { argv, env, stdin, timeout: Some(self.timeout), ..ExecRequest::default() })
            .map_err(|e| DependencyError::Sandbox(e.to_string()))?;
        if !out.status.success() {
            return Err(DependencyError::Apt {
                command: "apt-get update".into(),
                status: format!("{:?}", out.status),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    fn policy(
        &self,
        host: &dyn Host,
        packages: &[String],
        dir_index: usize,
        own_sources: bool,
    ) -> Result<Candidates, DependencyError> {
        // Names come from the image's dpkg database: anything that is not a package name (an
        // option, say) is left out rather than handed to apt.
        let names: BTreeSet<&str> =
            packages.iter().map(String::as_str).filter(|p| is_package_name(p)).collect();
        if names.is_empty() {
            return Ok(Candidates::new());
        }
        let mut argv = vec!["apt-cache".to_string()];
        argv.extend(self.options(dir_index, own_sources));
        argv.push("policy".into());
        argv.extend(names.iter().map(|n| n.to_string()));
        let out = host
            .exec(&ExecRequest { argv, timeout: Some(self.timeout), ..ExecRequest::default() })
            .map_err(|e| DependencyError::Sandbox(e.to_string()))?;
        if !out.status.success() {
            return Err(DependencyError::Apt {
                command: "apt-cache policy".into(),
                status: format!("{:?}", out.status),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(parse_policy(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The folder (in the sandbox's private /tmp) of the `i`th source list.
fn scratch_in_sandbox(i: usize) -> String {
    format!("/tmp/kiln-dependencies/{i}")
}

/// A Debian package name, optionally with `:arch`.
fn is_package_name(p: &str) -> bool {
    let (name, arch) = p.split_once(':').unwrap_or((p, "amd64"));
    name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && !arch.is_empty()
        && arch.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `apt-cache policy NAME...` output (with `LC_ALL=C`) → name → candidate.
pub fn parse_policy(text: &str) -> Candidates {
    let mut out = Candidates::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(&line[..line.len() - 1]);
        } else if let (Some(name), Some(v)) = (current, line.trim().strip_prefix("Candidate:")) {
            let v = v.trim();
            if v != "(none)" && !v.is_empty() {
                out.insert(name.to_string(), v.to_string());
            }
        }
    }
    out
}

/// How much [`Kiln::dependency_changes`] looks at.
#[derive(Debug, Clone, Default)]
pub struct DependencyOptions {
    /// Run the package checks (apt, the slow part) even when the parent's reference or a
    /// component already changed. A scheduler needs one reason to build; `kiln` commands
    /// that list everything set this.
    pub exhaustive: bool,
    /// Where the resource file is, for components referenced by a document path; those are
    /// not checked without it.
    pub base_dir: Option<PathBuf>,
}

/// A bootstrapped parent's apt question: `(parent reference, source lines, base package →
/// version)`.
type AptParent = (String, Vec<String>, BTreeMap<String, String>);

/// What the manifest says the parent was.
enum RecordedParent {
    Bootstrap { spec: serde_json::Value, packages: Option<Vec<(String, String)>> },
    Import { path: PathBuf, sha256: String },
    KilnImage { arn: String },
}

impl Kiln {
    /// A [`SandboxIndex`] with its scratch folders under the cache (on the file system the
    /// layers are on).
    pub fn sandbox_index(&self) -> SandboxIndex {
        SandboxIndex::new(&self.cache_root().join("scratch"))
    }

    /// The AVAILABLE image of recipe `name` built last (highest version, then build).
    pub fn latest_available_image(&self, name: &str) -> Result<Option<kiln_store::Image>, DependencyError> {
        let images = self
            .block_on(self.store().list_images(&kiln_store::ImageFilter {
                name: Some(name.to_string()),
                state: Some(kiln_store::ImageState::Available),
                ..Default::default()
            }))
            .map_err(|e| DependencyError::Store(e.to_string()))?;
        Ok(images.into_iter().max_by_key(|i| (i.version, i.build)))
    }

    /// What changed since `image` was built, for a build of `file` (the image's own recipe
    /// when `None`). Empty: a build now would use the same dependencies. See the module
    /// documentation for what is compared.
    ///
    /// Blocks (catalogue calls, the sandbox): call it from a blocking thread.
    pub fn dependency_changes(
        &self,
        image: &kiln_store::Image,
        file: Option<&ResourceFile>,
        index: &dyn PackageIndex,
        options: &DependencyOptions,
    ) -> Result<Vec<DependencyChange>, DependencyError> {
        let bad = |message: &str| DependencyError::Manifest {
            arn: image.arn.clone(),
            message: message.to_string(),
        };
        let manifest =
            image.manifest.as_ref().ok_or_else(|| bad("has no manifest (was it built to the end?)"))?;
        let owned;
        let file = match file {
            Some(f) => f,
            None => {
                owned = serde_json::from_value::<ResourceFile>(image.recipe.clone()).map_err(|e| {
                    DependencyError::Recipe(format!("the recipe recorded with {}: {e}", image.arn))
                })?;
                &owned
            }
        };
        let mut changes = self.component_changes(manifest, file, options.base_dir.as_deref())?;
        let (parent_changes, apt_parent) = self.parent_changes(image, manifest, file)?;
        changes.extend(parent_changes);
        if !changes.is_empty() && !options.exhaustive {
            return Ok(changes);
        }
        // The apt questions: the base's packages from the parent's sources, and every installed
        // package from the image's own; one sandbox session for both.
        let installed = manifest_packages(manifest);
        if installed.is_empty() && apt_parent.is_none() {
            // No dpkg database (a non-Debian parent): nothing to ask apt.
            return Ok(changes);
        }
        let layers = self.image_layers(image, manifest)?;
        let mut queries = vec![SourceQuery { sources: None, packages: installed.keys().cloned().collect() }];
        if let Some((_, sources, base)) = &apt_parent {
            queries.push(SourceQuery {
                sources: Some(sources.clone()),
                packages: base.keys().cloned().collect(),
            });
        }
        let answers = index.candidates(&layers, &queries)?;
        let mut reported = BTreeSet::new();
        if let (Some((parent, _, base)), Some(offered)) = (&apt_parent, answers.get(1)) {
            for (name, have) in base {
                if let Some(now) = offered.get(name).filter(|v| *v != have) {
                    reported.insert((name.clone(), now.clone()));
                    changes.push(DependencyChange {
                        kind: ChangeKind::Parent,
                        subject: parent.clone(),
                        from: Some(format!("{name} {have}")),
                        to: Some(format!("{name} {now}")),
                        reason: format!("{parent} would bootstrap {name} {now} (the base has {have})"),
                    });
                }
            }
        }
        if let Some(offered) = answers.first() {
            for (name, have) in &installed {
                if let Some(now) = offered.get(name).filter(|v| *v != have) {
                    // Reported once: a base package's update is the parent's change.
                    if reported.contains(&(name.clone(), now.clone())) {
                        continue;
                    }
                    changes.push(DependencyChange {
                        kind: ChangeKind::Packages,
                        subject: name.clone(),
                        from: Some(have.clone()),
                        to: Some(now.clone()),
                        reason: format!("{name} {have} → {now} available"),
                    });
                }
            }
        }
        Ok(changes)
    }

    /// The image's layers from the cache, bottom first.
    fn image_layers(
        &self,
        image: &kiln_store::Image,
        manifest: &serde_json::Value,
    ) -> Result<Vec<PathBuf>, DependencyError> {
        let keys = string_list(&manifest["layers"]);
        if keys.is_empty() {
            return Err(DependencyError::Manifest {
                arn: image.arn.clone(),
                message: "the manifest lists no layers".into(),
            });
        }
        let cache = self.layer_cache();
        let missing: Vec<String> = keys.iter().filter(|k| cache.get(k).is_none()).cloned().collect();
        if !missing.is_empty() {
            return Err(DependencyError::LayersMissing { arn: image.arn.clone(), missing });
        }
        Ok(keys.iter().filter_map(|k| cache.get(k)).collect())
    }

    fn component_changes(
        &self,
        manifest: &serde_json::Value,
        file: &ResourceFile,
        base_dir: Option<&Path>,
    ) -> Result<Vec<DependencyChange>, DependencyError> {
        let recorded: BTreeMap<String, (String, String)> = manifest["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_string(),
                    (c["version"].as_str()?.to_string(), c["digest"].as_str()?.to_string()),
                ))
            })
            .collect();
        let mut changes = Vec::new();
        let mut named = BTreeSet::new();
        for cfg in &file.image_recipe.components {
            let Some((name, version, digest)) =
                self.resolve_now(cfg.component_arn.as_str(), file, base_dir)?
            else {
                continue;
            };
            named.insert(name.clone());
            let change = |from: Option<String>, to: Option<String>, reason: String| DependencyChange {
                kind: ChangeKind::Component,
                subject: name.clone(),
                from,
                to,
                reason,
            };
            match recorded.get(&name) {
                None => changes.push(change(
                    None,
                    Some(version.clone()),
                    format!("{name} {version} added to the recipe"),
                )),
                Some((was, _)) if *was != version => {
                    let newer = match (SemVer::parse(was), SemVer::parse(&version)) {
                        (Ok(a), Ok(b)) if b > a => "available",
                        _ => "now selected",
                    };
                    changes.push(change(
                        Some(was.clone()),
                        Some(version.clone()),
                        format!("{name} {was} → {version} {newer}"),
                    ));
                }
                Some((_, had)) if *had != digest => changes.push(change(
                    Some(short(had)),
                    Some(short(&digest)),
                    format!(
                        "{name} {version}: its document changed (sha256 {} → {})",
                        short(had),
                        short(&digest)
                    ),
                )),
                Some(_) => {}
            }
        }
        for (name, (was, _)) in &recorded {
            if !named.contains(name) {
                changes.push(DependencyChange {
                    kind: ChangeKind::Component,
                    subject: name.clone(),
                    from: Some(was.clone()),
                    to: None,
                    reason: format!("{name} {was} removed from the recipe"),
                });
            }
        }
        Ok(changes)
    }

    /// `(name, version, document digest)` a build would use for a recipe's component
    /// reference now; `None` for a document path that cannot be read without `base_dir`.
    /// The reference is read as the build reads it (`pipeline.rs`, `component_text`).
    fn resolve_now(
        &self,
        reference: &str,
        file: &ResourceFile,
        base_dir: Option<&Path>,
    ) -> Result<Option<(String, String, String)>, DependencyError> {
        let fail =
            |name: &str, message: String| DependencyError::Component { name: name.to_string(), message };
        let (name, filter) = match crate::pipeline::parse_component_ref(reference)
            .map_err(|message| fail(reference, message))?
        {
            crate::pipeline::ComponentRef::Document(rel) => {
                let Some(base) = base_dir else { return Ok(None) };
                let path = base.join(rel);
                let text =
                    std::fs::read_to_string(&path).map_err(|e| io("reading component document", &path, e))?;
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                return Ok(Some((name, "file".into(), sha256_hex(text.as_bytes()))));
            }
            crate::pipeline::ComponentRef::Catalogue { name, filter } => (name, filter),
        };
        let filter = VersionFilter::parse(&filter).map_err(|e| fail(&name, e.to_string()))?;
        // Candidates: the catalogue, kiln's built-ins (a newer kiln may ship versions a build
        // has not registered yet), and the components the resource file defines (registered
        // by the next build).
        let mut candidates: Vec<(SemVer, String)> = Vec::new();
        let catalogue = self
            .block_on(self.store().component_versions(&name))
            .map_err(|e| DependencyError::Store(e.to_string()))?;
        if let Some(v) = filter.best(&catalogue) {
            let c = self
                .block_on(self.store().get_component(&name, &v))
                .map_err(|e| DependencyError::Store(e.to_string()))?;
            candidates.push((v, c.sha256));
        }
        if let Some(b) = crate::builtin::find(&name)
            && let Ok(v) = SemVer::parse(b.version)
            && filter.matches(&v)
        {
            candidates.push((v, sha256_hex(b.document.as_bytes())));
        }
        for c in file.components.iter().filter(|c| c.name == name) {
            if let (Ok(v), Some(data)) = (SemVer::parse(&c.semantic_version), &c.data)
                && filter.matches(&v)
            {
                candidates.push((v, sha256_hex(data.as_bytes())));
            }
        }
        // The highest version wins; for equal versions the catalogue's (first) document does,
        // as in a build.
        let best = candidates.iter().map(|(v, _)| *v).max();
        match best.and_then(|b| candidates.iter().find(|(v, _)| *v == b)) {
            Some((v, digest)) => Ok(Some((name, v.to_string(), digest.clone()))),
            None => Err(fail(&name, format!("no version matches {filter} any more; a build would fail"))),
        }
    }

    /// Changes of the parent that need no apt, and, for a bootstrapped parent, what to ask
    /// apt: `(parent, source lines, base package → version)`.
    fn parent_changes(
        &self,
        image: &kiln_store::Image,
        manifest: &serde_json::Value,
        file: &ResourceFile,
    ) -> Result<(Vec<DependencyChange>, Option<AptParent>), DependencyError> {
        let reference = file.image_recipe.parent_image.trim().to_string();
        let was = manifest["parent"]["reference"].as_str().unwrap_or_default().trim().to_string();
        let change = |from: Option<String>, to: Option<String>, reason: String| DependencyChange {
            kind: ChangeKind::Parent,
            subject: reference.clone(),
            from,
            to,
            reason,
        };
        if reference != was {
            let reason = format!("the recipe's parent changed from {was} to {reference}");
            return Ok((vec![change(Some(was.clone()), Some(reference.clone()), reason)], None));
        }
        let parent =
            kiln_parent::ParentRef::parse(&reference).map_err(|e| DependencyError::Parent(e.to_string()))?;
        let recorded = recorded_parent(manifest, self).ok_or_else(|| DependencyError::Manifest {
            arn: image.arn.clone(),
            message: "the manifest does not say what the parent was".into(),
        })?;
        match (&parent, recorded) {
            (
                kiln_parent::ParentRef::Managed { suite, .. },
                RecordedParent::Bootstrap { spec: had, packages },
            ) => {
                let spec = crate::pipeline::bootstrap_spec(*suite, file);
                let mut now = serde_json::to_value(&spec).unwrap_or_default();
                let mut had = had;
                // The clamp of file times is the build's, not a dependency.
                for v in [&mut now, &mut had] {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("sourceDateEpoch");
                    }
                }
                if now != had {
                    let reason = format!(
                        "{reference}: the bootstrap settings (mirror, packages) changed in the recipe"
                    );
                    return Ok((vec![change(None, None, reason)], None));
                }
                // Without the base's own list (a cached base whose layer was pruned), the
                // image's packages stand in: a superset, so nothing is missed.
                let base = match packages {
                    Some(p) => p.into_iter().collect(),
                    None => manifest_packages(manifest),
                };
                Ok((Vec::new(), Some((reference.clone(), spec.sources(), base))))
            }
            (
                kiln_parent::ParentRef::Disk { .. } | kiln_parent::ParentRef::Tarball { .. },
                RecordedParent::Import { path, sha256 },
            ) => {
                let now = sha256_file(&path)?;
                if now == sha256 {
                    return Ok((Vec::new(), None));
                }
                let reason =
                    format!("{} changed (sha256 {} → {})", path.display(), short(&sha256), short(&now));
                Ok((vec![change(Some(sha256), Some(now), reason)], None))
            }
            (kiln_parent::ParentRef::KilnImage { name, version }, RecordedParent::KilnImage { arn }) => {
                let filter =
                    VersionFilter::parse(version).map_err(|e| DependencyError::Parent(e.to_string()))?;
                let images = self
                    .block_on(self.store().list_images(&kiln_store::ImageFilter {
                        name: Some(name.clone()),
                        state: Some(kiln_store::ImageState::Available),
                        ..Default::default()
                    }))
                    .map_err(|e| DependencyError::Store(e.to_string()))?;
                let Some(best) =
                    images.iter().filter(|i| filter.matches(&i.version)).max_by_key(|i| (i.version, i.build))
                else {
                    return Err(DependencyError::Parent(format!(
                        "no AVAILABLE kiln image {name} matches version {version}; a build would fail"
                    )));
                };
                if best.arn == arn {
                    return Ok((Vec::new(), None));
                }
                let reason = format!("{name}: {} → {} available", tail(&arn), tail(&best.arn));
                Ok((vec![change(Some(arn), Some(best.arn.clone()), reason)], None))
            }
            _ => Ok((
                vec![change(
                    None,
                    None,
                    format!("{reference} is a different kind of parent than the one recorded"),
                )],
                None,
            )),
        }
    }
}

fn recorded_parent(manifest: &serde_json::Value, kiln: &Kiln) -> Option<RecordedParent> {
    let info = &manifest["parent"]["info"];
    match info["kind"].as_str()? {
        "bootstrap" => {
            let listed = |v: &serde_json::Value| -> Option<Vec<(String, String)>> {
                let a = v.as_array()?;
                Some(
                    a.iter()
                        .filter_map(|p| {
                            Some((p["name"].as_str()?.to_string(), p["version"].as_str()?.to_string()))
                        })
                        .collect(),
                )
            };
            // A base layer that was cached when the image was built is recorded as
            // `{"cached": true}`: its list is then read from the layer itself.
            let packages = listed(&info["bootstrap"]["packages"]).or_else(|| {
                let key = manifest["parent"]["layers"].get(0)?.as_str()?;
                let layer = kiln.layer_cache().get(key)?;
                let p = kiln_parent::installed_packages(&layer).ok()?;
                Some(p.into_iter().map(|p| (p.name, p.version)).collect())
            });
            Some(RecordedParent::Bootstrap { spec: info["spec"].clone(), packages })
        }
        "import" => Some(RecordedParent::Import {
            path: PathBuf::from(info["path"].as_str()?),
            sha256: info["sha256"].as_str()?.to_string(),
        }),
        "kiln-image" => Some(RecordedParent::KilnImage { arn: info["arn"].as_str()?.to_string() }),
        _ => None,
    }
}

/// The manifest's installed packages: name → version.
fn manifest_packages(manifest: &serde_json::Value) -> BTreeMap<String, String> {
    manifest["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["version"].as_str()?.to_string())))
        .collect()
}

fn string_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `NAME/VERSION/BUILD` of an image ARN.
fn tail(arn: &str) -> String {
    arn.split_once(":image/").map_or(arn, |(_, t)| t).to_string()
}

fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> Result<String, DependencyError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| DependencyError::Parent(format!("cannot read {}: {e}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| io("reading", path, e))?;
    Ok(hex::encode(h.finalize()))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> DependencyError {
    DependencyError::Io { what, path: path.to_path_buf(), source }
}
