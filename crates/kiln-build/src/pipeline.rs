//! The stages of one build, in order, with the catalogue kept in step.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use kiln_component::document::{PhaseName, parse_document};
use kiln_component::engine::{Event, Observer};
use kiln_model::{Arn, ComponentConfig, ResourceFile, SemVer, VersionFilter};
use kiln_sandbox::Network;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::layers::{self, LayerCache};
use crate::run::{self, ResolvedComponent, Target};
use crate::{BuildError, cleanup};

/// What to do when a build step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Fail the build and remove the failed layer.
    #[default]
    Abort,
    /// Fail the build and keep the failed layer for inspection.
    Keep,
    /// Keep the failed layer and open an interactive shell in the sandbox over it.
    Shell,
}

/// One `kiln build`.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub resource_file: PathBuf,
    /// The output folder; default `KILN_HOME/images/NAME/VERSION/BUILD`.
    pub out_dir: Option<PathBuf>,
    /// Rebuild every layer, reusing none.
    pub no_cache: bool,
    /// Skip the test stage (booting the image).
    pub no_test: bool,
    pub on_error: OnError,
    /// Timestamps in the image are clamped to this (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// Build this image record (PENDING, made by the API server when an execution started)
    /// instead of recording a new one. Its name and version must be the recipe's.
    pub image_arn: Option<String>,
    /// Cancelled by another thread (a signal handler, the API server) to stop the build at
    /// any stage within seconds: the running sandbox session, bootstrap or test instance is
    /// killed, nothing it made is published to the layer cache, temporary folders are
    /// removed, the image becomes CANCELLED and the build returns [`BuildError::Cancelled`].
    pub cancel: Option<kiln_host::Cancel>,
}

/// A stage-level progress event.
#[derive(Debug, Clone)]
pub enum BuildEvent<'a> {
    Started { arn: &'a str },
    Stage { name: &'a str },
    StageDone { name: &'a str, millis: u64 },
    LayerReused { component: &'a str, key: &'a str },
    Failed { reason: &'a str },
    Finished { arn: &'a str, state: &'a str },
}

/// Receives build events and the step events of the engine.
pub trait BuildProgress: Observer {
    fn build_event(&self, event: &BuildEvent<'_>);
}

/// What a successful build produced.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildOutcome {
    pub arn: String,
    pub name: String,
    pub version: String,
    pub build: u64,
    pub state: String,
    pub out_dir: PathBuf,
    pub manifest: PathBuf,
    pub artifacts: Vec<PathBuf>,
    pub layers_reused: usize,
    pub layers_built: usize,
    pub duration_ms: u64,
    /// The regions with a store, and how distributing there went.
    pub regions: Vec<crate::distribute::RegionOutcome>,
}

/// kiln's home on this machine: state, caches and outputs under `KILN_HOME`.
#[derive(Debug)]
pub struct Kiln {
    pub home: PathBuf,
    store: kiln_store::Store,
    rt: tokio::runtime::Runtime,
    layers: LayerCache,
    cache_root: PathBuf,
}

/// Caches (layers, packages) live in `KILN_CACHE_DIR` when set, else `KILN_HOME/cache`: several
/// homes (test runs, users) can share one cache.
fn cache_root(home: &Path) -> PathBuf {
    std::env::var_os("KILN_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join("cache"))
}

impl Kiln {
    /// Open (creating when needed) the state under `home`.
    pub fn open(home: &Path) -> Result<Kiln, BuildError> {
        fs::create_dir_all(home).map_err(|e| BuildError::io("creating KILN_HOME", home, e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BuildError::Store(format!("cannot start the runtime: {e}")))?;
        let store = rt
            .block_on(kiln_store::Store::open_default(home))
            .map_err(|e| BuildError::Store(e.to_string()))?;
        let cache_root = cache_root(home);
        let dir = cache_root.join("layers");
        let layers =
            LayerCache::open(&dir).map_err(|e| BuildError::io("opening the layer cache", &dir, e))?;
        let staged = kiln_image::remove_stale_staging(&home.join("images"));
        if staged > 0 {
            tracing::info!("removed {staged} staging folder(s) left by killed builds");
        }
        Ok(Kiln { home: home.to_path_buf(), store, rt, layers, cache_root })
    }

    /// Where the caches (layers, packages, the agent disk) live.
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    pub fn store(&self) -> &kiln_store::Store {
        &self.store
    }

    /// Run a catalogue call to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn layer_cache(&self) -> &LayerCache {
        &self.layers
    }

    /// The package cache shared by bootstraps.
    pub fn package_cache(&self) -> PathBuf {
        self.cache_root.join("packages")
    }

    /// Remove cached layers: all of them, or those no AVAILABLE image's manifest names.
    /// Returns the bytes freed.
    pub fn prune_layers(&self, all: bool) -> Result<u64, BuildError> {
        let dir = self.layers.dir().to_path_buf();
        let freed = if all {
            self.layers.prune_all()
        } else {
            let filter = kiln_store::ImageFilter {
                state: Some(kiln_store::ImageState::Available),
                ..Default::default()
            };
            let images = self
                .block_on(self.store.list_images(&filter))
                .map_err(|e| BuildError::Store(e.to_string()))?;
            let keep: Vec<String> = images
                .iter()
                .filter_map(|i| i.manifest.as_ref())
                .filter_map(|m| m["layers"].as_array())
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            self.layers.prune_except(&keep)
        }
        .map_err(|e| BuildError::io("pruning the layer cache", &dir, e))?;
        let remaining: Vec<String> = std::fs::read_dir(&dir)
            .map(|it| it.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        for layer in self.block_on(self.store.list_layers()).unwrap_or_default() {
            if !remaining.contains(&layer.key) {
                let _ = self.block_on(self.store.remove_layer(&layer.key));
            }
        }
        Ok(freed)
    }

    /// Build an image; see the crate documentation for the stages.
    pub fn build(
        &self,
        req: &BuildRequest,
        progress: &dyn BuildProgress,
    ) -> Result<BuildOutcome, BuildError> {
        let started = Instant::now();
        // A file that does not parse is no build; from here on, every failure is recorded
        // on the image as FAILED with its reason.
        let file = kiln_model::load_resource_file(&req.resource_file).map_err(BuildError::Invalid)?;
        let base_dir = req.resource_file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let recipe = &file.image_recipe;
        let version =
            SemVer::parse(&recipe.semantic_version).map_err(|e| BuildError::Component(e.to_string()))?;
        let image = match &req.image_arn {
            Some(arn) => {
                let image = self
                    .block_on(self.store.get_image_by_arn(arn))
                    .map_err(|e| BuildError::Store(e.to_string()))?;
                if image.name != recipe.name || image.version != version {
                    return Err(BuildError::Store(format!(
                        "image {arn} is not a build of recipe {} {version}",
                        recipe.name
                    )));
                }
                image
            }
            None => self
                .block_on(self.store.create_image(&kiln_store::NewImage {
                    name: recipe.name.clone(),
                    version,
                    region: kiln_model::LOCAL_REGION.to_string(),
                    account: kiln_model::LOCAL_ACCOUNT.to_string(),
                    recipe: serde_json::to_value(&file).unwrap_or_default(),
                    // The recipe's tags are set by the registration below, templates expanded.
                    tags: kiln_store::Tags::new(),
                }))
                .map_err(|e| BuildError::Store(e.to_string()))?,
        };
        let arn = image.arn.clone();
        progress.build_event(&BuildEvent::Started { arn: &arn });
        let fail = |e: BuildError| {
            let reason = e.to_string();
            progress.build_event(&BuildEvent::Failed { reason: &reason });
            let _ = match &e {
                BuildError::Cancelled => self.mark_cancelled(&arn),
                _ => {
                    self.block_on(self.store.transition(&arn, kiln_store::ImageState::Failed, Some(&reason)))
                }
            };
            e
        };
        // Tags, launch permissions and the name per region, from the recipe and the
        // distribution configuration, are the image's from its registration on.
        self.register_distribution(&image, &file).map_err(fail)?;
        // Everything that can be checked is checked before any work starts.
        let checked = (|| {
            let components = self.resolve_components(&file, &base_dir)?;
            let parent = kiln_parent::ParentRef::parse(&file.image_recipe.parent_image)
                .map_err(|e| BuildError::Parent(e.to_string()))?;
            let layout = disk_layout(&file)?;
            let formats = output_formats(&file)?;
            let scan_policy = crate::scan::check(&file.image_scanning_configuration, &base_dir, &self.home)?;
            let compliance = crate::compliance::check(&file, &req.resource_file, &parent)?;
            Ok((components, parent, layout, formats, scan_policy, compliance))
        })();
        let (components, parent, layout, formats, scan_policy, compliance) = checked.map_err(fail)?;
        let out_dir = req.out_dir.clone().unwrap_or_else(|| {
            self.home
                .join("images")
                .join(&recipe.name)
                .join(version.to_string())
                .join(image.build.to_string())
        });
        let ctx = BuildCtx {
            kiln: self,
            req,
            file: &file,
            components: &components,
            parent: &parent,
            layout: &layout,
            formats: &formats,
            scan_policy: &scan_policy,
            compliance: compliance.as_ref(),
            arn: &arn,
            out_dir: &out_dir,
            progress,
            log: Mutex::new(None),
            timings: Mutex::new(Vec::new()),
        };
        match ctx.run(u64::from(image.build), started) {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                ctx.log_line("failed", json!({ "reason": e.to_string() }));
                Err(fail(e))
            }
        }
    }

    /// CANCELLED with the reason `cancelled`, unless its state is final already: the API's
    /// CancelImageCreation sets CANCELLED first (with who asked), and a stopping server sets
    /// FAILED (interrupted) before it cancels its builds.
    fn mark_cancelled(&self, arn: &str) -> Result<kiln_store::Image, kiln_store::StoreError> {
        let image = self.block_on(self.store.get_image_by_arn(arn))?;
        if !image.state.is_in_progress() {
            return Ok(image);
        }
        self.block_on(self.store.transition(arn, kiln_store::ImageState::Cancelled, Some("cancelled")))
    }

    fn resolve_components(
        &self,
        file: &ResourceFile,
        base_dir: &Path,
    ) -> Result<Vec<ResolvedComponent>, BuildError> {
        crate::builtin::prepare(self, file)?;
        let mut diags = Vec::new();
        // Components the file defines go into the catalogue first (versions are immutable).
        for c in &file.components {
            let (text, origin) = match (&c.data, &c.uri) {
                (Some(data), _) => (data.clone(), format!("{} (inline in the resource file)", c.name)),
                (None, Some(uri)) => {
                    let path = base_dir.join(uri.strip_prefix("file://").unwrap_or(uri));
                    let text = fs::read_to_string(&path)
                        .map_err(|e| BuildError::io("reading component document", &path, e))?;
                    (text, path.display().to_string())
                }
                (None, None) => unreachable!("the resource file check requires data or uri"),
            };
            if let Err(d) = parse_document(&origin, &text) {
                diags.extend(d);
                continue;
            }
            let version =
                SemVer::parse(&c.semantic_version).map_err(|e| BuildError::Component(e.to_string()))?;
            self.block_on(self.store.ensure_component(&kiln_store::NewComponent {
                name: c.name.clone(),
                version,
                platform: c.platform.clone(),
                description: c.description.clone().unwrap_or_default(),
                document: text,
                source: kiln_store::ComponentSource::File,
                tags: c.tags.clone(),
            }))
            .map_err(|e| {
                BuildError::Component(format!("component {} {}: {e}", c.name, c.semantic_version))
            })?;
        }
        if !diags.is_empty() {
            return Err(BuildError::Invalid(diags));
        }
        let mut out = Vec::new();
        for cfg in &file.image_recipe.components {
            let (name, version, text) = self.component_text(cfg, base_dir)?;
            let document = match parse_document(&format!("{name}/{version}"), &text) {
                Ok(d) => d,
                Err(d) => {
                    diags.extend(d);
                    continue;
                }
            };
            let parameters: Vec<(String, String)> =
                cfg.parameters.iter().map(|p| (p.name.clone(), p.value.join(","))).collect();
            if let Err(e) = document.resolve_parameters(&parameters) {
                return Err(BuildError::Component(format!("component {name}/{version}: {e}")));
            }
            let digest = hex::encode(Sha256::digest(text.as_bytes()));
            out.push(ResolvedComponent { name, version, digest, document, parameters });
        }
        if !diags.is_empty() {
            return Err(BuildError::Invalid(diags));
        }
        Ok(out)
    }

    /// `(name, version, document text)` of a recipe's component reference.
    fn component_text(
        &self,
        cfg: &ComponentConfig,
        base_dir: &Path,
    ) -> Result<(String, String, String), BuildError> {
        match parse_component_ref(&cfg.component_arn).map_err(BuildError::Component)? {
            ComponentRef::Document(rel) => {
                let path = base_dir.join(rel);
                let text = fs::read_to_string(&path)
                    .map_err(|e| BuildError::io("reading component document", &path, e))?;
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                Ok((name, "file".into(), text))
            }
            ComponentRef::Catalogue { name, filter } => {
                let filter =
                    VersionFilter::parse(&filter).map_err(|e| BuildError::Component(e.to_string()))?;
                let component = self
                    .block_on(self.store.resolve_component(&name, &filter))
                    .map_err(|e| BuildError::Component(format!("component {name}/{filter}: {e}")))?;
                Ok((name, component.version.to_string(), component.document))
            }
        }
    }
}

/// What a recipe's component reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ComponentRef {
    /// A document file, relative to the resource file's folder.
    Document(String),
    /// A catalogued component and a version filter (`x.x.x` when none is given).
    Catalogue { name: String, filter: String },
}

/// Reads a reference as builds do: a `.yml`/`.yaml` path (optionally `file://`), a component
/// ARN, `NAME/FILTER` or a bare name.
pub(crate) fn parse_component_ref(reference: &str) -> Result<ComponentRef, String> {
    if reference.ends_with(".yml") || reference.ends_with(".yaml") {
        return Ok(ComponentRef::Document(
            reference.strip_prefix("file://").unwrap_or(reference).to_string(),
        ));
    }
    let (name, filter) = match Arn::parse(reference) {
        Some(arn) if arn.resource_type == "component" => (arn.name, arn.version.unwrap_or("x.x.x".into())),
        Some(_) => {
            return Err(format!(
                "`{reference}` is not a component ARN (arn:aws:imagebuilder:REGION:ACCOUNT:component/NAME/VERSION)"
            ));
        }
        None => match reference.split_once('/') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (reference.to_string(), "x.x.x".to_string()),
        },
    };
    Ok(ComponentRef::Catalogue { name, filter })
}

/// The bootstrap a build of `file` on a managed parent of `suite` starts from (before the
/// time clamp).
pub(crate) fn bootstrap_spec(suite: kiln_parent::Suite, file: &ResourceFile) -> kiln_parent::BootstrapSpec {
    let recipe = &file.image_recipe;
    let mut spec = kiln_parent::BootstrapSpec::new(suite);
    if let Some(m) = &recipe.mirror {
        spec.mirror = m.clone();
    }
    if let Some(p) = &recipe.packages {
        spec.add_packages(p.include.iter().cloned());
        spec.remove_packages(p.exclude.iter());
    }
    spec
}

fn disk_layout(file: &ResourceFile) -> Result<kiln_image::DiskLayout, BuildError> {
    let mut layout = kiln_image::DiskLayout::default();
    if let Some(spec) = &file.image_recipe.disk_layout {
        let size = |mib: Option<u64>| mib.map_or(kiln_image::SizeSpec::Auto, kiln_image::SizeSpec::mib);
        layout.root_size = size(spec.root_size_mib);
        layout.esp_size = size(spec.esp_size_mib);
        layout.root_mount_options = spec.root_mount_options.clone();
        for p in &spec.partitions {
            let options: Vec<&str> = p.mount_options.iter().map(String::as_str).collect();
            layout = layout.with_partition(&p.mount_point, size(p.size_mib), &options);
        }
    }
    layout.validate().map_err(|e| BuildError::Image(e.to_string()))?;
    Ok(layout)
}

fn output_formats(file: &ResourceFile) -> Result<Vec<kiln_image::OutputFormat>, BuildError> {
    let mut formats = Vec::new();
    for d in &file.distribution_configuration.distributions {
        for f in &d.formats {
            let format = match f.as_str() {
                "raw" => kiln_image::OutputFormat::Raw,
                "qcow2" => kiln_image::OutputFormat::Qcow2 { compressed: false },
                "vmdk" => kiln_image::OutputFormat::Vmdk,
                "vhdx" => kiln_image::OutputFormat::Vhdx,
                "vhd" => kiln_image::OutputFormat::Vhd,
                other => return Err(BuildError::Image(format!("unknown output format `{other}`"))),
            };
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
    }
    // The test stage boots the qcow2; always make one.
    if !formats.contains(&kiln_image::OutputFormat::Qcow2 { compressed: false }) {
        formats.push(kiln_image::OutputFormat::Qcow2 { compressed: false });
    }
    Ok(formats)
}

struct BuildCtx<'a> {
    kiln: &'a Kiln,
    req: &'a BuildRequest,
    file: &'a ResourceFile,
    components: &'a [ResolvedComponent],
    parent: &'a kiln_parent::ParentRef,
    layout: &'a kiln_image::DiskLayout,
    formats: &'a [kiln_image::OutputFormat],
    scan_policy: &'a crate::scan::ScanPolicy,
    compliance: Option<&'a kiln_compliance::Plan>,
    arn: &'a str,
    out_dir: &'a Path,
    progress: &'a dyn BuildProgress,
    log: Mutex<Option<fs::File>>,
    timings: Mutex<Vec<(String, u64)>>,
}

/// Step events go to the user's progress display and to the build log.
struct Tee<'a> {
    ctx: &'a BuildCtx<'a>,
}

impl Observer for Tee<'_> {
    fn event(&self, event: &Event<'_>) {
        self.ctx.progress.event(event);
        if let Event::StepFinished { document, phase, step, status, duration_ms } = event {
            self.ctx.log_line(
                "step",
                json!({ "component": document, "phase": phase, "step": step, "status": status.as_str(), "durationMs": duration_ms }),
            );
        }
    }
}

impl BuildCtx<'_> {
    fn log_line(&self, kind: &str, fields: serde_json::Value) {
        let mut guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = guard.as_mut() {
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let mut line = json!({ "time": now, "event": kind });
            if let (Some(obj), serde_json::Value::Object(extra)) = (line.as_object_mut(), fields) {
                obj.extend(extra);
            }
            let _ = writeln!(f, "{line}");
        }
    }

    fn cancel(&self) -> Option<&kiln_host::Cancel> {
        self.req.cancel.as_ref()
    }

    fn cancelled(&self) -> bool {
        run::is_cancelled(self.cancel())
    }

    fn check_cancel(&self) -> Result<(), BuildError> {
        run::check_cancel(self.cancel())
    }

    fn or_cancelled(&self, e: BuildError) -> BuildError {
        run::or_cancelled(self.cancel(), e)
    }

    fn stage<T>(&self, name: &str, f: impl FnOnce() -> Result<T, BuildError>) -> Result<T, BuildError> {
        self.check_cancel()?;
        self.progress.build_event(&BuildEvent::Stage { name });
        self.log_line("stage", json!({ "stage": name }));
        let t = Instant::now();
        let r = f();
        let millis = t.elapsed().as_millis() as u64;
        self.timings.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), millis));
        self.progress.build_event(&BuildEvent::StageDone { name, millis });
        self.log_line("stageDone", json!({ "stage": name, "millis": millis, "ok": r.is_ok() }));
        r
    }

    fn transition(&self, state: kiln_store::ImageState, reason: &str) -> Result<(), BuildError> {
        self.kiln.block_on(self.kiln.store.transition(self.arn, state, Some(reason))).map(|_| ()).map_err(
            |e| {
                // The API marks the image CANCELLED before this build's token hears of it (at
                // the worker's next heartbeat): the refused transition is that cancel.
                let now = self.kiln.block_on(self.kiln.store.get_image_by_arn(self.arn)).map(|i| i.state);
                if self.cancelled() || now.ok() == Some(kiln_store::ImageState::Cancelled) {
                    BuildError::Cancelled
                } else {
                    BuildError::Store(e.to_string())
                }
            },
        )
    }

    /// Where a layer with content key `key` is kept. `--no-cache` builds every layer afresh
    /// under a key of its own (salted with this build's ARN), so it never replaces a cached
    /// layer that another build may be using as a lower layer right now; the content keys
    /// (which chain the layers and seed the disk's identifiers) stay the same.
    fn stored(&self, key: &str) -> String {
        if self.req.no_cache {
            layers::key(&[("fresh-build", self.arn), ("layer", key)])
        } else {
            key.to_string()
        }
    }

    /// What every step sees besides the sandbox's base environment: the clamp for
    /// timestamps, which tools such as useradd and dpkg honour.
    fn env(&self) -> Vec<(String, String)> {
        self.req
            .source_date_epoch
            .map(|e| vec![("SOURCE_DATE_EPOCH".to_string(), e.to_string())])
            .unwrap_or_default()
    }

    fn network(&self) -> Network {
        match self.file.infrastructure_configuration.network {
            kiln_model::NetworkPolicy::None => Network::None,
            kiln_model::NetworkPolicy::Host => Network::Host,
        }
    }

    fn run(&self, build: u64, started: Instant) -> Result<BuildOutcome, BuildError> {
        let recipe = &self.file.image_recipe;
        if self.out_dir.exists() {
            layers::remove_tree(self.out_dir)
                .map_err(|e| BuildError::io("emptying the output folder", self.out_dir, e))?;
        }
        fs::create_dir_all(self.out_dir)
            .map_err(|e| BuildError::io("creating the output folder", self.out_dir, e))?;
        let log_path = self.out_dir.join("build-log.jsonl");
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) = Some(
            fs::File::create(&log_path)
                .map_err(|e| BuildError::io("creating the build log", &log_path, e))?,
        );
        self.log_line("started", json!({ "arn": self.arn, "resourceFile": self.req.resource_file }));
        self.kiln
            .block_on(self.kiln.store.set_output_location(self.arn, &self.out_dir.display().to_string()))
            .map_err(|e| BuildError::Store(e.to_string()))?;
        self.transition(kiln_store::ImageState::Building, "building")?;
        let cache = &self.kiln.layers;
        let step_logs = self.out_dir.join("logs");

        // Parent image: the base layer.
        let (base_keys, base_stored, parent_info) = self.stage("parent", || self.base_layers())?;
        let mut stack = Vec::new();
        for k in &base_stored {
            stack.push(
                cache.get(k).ok_or_else(|| {
                    BuildError::Parent(format!("parent layer {k} is missing from the cache"))
                })?,
            );
        }
        let mut keys = base_keys.clone();
        let mut stored_keys = base_stored.clone();
        let mut reused = 0usize;
        let mut built = 0usize;
        let working_dir = recipe.working_directory.clone().unwrap_or_else(|| "/root".to_string());
        let tee = Tee { ctx: self };

        // Build phase, one layer per component.
        let mut component_records = Vec::new();
        // What each component's build phase did, for `{{ build.Step.outputs.X }}` later.
        let mut build_reports: Vec<kiln_component::report::DocumentReport> = Vec::new();
        let in_vm = self.file.infrastructure_configuration.builder == kiln_model::BuilderKind::Vm;
        if in_vm {
            let (layer, key, skey, reports, was_built) = self.vm_layer(
                &stack,
                keys.last().map(String::as_str).unwrap_or_default(),
                &working_dir,
                &step_logs,
                &tee,
            )?;
            if was_built {
                built += 1;
            } else {
                reused += 1;
            }
            build_reports = reports;
            for c in self.components {
                component_records.push(json!({
                    "name": c.name, "version": c.version, "digest": c.digest,
                    "parameters": c.parameters.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
                    "layer": skey, "builder": "vm",
                }));
            }
            // The VM's layer is the whole tree: the layers below would only show through
            // where a component deleted something.
            stack = vec![layer];
            keys.push(key);
            stored_keys.push(skey);
        }
        for c in self.components.iter().filter(|_| !in_vm) {
            self.check_cancel()?;
            let params = serde_json::to_string(&c.parameters).unwrap_or_default();
            let network = format!("{:?}", self.network());
            let key = layers::key(&[
                ("below", keys.last().map(String::as_str).unwrap_or_default()),
                ("component", &format!("{}/{}", c.name, c.version)),
                ("document", &c.digest),
                ("parameters", &params),
                ("network", &network),
                ("workingDirectory", &working_dir),
            ]);
            let label = format!("build {}/{}", c.name, c.version);
            let skey = self.stored(&key);
            // A layer counts as cached only with the report of the run that made it.
            let layer = match cache.get(&skey).filter(|_| cache.report_path(&skey).is_file()) {
                Some(p) => {
                    reused += 1;
                    let report = fs::read(cache.report_path(&skey))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<kiln_component::report::RunReport>(&b).ok());
                    build_reports.extend(report.map(|r| r.documents).unwrap_or_default());
                    self.progress.build_event(&BuildEvent::LayerReused { component: &c.name, key: &key });
                    self.log_line("layerReused", json!({ "component": c.name, "key": key }));
                    p
                }
                _ => self.stage(&label, || {
                    let _lock = cache
                        .lock_until(&skey, self.cancel())
                        .map_err(|e| self.or_cancelled(BuildError::io("locking a layer", cache.dir(), e)))?;
                    let scratch =
                        cache.scratch(&skey).map_err(|e| BuildError::io("making a layer", cache.dir(), e))?;
                    let env = self.env();
                    let target =
                        Target::over(&stack, &scratch, self.network(), &env).cancelled_by(self.cancel());
                    // Cancelled: the scratch layer is dropped here, never committed nor kept.
                    let report =
                        run::run_phase(&target, &[c], PhaseName::Build, &working_dir, &step_logs, &[], &tee)?;
                    self.write_report(&format!("build-{}", c.name), &report);
                    if !report.success() {
                        let message = report.failure_message.clone().unwrap_or_else(|| "failed".into());
                        self.keep_or_drop(scratch, &stack, &message)?;
                        return Err(BuildError::StepFailed {
                            phase: "build".into(),
                            component: c.name.clone(),
                            message,
                        });
                    }
                    built += 1;
                    // The report first: a layer without its report is never taken as cached.
                    let report_path = cache.report_path(&skey);
                    fs::write(&report_path, serde_json::to_vec(&report).unwrap_or_default())
                        .map_err(|e| BuildError::io("saving the layer's report", &report_path, e))?;
                    let layer =
                        scratch.commit().map_err(|e| BuildError::io("publishing a layer", cache.dir(), e))?;
                    build_reports.extend(report.documents);
                    Ok(layer)
                })?,
            };
            component_records.push(json!({
                "name": c.name, "version": c.version, "digest": c.digest,
                "parameters": c.parameters.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
                "layer": skey,
            }));
            stack.push(layer);
            keys.push(key);
            stored_keys.push(skey);
        }

        // Validate phase: on a throw-away layer, so validation cannot change the image. (The VM
        // builder ran it in the VM, after the build phases.)
        let validate_here = !in_vm;
        self.stage("validate", || {
            if !validate_here {
                return Ok(());
            }
            let scratch = cache
                .scratch(&format!("validate-{}", keys.last().cloned().unwrap_or_default()))
                .map_err(|e| BuildError::io("making a layer", cache.dir(), e))?;
            let env = self.env();
            let target = Target::over(&stack, &scratch, self.network(), &env).cancelled_by(self.cancel());
            let all: Vec<&ResolvedComponent> = self.components.iter().collect();
            let report = run::run_phase(
                &target,
                &all,
                PhaseName::Validate,
                &working_dir,
                &step_logs,
                &build_reports,
                &tee,
            )?;
            self.write_report("validate", &report);
            phase_result("validate", &report)
        })?;

        // Golden-image cleanup: the last layer.
        let cleanup_key = layers::key(&[
            ("below", keys.last().map(String::as_str).unwrap_or_default()),
            ("cleanup", cleanup::SCRIPT),
        ]);
        let cleanup_stored = self.stored(&cleanup_key);
        let cleanup_layer = match cache.get(&cleanup_stored) {
            Some(p) => p,
            None => self.stage("cleanup", || {
                let _lock = cache
                    .lock_until(&cleanup_stored, self.cancel())
                    .map_err(|e| self.or_cancelled(BuildError::io("locking a layer", cache.dir(), e)))?;
                let scratch = cache
                    .scratch(&cleanup_stored)
                    .map_err(|e| BuildError::io("making a layer", cache.dir(), e))?;
                let env = self.env();
                let target = Target::over(&stack, &scratch, Network::None, &env).cancelled_by(self.cancel());
                run::run_script(&target, cleanup::SCRIPT)?;
                let lower: Vec<&Path> = stack.iter().map(PathBuf::as_path).collect();
                for rel in cleanup::EMPTIED {
                    cleanup::whiteout_children(&lower, &scratch.upper, rel)
                        .map_err(|e| BuildError::io("hiding temporary files", &scratch.upper, e))?;
                }
                scratch.commit().map_err(|e| BuildError::io("publishing a layer", cache.dir(), e))
            })?,
        };
        stack.push(cleanup_layer);
        keys.push(cleanup_key);
        stored_keys.push(cleanup_stored);
        for k in &stored_keys {
            let path = cache.dir().join(k);
            let _ = self.kiln.block_on(self.kiln.store.put_layer(
                k,
                &path.display().to_string(),
                layers::du(&path),
            ));
        }

        // Stage the merged tree, take its inventory, assemble the disk.
        let mut options = kiln_image::AssembleOptions::new(self.out_dir);
        options.name = recipe.name.clone();
        options.formats = self.formats.to_vec();
        options.source_date_epoch = self.req.source_date_epoch;
        options.seed = Some(keys.last().cloned().unwrap_or_default());
        options.kernel_cmdline = recipe.kernel_command_line.clone().unwrap_or_default();
        let source = kiln_image::TreeSource::Layers(stack.clone());
        let staged = self.stage("stage", || {
            kiln_image::stage(&source, self.layout, &options).map_err(|e| BuildError::Image(e.to_string()))
        })?;
        let version = recipe.semantic_version.clone();
        let (inventory, packages, sboms) = self.stage("inventory", || {
            let inventory = kiln_scan::Inventory::from_root(staged.root_view())
                .map_err(|e| BuildError::Image(format!("inventory of the image: {e}")))?;
            let subject = kiln_scan::sbom::SbomSubject {
                name: recipe.name.clone(),
                version: format!("{version}/{build}"),
                timestamp: self.req.source_date_epoch.and_then(|e| time::OffsetDateTime::from_unix_timestamp(e).ok()),
            };
            let mut sboms = Vec::new();
            for (file, doc) in [
                ("sbom.cdx.json", kiln_scan::sbom::cyclonedx(&inventory, &subject)),
                ("sbom.spdx.json", kiln_scan::sbom::spdx(&inventory, &subject)),
            ] {
                let path = self.out_dir.join(file);
                let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
                fs::write(&path, text).map_err(|e| BuildError::io("writing the SBOM", &path, e))?;
                sboms.push(path);
            }
            let packages: Vec<serde_json::Value> = inventory
                .packages
                .iter()
                .map(|p| json!({ "name": p.name, "version": p.version.to_string(), "arch": p.arch, "source": p.source_name }))
                .collect();
            Ok((inventory, packages, sboms))
        })?;
        let scan = self.stage("scan", || {
            crate::scan::stage(self.kiln, self.arn, self.out_dir, &inventory, self.scan_policy)
        })?;
        let compliance = self.stage("compliance", || {
            crate::compliance::stage(staged.root_view(), self.arn, self.out_dir, self.compliance)
        })?;
        let disk =
            self.stage("assemble", || staged.assemble().map_err(|e| BuildError::Image(e.to_string())))?;

        // Test stage: the image boots as a test instance; the built-in tests and every
        // component's test phase run inside it.
        let mut tests = serde_json::Value::Null;
        let mut test_files = Vec::new();
        if !self.req.no_test {
            self.transition(kiln_store::ImageState::Testing, "testing")?;
            let outcome = self
                .stage("test", || self.test_stage(&disk, &working_dir, &step_logs, &build_reports, &tee))?;
            let dir = self.out_dir.join("test-report");
            let (json_path, junit_path) =
                outcome.report.write(&dir).map_err(|e| BuildError::io("writing the test report", &dir, e))?;
            let console = self.out_dir.join("test-console.log");
            fs::write(&console, &outcome.console).map_err(|e| BuildError::io("writing", &console, e))?;
            self.log_line("console", json!({ "instance": "test", "text": outcome.console }));
            for t in &outcome.report.tests {
                self.log_line("test", json!({ "name": t.name, "status": t.status, "durationMs": t.duration_ms, "reason": t.reason }));
            }
            test_files = vec![json_path, junit_path, console];
            tests = json!({
                "summary": crate::test_stage::summary(&outcome.report.tests),
                "accelerator": outcome.report.accelerator,
                "agentReadyMs": outcome.report.agent_ready_ms,
                "systemReadyMs": outcome.report.system_ready_ms,
                "totalMs": outcome.report.total_ms,
                "results": outcome.report.tests.iter().map(|t| json!({ "name": t.name, "status": t.status, "reason": t.reason })).collect::<Vec<_>>(),
                "report": "test-report/tests.json",
                "junit": "test-report/junit.xml",
                "console": "test-console.log",
            });
            if let Some(kept) = &outcome.kept {
                eprintln!("{kept}");
            }
            if let Some(summary) = outcome.report.failure_summary() {
                return Err(BuildError::Test(format!(
                    "{summary} (reports in {}, console in {})",
                    dir.display(),
                    self.out_dir.join("test-console.log").display()
                )));
            }
        }

        // Outputs: manifest, checksums; then the catalogue says AVAILABLE.
        let mut artifacts = Vec::new();
        let mut sums = String::new();
        for a in &disk.artifacts {
            let file = a.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            sums.push_str(&format!("{}  {file}\n", a.sha256));
            artifacts.push(
                json!({ "file": file, "format": a.format.extension(), "size": a.size, "sha256": a.sha256 }),
            );
        }
        let mut extra_files = sboms.clone();
        extra_files.push(log_path.clone());
        extra_files.extend(test_files.iter().cloned());
        extra_files.extend(scan.report.clone());
        extra_files.extend(compliance.reports.iter().map(|(p, _)| p.clone()));
        let test_formats = ["test-report", "junit", "test-console"];
        let reports = sboms
            .iter()
            .map(|p| (p, "sbom"))
            .chain(scan.report.iter().map(|p| (p, "scan-report")))
            .chain(compliance.reports.iter().map(|(p, f)| (p, *f)))
            .chain(test_files.iter().zip(test_formats));
        for (path, format) in reports {
            // Relative to the output folder, as `sha256sum -c SHA256SUMS` there reads it.
            let file = path.strip_prefix(self.out_dir).unwrap_or(path).display().to_string();
            let digest = sha256_file(path)?;
            sums.push_str(&format!("{digest}  {file}\n"));
            artifacts.push(json!({ "file": file, "format": format, "sha256": digest }));
        }
        let timings: BTreeMap<String, u64> =
            self.timings.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let manifest = json!({
            "kilnVersion": layers::KILN_VERSION,
            "image": { "arn": self.arn, "name": recipe.name, "version": recipe.semantic_version, "build": build },
            "recipe": self.file.image_recipe,
            "infrastructureConfiguration": self.file.infrastructure_configuration,
            "distributionConfiguration": self.file.distribution_configuration,
            "parent": { "reference": recipe.parent_image, "layers": base_stored, "info": parent_info },
            "components": component_records,
            "layers": stored_keys,
            "packages": packages,
            "artifacts": artifacts,
            "disk": disk,
            "tests": tests,
            "scan": scan.manifest,
            "compliance": compliance.manifest,
            "sourceDateEpoch": disk.source_date_epoch,
            "nonReproducible": disk.non_reproducible,
            "timingsMs": timings,
            "buildLog": "build-log.jsonl",
        });
        let manifest_path = self.out_dir.join("manifest.json");
        let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        fs::write(&manifest_path, text)
            .map_err(|e| BuildError::io("writing the manifest", &manifest_path, e))?;
        let manifest_digest = sha256_file(&manifest_path)?;
        sums.push_str(&format!("{manifest_digest}  manifest.json\n"));
        let sums_path = self.out_dir.join("SHA256SUMS");
        fs::write(&sums_path, sums).map_err(|e| BuildError::io("writing SHA256SUMS", &sums_path, e))?;
        self.kiln
            .block_on(self.kiln.store.set_manifest(self.arn, &self.out_dir.display().to_string(), &manifest))
            .map_err(|e| BuildError::Store(e.to_string()))?;
        // Distribution to the regions that name a store. A region that fails is recorded with
        // its reason and does not undo the image here; `kiln image distribute` completes it.
        let mut regions = Vec::new();
        if !crate::distribute::targets_of(&manifest).is_empty() {
            self.transition(kiln_store::ImageState::Distributing, "distributing")?;
            let image = self
                .kiln
                .block_on(self.kiln.store.get_image_by_arn(self.arn))
                .map_err(|e| BuildError::Store(e.to_string()))?;
            regions = self.stage("distribute", || self.kiln.distribute_until(&image, true, self.cancel()))?;
            for r in &regions {
                self.log_line("region", json!(r));
            }
        }
        self.check_cancel()?;
        self.transition(kiln_store::ImageState::Available, "built")?;
        self.log_line("finished", json!({ "state": "AVAILABLE" }));
        self.progress.build_event(&BuildEvent::Finished { arn: self.arn, state: "AVAILABLE" });
        Ok(BuildOutcome {
            arn: self.arn.to_string(),
            name: recipe.name.clone(),
            version: recipe.semantic_version.clone(),
            build,
            state: "AVAILABLE".into(),
            out_dir: self.out_dir.to_path_buf(),
            manifest: manifest_path,
            artifacts: disk.artifacts.iter().map(|a| a.path.clone()).chain(extra_files).collect(),
            layers_reused: reused,
            layers_built: built,
            duration_ms: started.elapsed().as_millis() as u64,
            regions,
        })
    }

    /// The layers for the parent image, bottom first: `(layer keys, what the parent is)`.
    /// A bootstrap or an import is one base layer; a kiln image is the layers it was built
    /// from (or, when those were pruned, an import of its disk).
    /// Returns `(content keys, stored keys, what the parent is)`; see [`BuildCtx::stored`].
    fn base_layers(&self) -> Result<(Vec<String>, Vec<String>, serde_json::Value), BuildError> {
        let cache = &self.kiln.layers;
        let into_layer = |key: &str, make: &dyn Fn(&Path) -> Result<serde_json::Value, BuildError>| {
            let key = &self.stored(key);
            if cache.get(key).is_some() {
                return Ok(json!({ "cached": true }));
            }
            let _lock = cache
                .lock_until(key, self.cancel())
                .map_err(|e| self.or_cancelled(BuildError::io("locking a layer", cache.dir(), e)))?;
            if cache.get(key).is_some() {
                // Another build made it while this one waited.
                return Ok(json!({ "cached": true }));
            }
            let scratch = cache.scratch(key).map_err(|e| BuildError::io("making a layer", cache.dir(), e))?;
            // A cancelled bootstrap or import fails here and its scratch layer is dropped.
            let info = make(&scratch.upper).map_err(|e| self.or_cancelled(e))?;
            scratch.commit().map_err(|e| BuildError::io("publishing a layer", cache.dir(), e))?;
            Ok(info)
        };
        match self.parent {
            kiln_parent::ParentRef::Managed { suite, .. } => {
                let mut spec = bootstrap_spec(*suite, self.file);
                spec.source_date_epoch = self.req.source_date_epoch.and_then(|e| u64::try_from(e).ok());
                spec.validate().map_err(|e| BuildError::Parent(e.to_string()))?;
                let key = layers::key(&[("bootstrap", &kiln_parent::bootstrap_key(&spec))]);
                let info = into_layer(&key, &|dest| {
                    let info =
                        kiln_parent::bootstrap_until(&spec, dest, &self.kiln.package_cache(), self.cancel())
                            .map_err(|e| match e {
                                kiln_parent::ParentError::Cancelled => BuildError::Cancelled,
                                e => BuildError::Parent(e.to_string()),
                            })?;
                    Ok(serde_json::to_value(&info).unwrap_or_default())
                })?;
                Ok((
                    vec![key.clone()],
                    vec![self.stored(&key)],
                    json!({ "kind": "bootstrap", "spec": spec, "bootstrap": info }),
                ))
            }
            kiln_parent::ParentRef::Disk { path } | kiln_parent::ParentRef::Tarball { path } => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    self.req.resource_file.parent().unwrap_or(Path::new(".")).join(path)
                };
                let digest = sha256_file(&path)?;
                let tarball = matches!(self.parent, kiln_parent::ParentRef::Tarball { .. });
                let key = layers::key(&[("import", &digest)]);
                let info = into_layer(&key, &|dest| {
                    let info = if tarball {
                        kiln_parent::import_tarball(&path, dest)
                    } else {
                        kiln_parent::import_disk(&path, dest)
                    }
                    .map_err(|e| BuildError::Parent(e.to_string()))?;
                    Ok(serde_json::to_value(&info).unwrap_or_default())
                })?;
                Ok((
                    vec![key.clone()],
                    vec![self.stored(&key)],
                    json!({ "kind": "import", "path": path, "sha256": digest, "import": info }),
                ))
            }
            kiln_parent::ParentRef::KilnImage { name, version } => {
                let filter = VersionFilter::parse(version).map_err(|e| BuildError::Parent(e.to_string()))?;
                let images = self
                    .kiln
                    .block_on(self.kiln.store.list_images(&kiln_store::ImageFilter {
                        name: Some(name.clone()),
                        state: Some(kiln_store::ImageState::Available),
                        ..Default::default()
                    }))
                    .map_err(|e| BuildError::Store(e.to_string()))?;
                let parent = images
                    .iter()
                    .filter(|i| filter.matches(&i.version))
                    .max_by_key(|i| (i.version, i.build))
                    .ok_or_else(|| {
                        BuildError::Parent(format!(
                            "no AVAILABLE kiln image {name} matches version {version}; `kiln image list` shows what there is"
                        ))
                    })?;
                let manifest = parent.manifest.clone().unwrap_or_default();
                let keys: Vec<String> = manifest["layers"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                let info = json!({ "kind": "kiln-image", "arn": parent.arn });
                if !keys.is_empty() && keys.iter().all(|k| cache.get(k).is_some()) {
                    return Ok((keys.clone(), keys, info));
                }
                // The parent's layers were pruned: start from its disk instead.
                let dir = PathBuf::from(parent.output_location.clone().unwrap_or_default());
                let disk = manifest["artifacts"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["format"] == "raw" || x["format"] == "qcow2"))
                    .and_then(|x| x["file"].as_str())
                    .map(|f| dir.join(f))
                    .ok_or_else(|| {
                        BuildError::Parent(format!("image {} has no disk to start from", parent.arn))
                    })?;
                let digest = sha256_file(&disk)?;
                let key = layers::key(&[("import", &digest)]);
                into_layer(&key, &|dest| {
                    let info = kiln_parent::import_disk(&disk, dest)
                        .map_err(|e| BuildError::Parent(e.to_string()))?;
                    Ok(serde_json::to_value(&info).unwrap_or_default())
                })?;
                Ok((vec![key.clone()], vec![self.stored(&key)], info))
            }
        }
    }

    fn keep_or_drop(
        &self,
        scratch: layers::Scratch,
        stack: &[PathBuf],
        step: &str,
    ) -> Result<(), BuildError> {
        if self.req.on_error == OnError::Abort {
            return Ok(());
        }
        let kept =
            scratch.keep_failed().map_err(|e| BuildError::io("keeping the failed layer", self.out_dir, e))?;
        self.log_line("keptFailedLayer", json!({ "path": kept }));
        eprintln!("kiln: the failed layer is kept in {}", kept.display());
        if self.req.on_error == OnError::Shell {
            let mut layers = stack.to_vec();
            layers.push(kept);
            run::interactive_shell(&layers, self.out_dir, step)?;
        }
        Ok(())
    }

    fn write_report(&self, name: &str, report: &kiln_component::report::RunReport) {
        let path = self.out_dir.join("reports").join(format!("{name}.json"));
        let _ = fs::create_dir_all(path.parent().unwrap_or(self.out_dir));
        let _ = fs::write(&path, serde_json::to_vec_pretty(report).unwrap_or_default());
    }

    /// The VM builder's one layer over `stack`: cached, or built in a booted VM.
    /// Returns `(layer, content key, stored key, build reports, built now)`.
    fn vm_layer(
        &self,
        stack: &[PathBuf],
        below: &str,
        working_dir: &str,
        step_logs: &Path,
        observer: &dyn Observer,
    ) -> Result<(PathBuf, String, String, Vec<kiln_component::report::DocumentReport>, bool), BuildError>
    {
        let cache = &self.kiln.layers;
        let recipe = &self.file.image_recipe;
        let components: Vec<serde_json::Value> = self
            .components
            .iter()
            .map(|c| json!({ "component": format!("{}/{}", c.name, c.version), "document": c.digest, "parameters": c.parameters }))
            .collect();
        let key = layers::key(&[
            ("below", below),
            ("vm-build", &serde_json::to_string(&components).unwrap_or_default()),
            ("network", &format!("{:?}", self.network())),
            ("workingDirectory", working_dir),
            ("kernelCommandLine", recipe.kernel_command_line.as_deref().unwrap_or_default()),
        ]);
        let skey = self.stored(&key);
        if let Some(p) = cache.get(&skey).filter(|_| cache.report_path(&skey).is_file()) {
            let report = fs::read(cache.report_path(&skey))
                .ok()
                .and_then(|b| serde_json::from_slice::<kiln_component::report::RunReport>(&b).ok());
            self.progress.build_event(&BuildEvent::LayerReused { component: "vm-build", key: &key });
            self.log_line("layerReused", json!({ "component": "vm-build", "key": key }));
            return Ok((p, key, skey, report.map(|r| r.documents).unwrap_or_default(), false));
        }
        let (layer, reports) = self.stage("build in VM", || {
            let _lock = cache
                .lock_until(&skey, self.cancel())
                .map_err(|e| self.or_cancelled(BuildError::io("locking a layer", cache.dir(), e)))?;
            let scratch =
                cache.scratch(&skey).map_err(|e| BuildError::io("making a layer", cache.dir(), e))?;
            let work = self.out_dir.join(".build-vm");
            let _ = layers::remove_tree(&work);
            fs::create_dir_all(&work).map_err(|e| BuildError::io("creating", &work, e))?;
            let infra = &self.file.infrastructure_configuration;
            let mut instance = crate::test_stage::instance_config(
                Path::new(""),
                &work,
                &self.kiln.cache_root.join("agent"),
                infra,
            );
            instance.env = self.env();
            if self.network() == Network::Host {
                // User-mode networking: the guest reaches out through the host, nothing reaches in.
                instance.nic = Some("user,model=virtio-net-pci".into());
            }
            let built = crate::vm_build::build_in_vm(
                crate::vm_build::VmBuild {
                    stack,
                    layout: self.layout,
                    kernel_cmdline: recipe.kernel_command_line.as_deref().unwrap_or_default(),
                    work: &work,
                    instance,
                    components: self.components,
                    working_dir,
                    log_dir: step_logs,
                    cancel: self.cancel(),
                },
                &scratch.upper,
                observer,
            );
            let _ = layers::remove_tree(&work);
            let built = built?;
            self.write_report("build-vm", &built.build);
            self.write_report("validate", &built.validate);
            phase_result("build", &built.build)?;
            phase_result("validate", &built.validate)?;
            let report_path = cache.report_path(&skey);
            fs::write(&report_path, serde_json::to_vec(&built.build).unwrap_or_default())
                .map_err(|e| BuildError::io("saving the layer's report", &report_path, e))?;
            let layer = scratch.commit().map_err(|e| BuildError::io("publishing a layer", cache.dir(), e))?;
            Ok((layer, built.build.documents))
        })?;
        Ok((layer, key, skey, reports, true))
    }

    fn test_stage(
        &self,
        disk: &kiln_image::AssembledDisk,
        working_dir: &str,
        step_logs: &Path,
        build_reports: &[kiln_component::report::DocumentReport],
        observer: &dyn Observer,
    ) -> Result<kiln_instance::SuiteOutcome, BuildError> {
        let artifact = disk
            .artifact(kiln_image::OutputFormat::Qcow2 { compressed: false })
            .ok_or_else(|| BuildError::Test("no qcow2 disk to boot".into()))?;
        let work = tempfile_dir(self.out_dir)?;
        let infra = &self.file.infrastructure_configuration;
        // `--on-error keep|shell` also leaves a failed test instance running for inspection.
        let keep = self.req.on_error != OnError::Abort;
        let mut instance = crate::test_stage::instance_config(
            &artifact.path,
            &work,
            &self.kiln.cache_root.join("agent"),
            infra,
        );
        instance.outlive_kiln = keep;
        instance.cancel = self.req.cancel.clone();
        let opts = kiln_instance::SuiteOptions {
            instance,
            target: self.arn.to_string(),
            second_instance: true,
            keep_on_failure: keep,
            fail_fast: true,
        };
        let components = self.components;
        let mut extra = |host: &dyn kiln_host::Host| {
            crate::test_stage::component_tests(
                host,
                components,
                working_dir,
                step_logs,
                build_reports,
                observer,
                self.cancel(),
            )
        };
        let outcome = kiln_instance::run_suite(&opts, &mut extra);
        if outcome.kept.is_none() {
            let _ = layers::remove_tree(&work);
        }
        // Tests cut short by the cancel failed for that reason alone: no test report.
        self.check_cancel()?;
        Ok(outcome)
    }
}

/// `Ok` when a phase's run succeeded, else the failure naming the component and the message.
fn phase_result(phase: &str, report: &kiln_component::report::RunReport) -> Result<(), BuildError> {
    if report.success() {
        return Ok(());
    }
    let component = report
        .documents
        .iter()
        .find(|d| d.status == kiln_component::report::Status::Failed)
        .map(|d| d.name.clone())
        .unwrap_or_default();
    let message = report.failure_message.clone().unwrap_or_else(|| "failed".into());
    Err(BuildError::StepFailed { phase: phase.into(), component, message })
}

fn tempfile_dir(near: &Path) -> Result<PathBuf, BuildError> {
    let dir = near.join(".test-vm");
    let _ = layers::remove_tree(&dir);
    fs::create_dir_all(&dir).map_err(|e| BuildError::io("creating the test VM folder", &dir, e))?;
    Ok(dir)
}

fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let mut f = fs::File::open(path).map_err(|e| BuildError::io("reading", path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| BuildError::io("reading", path, e))?;
    Ok(hex::encode(h.finalize()))
}
