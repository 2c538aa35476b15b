//! Test instances: an image booted in QEMU, tested from inside.
//!
//! kiln-instance owns what happens between "here is a disk" and "here is a test report": the
//! copy-on-write overlay the guest writes to (the image itself is only read), kiln's guest
//! agent added to that overlay and started by systemd, QEMU with UEFI firmware (KVM when it
//! works, TCG otherwise), readiness from systemd itself (`systemctl is-system-running --wait`
//! through the agent, never a fixed sleep), the built-in tests, and the JSON and JUnit reports.
//! The booted guest is a [`kiln_host::Host`] ([`kiln_sandbox::GuestSession`]), so callers run
//! component test phases in it with the same step engine as a build. It must not know about
//! recipes, components or the catalogue: callers hand it a disk and settings, and an optional
//! callback for extra tests.
//!
//! # Why an agent on a virtio-serial port
//!
//! The guest channel is a virtio-serial port whose host end is a Unix socket, served in the
//! guest by this same kiln executable (from a read-only agent disk, through its own dynamic
//! loader). Unlike SSH it needs nothing installed in the image, no network device, and no key
//! to inject and remove; unlike scraping the serial console it gives exit codes, separate
//! stdout and stderr, and file operations. The only change to the tested system is one unit
//! file and its `multi-user.target.wants` link, written into the throwaway overlay.

mod instance;
mod launch;
mod prepare;
mod report;
mod suite;

pub use instance::{CANCELLED, Instance, InstanceConfig, KeptInstance, Readiness, fatal_console};
pub use launch::{LaunchOptions, Launched, launch, nocloud_seed};
pub use prepare::{
    AGENT_PORT, AGENT_UNIT, PREPARE_ARG, ToolBundle, agent_disk, make_overlay, prepare_main_if_requested,
    tool_disk,
};
pub use report::{TestCase, TestReport, TestStatus};
pub use suite::{BUILTIN_TESTS, ExtraTests, SuiteOptions, SuiteOutcome, run_suite};

/// Why a test instance could not be made or did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// Making the overlay or the agent disk failed (missing tool, no space, bad disk).
    #[error("cannot prepare the test instance: {0}")]
    Prepare(String),
    /// QEMU could not be started.
    #[error("cannot start QEMU: {0}")]
    Qemu(String),
    /// The guest never became ready: the reason, and the end of its console.
    #[error("the test instance did not become ready: {reason}")]
    NotReady { reason: String, console: String },
    /// [`InstanceConfig::cancel`] was cancelled before the instance was up.
    #[error("the test instance was cancelled")]
    Cancelled,
}

impl InstanceError {
    /// The reason without the console.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// The end of the guest's console, when it got that far.
    pub fn console(&self) -> Option<&str> {
        match self {
            InstanceError::NotReady { console, .. } => Some(console),
            _ => None,
        }
    }
}
