//! The VM builder: the build and validate phases run inside a booted VM of the image so far,
//! for components that need a running system (services started and queried, kernel modules,
//! the Reboot action as a real reboot after which the document resumes).
//!
//! The layers below are assembled into a throwaway qcow2, booted as an instance with kiln's
//! guest agent (kiln-instance), and every component's build phase, then every validate phase,
//! runs in the guest through the same step engine as in the sandbox. The agent's unit is
//! removed inside the guest, the guest syncs and powers off, and its root file system is
//! imported from the overlay as one layer holding the whole tree (so files the components
//! deleted are gone too); the layers below it are not needed by the image any more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_component::document::PhaseName;
use kiln_component::engine::Observer;
use kiln_component::report::RunReport;
use kiln_host::{ExecRequest, Host};
use kiln_instance::{Instance, InstanceConfig};

use crate::BuildError;
use crate::run::{ResolvedComponent, run_phase_on};

/// What the VM build needs.
#[derive(Debug)]
pub(crate) struct VmBuild<'a> {
    /// The layers below, bottom first (the parent must be bootable: a kernel and systemd).
    pub stack: &'a [PathBuf],
    pub layout: &'a kiln_image::DiskLayout,
    pub kernel_cmdline: &'a str,
    /// Scratch space for the disk and the instance; the caller removes it.
    pub work: &'a Path,
    /// The instance's settings; `image` and `work_dir` are filled in here.
    pub instance: InstanceConfig,
    pub components: &'a [ResolvedComponent],
    pub working_dir: &'a str,
    pub log_dir: &'a Path,
    /// The build's token; also handed to the instance, whose waits then end on a cancel.
    pub cancel: Option<&'a kiln_host::Cancel>,
}

/// The reports of the build and validate phases.
#[derive(Debug)]
pub(crate) struct VmBuilt {
    pub build: RunReport,
    pub validate: RunReport,
}

fn vm_err(what: &str) -> impl Fn(String) -> BuildError + '_ {
    move |e| BuildError::Sandbox(format!("the build VM: {what}: {e}"))
}

/// Runs the phases in a VM and imports the result into `dest` (an empty layer directory).
/// A failed step is `Ok` with the failed report; the caller decides what that means. A cancel
/// is [`BuildError::Cancelled`] from whichever sub-step it interrupted (the VM is killed when
/// the instance drops; the caller removes the work folder and the unpublished layer).
pub(crate) fn build_in_vm(
    b: VmBuild<'_>,
    dest: &Path,
    observer: &dyn Observer,
) -> Result<VmBuilt, BuildError> {
    let mut opts = kiln_image::AssembleOptions::new(b.work.join("disk"));
    opts.name = "vm-build".into();
    opts.formats = vec![kiln_image::OutputFormat::Qcow2 { compressed: false }];
    opts.kernel_cmdline = b.kernel_cmdline.to_string();
    let source = kiln_image::TreeSource::Layers(b.stack.to_vec());
    let check_cancel = || crate::run::check_cancel(b.cancel);
    // A cancelled step's error is the cancel's doing: say so, not what broke under it.
    let or_cancelled = |e: BuildError| crate::run::or_cancelled(b.cancel, e);
    let staged = kiln_image::stage(&source, b.layout, &opts).map_err(|e| vm_err("staging")(e.to_string()))?;
    check_cancel()?;
    let disk = staged.assemble().map_err(|e| vm_err("assembling its disk")(e.to_string()))?;
    let qcow2 = disk
        .artifact(kiln_image::OutputFormat::Qcow2 { compressed: false })
        .ok_or_else(|| vm_err("assembling its disk")("no qcow2 was written".into()))?
        .path
        .clone();

    let mut cfg = b.instance;
    cfg.image = qcow2;
    cfg.work_dir = b.work.join("vm");
    cfg.cancel = b.cancel.cloned();
    let timeout = cfg.ready_timeout;
    let mut vm = Instance::launch(&cfg).map_err(|e| or_cancelled(vm_err("booting")(e.to_string())))?;
    vm.wait_ready(timeout).map_err(|e| or_cancelled(vm_err("waiting for systemd")(e.to_string())))?;

    let all: Vec<&ResolvedComponent> = b.components.iter().collect();
    let build =
        run_phase_on(vm.host(), &all, PhaseName::Build, b.working_dir, b.log_dir, &[], observer, b.cancel);
    let validate = if build.success() {
        run_phase_on(
            vm.host(),
            &all,
            PhaseName::Validate,
            b.working_dir,
            b.log_dir,
            &build.documents,
            observer,
            b.cancel,
        )
    } else {
        crate::run::empty_report(PhaseName::Validate)
    };
    check_cancel()?;
    if !build.success() || !validate.success() {
        return Ok(VmBuilt { build, validate });
    }

    // The agent's unit was only ever meant for this boot; removed inside the guest, where
    // every path resolves within the image.
    let rm = ExecRequest {
        argv: [
            "rm",
            "-f",
            "/etc/systemd/system/multi-user.target.wants/kiln-guest-agent.service",
            "/etc/systemd/system/kiln-guest-agent.service",
        ]
        .map(String::from)
        .to_vec(),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let out = vm.host().exec(&rm).map_err(|e| or_cancelled(vm_err("removing the agent")(e.to_string())))?;
    if !out.status.success() {
        return Err(vm_err("removing the agent")(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    vm.power_off(Duration::from_secs(120))
        .map_err(|e| or_cancelled(vm_err("powering off")(e.to_string())))?;
    // The import takes no disk with a backing file (whose path the disk itself names), so the
    // overlay is flattened first; sparse, so only written blocks take space.
    let flat = b.work.join("built.raw");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(vm.overlay())
        .arg(&flat)
        .output()
        .map_err(|e| vm_err("flattening its disk with qemu-img")(e.to_string()))?;
    if !out.status.success() {
        return Err(vm_err("flattening its disk with qemu-img")(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    drop(vm);
    check_cancel()?;
    kiln_parent::import_disk(&flat, dest).map_err(|e| vm_err("importing its disk")(e.to_string()))?;
    Ok(VmBuilt { build, validate })
}
