//! The test stage: the image booted as a test instance (kiln-instance), the built-in tests,
//! and every component's test phase run inside the guest by the same step engine as the build.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_component::document::PhaseName;
use kiln_component::engine::Observer;
use kiln_component::report::DocumentReport;
use kiln_host::Host;
use kiln_instance::{TestCase, TestStatus};

use crate::run::{ResolvedComponent, run_phase_on};

/// The components' test phases on `host`, one named test per component that has one.
pub fn component_tests(
    host: &dyn Host,
    components: &[ResolvedComponent],
    working_dir: &str,
    log_dir: &Path,
    earlier: &[DocumentReport],
    observer: &dyn Observer,
    cancel: Option<&kiln_host::Cancel>,
) -> Vec<TestCase> {
    let mut out = Vec::new();
    for c in components {
        if !c.document.phases.iter().any(|p| p.name == PhaseName::Test) {
            continue;
        }
        let name = format!("component:{}/{}", c.name, c.version);
        let t = Instant::now();
        let report =
            run_phase_on(host, &[c], PhaseName::Test, working_dir, log_dir, earlier, observer, cancel);
        let mut lines = String::new();
        for d in &report.documents {
            for p in &d.phases {
                for s in &p.steps {
                    lines.push_str(&format!("{} {} {}\n", p.name, s.name, s.status.as_str()));
                    if let Some(m) = &s.failure_message {
                        lines.push_str(&format!("  {m}\n"));
                    }
                }
            }
        }
        out.push(if report.success() {
            TestCase::passed(&name, t.elapsed(), lines)
        } else {
            let why = report.failure_message.clone().unwrap_or_else(|| "the test phase failed".into());
            TestCase::failed(&name, t.elapsed(), why, lines)
        });
    }
    out
}

/// A one-line summary of a report's results for the console: "8 passed, 1 skipped".
pub fn summary(tests: &[TestCase]) -> String {
    let count = |s: TestStatus| tests.iter().filter(|t| t.status == s).count();
    format!(
        "{} passed, {} failed, {} skipped",
        count(TestStatus::Passed),
        count(TestStatus::Failed),
        count(TestStatus::Skipped)
    )
}

/// The infrastructure configuration an image was built with (its CPUs, memory and test
/// timeout for test instances); the defaults for a disk that is not catalogued.
pub fn image_infra(image: Option<&kiln_store::Image>) -> kiln_model::InfrastructureConfiguration {
    let manifest = image.and_then(|i| i.manifest.as_ref());
    manifest
        .and_then(|m| serde_json::from_value(m["infrastructureConfiguration"].clone()).ok())
        .unwrap_or_default()
}

/// The suite's settings from an infrastructure configuration.
pub fn instance_config(
    image: &Path,
    work_dir: &Path,
    cache_dir: &Path,
    infra: &kiln_model::InfrastructureConfiguration,
) -> kiln_instance::InstanceConfig {
    kiln_instance::InstanceConfig {
        image: image.to_path_buf(),
        work_dir: work_dir.to_path_buf(),
        cache_dir: cache_dir.to_path_buf(),
        cpus: infra.cpus,
        memory_mib: infra.memory_mib,
        ready_timeout: Duration::from_secs(infra.test_timeout_seconds),
        outlive_kiln: false,
        nic: None,
        env: Vec::new(),
        extra_disks: Vec::new(),
        cancel: None,
    }
}

/// `kiln test`: what to test and how.
#[derive(Debug, Clone, Default)]
pub struct TestRequest {
    /// A raw or qcow2 disk file, or a catalogued image (`NAME/VERSION[/BUILD]` or its ARN).
    pub target: String,
    /// Where tests.json and junit.xml go (default: the image's folder, or beside the disk).
    pub report_dir: Option<std::path::PathBuf>,
    /// Leave a failed instance running.
    pub keep: bool,
    /// Skip the second instance (and with it the uniqueness tests).
    pub single_instance: bool,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub timeout: Option<Duration>,
}

/// What `kiln test` found.
#[derive(Debug)]
pub struct Tested {
    pub outcome: kiln_instance::SuiteOutcome,
    pub report_dir: std::path::PathBuf,
    pub json: std::path::PathBuf,
    pub junit: std::path::PathBuf,
}

impl crate::Kiln {
    /// The catalogued image a reference names: its ARN, or `NAME/VERSION[/BUILD]` (the newest
    /// build when BUILD is left out).
    pub fn find_image(&self, reference: &str) -> Result<kiln_store::Image, crate::BuildError> {
        let store = self.store();
        let found = if reference.starts_with("arn:") {
            self.block_on(store.get_image_by_arn(reference))
        } else {
            let parts: Vec<&str> = reference.split('/').collect();
            let (name, version, build) = match parts.as_slice() {
                [n, v] => (*n, *v, None),
                [n, v, b] => (
                    *n,
                    *v,
                    Some(b.parse::<u32>().map_err(|_| {
                        crate::BuildError::Store(format!("`{b}` in `{reference}` is not a build number"))
                    })?),
                ),
                _ => {
                    return Err(crate::BuildError::Store(format!(
                        "`{reference}` is not a path, NAME/VERSION[/BUILD] or an image ARN"
                    )));
                }
            };
            let version: kiln_store::Version = version.parse().map_err(|e| {
                crate::BuildError::Store(format!("`{reference}` is not NAME/VERSION[/BUILD]: {e}"))
            })?;
            self.block_on(store.get_image(name, &version, build))
        };
        found.map_err(|e| {
            crate::BuildError::Store(format!("{reference} is not a file and not a catalogued image: {e}"))
        })
    }

    /// The disk of a catalogued image, the first of `formats` (`"qcow2"`, `"raw"`) its manifest
    /// lists: booting prefers qcow2, reading a file system prefers raw (no conversion).
    pub fn image_disk(
        &self,
        image: &kiln_store::Image,
        formats: &[&str],
    ) -> Result<std::path::PathBuf, crate::BuildError> {
        let dir = std::path::PathBuf::from(image.output_location.clone().unwrap_or_default());
        let manifest = image.manifest.clone().unwrap_or_default();
        let artifacts = manifest["artifacts"].as_array().cloned().unwrap_or_default();
        let disk = formats
            .iter()
            .find_map(|f| artifacts.iter().find(|a| a["format"] == *f))
            .and_then(|a| a["file"].as_str())
            .map(|f| dir.join(f));
        match disk {
            Some(d) if d.is_file() => Ok(d),
            Some(d) => Err(crate::BuildError::Store(format!(
                "image {} lists its disk {} but the file is missing",
                image.arn,
                d.display()
            ))),
            None => Err(crate::BuildError::Store(format!(
                "image {} has no {} disk in its manifest",
                image.arn,
                formats.join(" or ")
            ))),
        }
    }

    /// Boots TARGET as a test instance and runs the built-in tests, and for a catalogued image
    /// its components' test phases; writes the reports.
    pub fn test(&self, req: &TestRequest, observer: &dyn Observer) -> Result<Tested, crate::BuildError> {
        let path = Path::new(&req.target);
        let (disk, image) = if path.is_file() {
            (path.to_path_buf(), None)
        } else {
            let image = self.find_image(&req.target)?;
            (self.image_disk(&image, &["qcow2", "raw"])?, Some(image))
        };
        let manifest = image.as_ref().and_then(|i| i.manifest.clone()).unwrap_or_default();
        let mut infra = image_infra(image.as_ref());
        if let Some(c) = req.cpus {
            infra.cpus = c;
        }
        if let Some(m) = req.memory_mib {
            infra.memory_mib = m;
        }
        if let Some(t) = req.timeout {
            infra.test_timeout_seconds = t.as_secs();
        }
        let report_dir = match (&req.report_dir, &image) {
            (Some(d), _) => d.clone(),
            (None, Some(i)) => Path::new(i.output_location.as_deref().unwrap_or(".")).join("test-report"),
            (None, None) => disk.with_file_name(format!(
                "{}.test-report",
                disk.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            )),
        };
        let components = match &image {
            Some(_) => self.manifest_components(&manifest)?,
            None => Vec::new(),
        };
        let tmp = self.home.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| crate::BuildError::io("creating", &tmp, e))?;
        let work = tempfile::Builder::new()
            .prefix("test-")
            .tempdir_in(&tmp)
            .map_err(|e| crate::BuildError::io("creating a test folder in", &tmp, e))?;
        let mut instance =
            instance_config(&disk, &work.path().join("vm"), &self.cache_root().join("agent"), &infra);
        instance.outlive_kiln = req.keep;
        let opts = kiln_instance::SuiteOptions {
            instance,
            target: image.as_ref().map(|i| i.arn.clone()).unwrap_or_else(|| disk.display().to_string()),
            second_instance: !req.single_instance,
            keep_on_failure: req.keep,
            fail_fast: false,
        };
        let logs = report_dir.join("logs");
        let working_dir = manifest["recipe"]["workingDirectory"].as_str().unwrap_or("/tmp").to_string();
        let mut extra =
            |host: &dyn Host| component_tests(host, &components, &working_dir, &logs, &[], observer, None);
        let outcome = kiln_instance::run_suite(&opts, &mut extra);
        if outcome.kept.is_some() {
            // The kept instance's overlay lives in the work folder.
            let _ = work.keep();
        }
        let (json, junit) = outcome
            .report
            .write(&report_dir)
            .map_err(|e| crate::BuildError::io("writing the test report", &report_dir, e))?;
        let _ = std::fs::write(report_dir.join("console.log"), &outcome.console);
        Ok(Tested { outcome, report_dir, json, junit })
    }

    /// The components an image was built with, from its manifest and the catalogue.
    fn manifest_components(
        &self,
        manifest: &serde_json::Value,
    ) -> Result<Vec<ResolvedComponent>, crate::BuildError> {
        let mut out = Vec::new();
        for c in manifest["components"].as_array().cloned().unwrap_or_default() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let version = c["version"].as_str().unwrap_or_default().to_string();
            let text = if version == "file" {
                // A document given by path is not in the catalogue; its test phase cannot run again.
                continue;
            } else {
                let v: kiln_store::Version = version
                    .parse()
                    .map_err(|e| crate::BuildError::Component(format!("component {name}/{version}: {e}")))?;
                self.block_on(self.store().get_component(&name, &v))
                    .map_err(|e| crate::BuildError::Component(format!("component {name}/{version}: {e}")))?
                    .document
            };
            let document = kiln_component::document::parse_document(&format!("{name}/{version}"), &text)
                .map_err(crate::BuildError::Invalid)?;
            let parameters: Vec<(String, String)> = c["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let digest = c["digest"].as_str().unwrap_or_default().to_string();
            out.push(ResolvedComponent { name, version, digest, document, parameters });
        }
        Ok(out)
    }
}
