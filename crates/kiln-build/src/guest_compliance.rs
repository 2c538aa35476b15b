//! Compliance evaluated with OpenSCAP inside a booted test instance: the probes that read a
//! running system (sysctl values in force, installed packages through dpkg, services) work
//! there, where the offline tree scan cannot answer them. The image is booted from its
//! throwaway overlay (kiln-instance), the host's OpenSCAP reaches the guest on a read-only
//! tools disk, and the results come back through the guest agent; kiln's own profiles read
//! the imported tree as usual, and everything lands in one report.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_compliance::scap::{self, ScapProfile, ScapRun};
use kiln_compliance::{ComplianceError, ComplianceReport, Plan};
use kiln_host::{ExecRequest, ExitStatus, Host};
use kiln_instance::{Instance, ToolBundle};

use crate::BuildError;
use crate::test_stage::instance_config;

/// The tools disk's label and where the guest mounts it.
const TOOLS_LABEL: &str = "KILN-OSCAP";
const TOOLS_MOUNT: &str = "/run/kiln-oscap";
/// Results are written to the guest's /run (a tmpfs), so not even the overlay changes.
const RESULTS: &str = "/run/kiln-oscap-results.xml";
/// A whole SSG profile takes minutes under software emulation.
const EVAL_TIMEOUT: Duration = Duration::from_secs(3600);

/// What to evaluate in a guest.
#[derive(Debug)]
pub struct GuestCompliance<'a> {
    /// The image's disk (raw or qcow2); only read.
    pub disk: &'a Path,
    /// Its root file system, imported (for kiln's own profiles and the release).
    pub root: &'a Path,
    /// How the report names the target.
    pub target: &'a str,
    pub infra: kiln_model::InfrastructureConfiguration,
}

impl crate::Kiln {
    /// Evaluates `plan` against an image, running its SCAP Security Guide profiles with
    /// OpenSCAP inside a test instance of `req.disk` (booted once, on the first such profile,
    /// and powered off at the end). Without SSG profiles nothing is booted.
    pub fn compliance_in_guest(
        &self,
        req: &GuestCompliance<'_>,
        plan: &Plan,
    ) -> Result<ComplianceReport, BuildError> {
        let tmp = self.home.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| BuildError::io("creating", &tmp, e))?;
        let work = tempfile::Builder::new()
            .prefix("compliance-")
            .tempdir_in(&tmp)
            .map_err(|e| BuildError::io("creating a folder in", &tmp, e))?;
        let cache = self.cache_root().join("agent");
        let booted: RefCell<Option<(Instance, PathBuf)>> = RefCell::new(None);
        let runner =
            |fs: &kiln_scan::rootfs::RootFs, profile: &ScapProfile| -> Result<ScapRun, ComplianceError> {
                let tools = scap::guest_tools(fs, profile)?;
                let mut slot = booted.borrow_mut();
                if let Some((_, ds)) = slot.as_ref()
                    && *ds != tools.datastream
                {
                    return Err(ComplianceError::Scap(format!(
                        "the profiles need two data streams ({} and {}); evaluate them one at a time",
                        ds.display(),
                        tools.datastream.display()
                    )));
                }
                if slot.is_none() {
                    let vm = boot_with_tools(req, &tools, &cache, &work.path().join("vm"))?;
                    *slot = Some((vm, tools.datastream.clone()));
                }
                let (vm, ds) = slot.as_ref().expect("booted above");
                let run = ExecRequest {
                    argv: scap::guest_command(TOOLS_MOUNT, profile, RESULTS),
                    timeout: Some(EVAL_TIMEOUT),
                    ..Default::default()
                };
                let out = vm.host().exec(&run).map_err(|e| {
                    ComplianceError::Scap(format!("running OpenSCAP in the test instance: {e}"))
                })?;
                let code = match out.status {
                    ExitStatus::Code(c) => Some(c),
                    ExitStatus::TimedOut => {
                        return Err(ComplianceError::Scap(format!(
                            "OpenSCAP did not finish within {} s in the test instance",
                            EVAL_TIMEOUT.as_secs()
                        )));
                    }
                    ExitStatus::Signal(_) => None,
                };
                let results =
                    vm.host().read_file(RESULTS).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
                let _ = vm.host().remove_file(RESULTS);
                scap::read_run(
                    "OpenSCAP in the test instance",
                    code,
                    results.as_deref(),
                    &String::from_utf8_lossy(&out.stderr),
                    profile,
                    &format!("{} (in a booted test instance)", ds.display()),
                )
            };
        let report = kiln_compliance::evaluate_with(req.root, req.target, plan, &runner);
        if let Some((mut vm, _)) = booted.into_inner() {
            // Nothing of the guest is kept; a clean power-off only spares QEMU a kill.
            let _ = vm.power_off(Duration::from_secs(60));
        }
        report.map_err(|e| BuildError::Compliance(e.to_string()))
    }
}

/// Boots `req.disk` with the tools disk attached and mounted, ready for OpenSCAP.
fn boot_with_tools(
    req: &GuestCompliance<'_>,
    tools: &scap::GuestTools,
    cache: &Path,
    work: &Path,
) -> Result<Instance, ComplianceError> {
    let err = |what: &str, e: String| ComplianceError::Scap(format!("{what}: {e}"));
    let bundle = ToolBundle {
        label: TOOLS_LABEL.into(),
        programs: vec![("oscap".into(), tools.oscap.clone())],
        data: vec![
            (tools.share.clone(), "share/openscap".into()),
            (tools.datastream.clone(), scap::GUEST_DATASTREAM.into()),
        ],
        scripts: Vec::new(),
    };
    let disk = kiln_instance::tool_disk(cache, "oscap", &bundle)
        .map_err(|e| err("making the OpenSCAP disk for the test instance", e.to_string()))?;
    let mut cfg = instance_config(req.disk, work, cache, &req.infra);
    cfg.extra_disks = vec![disk];
    // The end of the console says why a guest did not come up.
    let not_ready = |what: &str, e: kiln_instance::InstanceError| {
        let console = e.console().map(|c| format!("\nthe end of its console:\n{c}")).unwrap_or_default();
        err(what, format!("{e}{console}"))
    };
    let vm = Instance::launch(&cfg).map_err(|e| not_ready("booting the test instance", e))?;
    vm.wait_ready(cfg.ready_timeout).map_err(|e| not_ready("waiting for the test instance", e))?;
    let mount = ExecRequest {
        argv: [
            "/bin/sh",
            "-c",
            "mkdir -p \"$1\" && { mountpoint -q \"$1\" || mount -o ro,nodev,nosuid LABEL=\"$2\" \"$1\"; }",
            "sh",
            TOOLS_MOUNT,
            TOOLS_LABEL,
        ]
        .map(String::from)
        .to_vec(),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let out =
        vm.host().exec(&mount).map_err(|e| err("mounting the OpenSCAP disk in the guest", e.to_string()))?;
    if !out.status.success() {
        return Err(err(
            "mounting the OpenSCAP disk in the guest",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(vm)
}
