//! One running test instance: QEMU on the overlay, the agent channel, readiness.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_host::{ExecRequest, Host};
use kiln_image::qemu::{Accel, Vm, VmConfig, find_firmware, tail};
use kiln_sandbox::{GuestOptions, GuestSession};

use crate::InstanceError;
use crate::prepare::{self, AGENT_PORT};

/// Lines on the serial console that mean the guest will never become ready: fail at once
/// instead of waiting for the timeout.
const FATAL_CONSOLE: &[(&str, &str)] = &[
    ("Kernel panic - not syncing", "kernel panic"),
    ("Gave up waiting for root", "the initramfs found no root file system"),
    ("Dropping to a shell!", "the initramfs dropped to a shell"),
    ("You are in emergency mode", "systemd entered emergency mode"),
    ("Give root password for maintenance", "systemd entered emergency mode"),
];

/// How a test instance is made.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// The image's disk (raw or qcow2); only read.
    pub image: PathBuf,
    /// Holds the overlay, the console log and QEMU's messages; created, and removed on drop
    /// unless the instance is kept.
    pub work_dir: PathBuf,
    /// Where the agent disk is cached.
    pub cache_dir: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    /// From QEMU's start until the agent answers and systemd has finished starting up.
    pub ready_timeout: Duration,
    /// Keep QEMU running after kiln exits when the instance is kept.
    pub outlive_kiln: bool,
    /// A network device (QEMU `-nic` value); `None`: the guest has no network device.
    pub nic: Option<String>,
    /// Added to the base environment of every step run in the guest.
    pub env: Vec<(String, String)>,
    /// More read-only disks for the guest (tool disks, see [`crate::tool_disk`]); the guest
    /// mounts them by label.
    pub extra_disks: Vec<PathBuf>,
    /// Ends the instance early: once cancelled, every wait on the guest (start-up, readiness,
    /// a request to its agent) returns an error within a tick of the agent channel (half a
    /// second), and dropping the [`Instance`] then kills QEMU and removes its work folder.
    pub cancel: Option<kiln_host::Cancel>,
}

/// Why the guest is gone when [`InstanceConfig::cancel`] was cancelled.
pub const CANCELLED: &str = "the instance was cancelled";

/// What the kernel prints last before it resets the machine (and not before a power-off).
const KERNEL_REBOOTING: &str = "reboot: Restarting system";

/// QEMU and how to start it again. A guest reboot makes QEMU exit (`cold_reboot`); the
/// watchdog, polled by every wait on the guest, then powers the same machine on again.
#[derive(Debug)]
struct Machine {
    vm: Option<Vm>,
    cfg: VmConfig,
    /// Where the current boot's console output starts in the log.
    boot_console_at: u64,
    /// Why QEMU is gone, once it is (and not to be started again).
    gone: Option<String>,
}

type SharedMachine = Arc<Mutex<Machine>>;

fn lock(machine: &SharedMachine) -> MutexGuard<'_, Machine> {
    machine.lock().unwrap_or_else(|e| e.into_inner())
}

/// A booted instance with its agent.
#[derive(Debug)]
pub struct Instance {
    machine: SharedMachine,
    session: GuestSession,
    work_dir: PathBuf,
    socket_dir: Option<tempfile::TempDir>,
    serial: PathBuf,
    accel: Accel,
    /// QEMU start to the agent's first answer.
    pub agent_after: Duration,
    keep: bool,
}

/// What `systemctl is-system-running --wait` said, and when.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub state: String,
    /// QEMU start to the end of systemd's start-up.
    pub after: Duration,
}

impl Instance {
    /// Makes the overlay, boots it, and waits for the agent (not yet for systemd).
    pub fn launch(cfg: &InstanceConfig) -> Result<Instance, InstanceError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            InstanceError::Prepare(format!("{what} {}: {e}", p.display()))
        };
        let cancelled = || cfg.cancel.as_ref().is_some_and(kiln_host::Cancel::is_cancelled);
        if cancelled() {
            return Err(InstanceError::Cancelled);
        }
        let firmware = find_firmware().map_err(|e| InstanceError::Prepare(e.to_string()))?;
        fs::create_dir_all(&cfg.work_dir).map_err(|e| io("cannot create", &cfg.work_dir, e))?;
        let overlay = cfg.work_dir.join("overlay.qcow2");
        prepare::make_overlay(&cfg.image, &overlay)?;
        let agent_disk = prepare::agent_disk(&cfg.cache_dir)?;
        // Making the overlay and the agent disk takes seconds; no QEMU is started after a
        // cancel that came meanwhile.
        if cancelled() {
            let _ = fs::remove_dir_all(&cfg.work_dir);
            return Err(InstanceError::Cancelled);
        }
        // A Unix socket path holds at most 107 bytes: keep it short, outside the work dir.
        let socket_dir = tempfile::Builder::new()
            .prefix("kiln-vm-")
            .tempdir()
            .map_err(|e| InstanceError::Prepare(format!("cannot create a socket folder: {e}")))?;
        let socket = socket_dir.path().join("agent.sock");

        let mut vm_cfg = VmConfig::new(&overlay, "qcow2", firmware, cfg.work_dir.as_path());
        vm_cfg.snapshot = false;
        vm_cfg.cpus = cfg.cpus;
        vm_cfg.memory_mib = cfg.memory_mib;
        vm_cfg.outlive_kiln = cfg.outlive_kiln;
        vm_cfg.nic = cfg.nic.clone();
        vm_cfg.cold_reboot = true;
        vm_cfg.extra_args = vec![
            "-drive".into(),
            format!("if=virtio,format=raw,readonly=on,file={}", prepare::qemu_path(&agent_disk)),
            "-device".into(),
            "virtio-serial-pci,id=kvser0".into(),
            "-chardev".into(),
            format!("socket,id=kagent,path={},server=on,wait=off", prepare::qemu_path(&socket)),
            "-device".into(),
            format!("virtserialport,bus=kvser0.0,chardev=kagent,name={AGENT_PORT}"),
        ];
        for disk in &cfg.extra_disks {
            vm_cfg.extra_args.push("-drive".into());
            vm_cfg
                .extra_args
                .push(format!("if=virtio,format=raw,readonly=on,file={}", prepare::qemu_path(disk)));
        }
        let vm = Vm::spawn(&vm_cfg).map_err(|e| InstanceError::Qemu(e.to_string()))?;
        let accel = vm.accel();
        let serial = vm.serial_log().to_path_buf();
        let started = vm.started();
        let machine =
            Arc::new(Mutex::new(Machine { vm: Some(vm), cfg: vm_cfg, boot_console_at: 0, gone: None }));
        let watchdog = watchdog(Arc::clone(&machine), cfg.cancel.clone());
        let mut env = kiln_sandbox::SandboxConfig::default_env();
        for (k, v) in &cfg.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        let opts = GuestOptions {
            env,
            network: cfg.nic.is_some(),
            ready_timeout: cfg.ready_timeout,
            watchdog,
            description: format!("test instance of {} (QEMU, {accel})", cfg.image.display()),
        };
        let session = match GuestSession::connect(&socket, opts) {
            Ok(s) => s,
            Err(e) => {
                let console = tail(&fs::read_to_string(&serial).unwrap_or_default(), 25);
                if let Some(mut vm) = lock(&machine).vm.take() {
                    vm.kill();
                }
                if cancelled() {
                    let _ = fs::remove_dir_all(&cfg.work_dir);
                    return Err(InstanceError::Cancelled);
                }
                let reason = match e {
                    kiln_sandbox::GuestError::NotReady { seconds } => format!(
                        "the guest did not become ready within {seconds} s ({accel}); its agent never answered"
                    ),
                    other => other.to_string(),
                };
                let _ = fs::remove_dir_all(&cfg.work_dir);
                return Err(InstanceError::NotReady { reason, console });
            }
        };
        Ok(Instance {
            machine,
            session,
            work_dir: cfg.work_dir.clone(),
            socket_dir: Some(socket_dir),
            serial,
            accel,
            agent_after: started.elapsed(),
            keep: false,
        })
    }

    /// The guest, as a [`Host`] for steps.
    pub fn host(&self) -> &GuestSession {
        &self.session
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial
    }

    /// The console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until systemd has finished starting up (`running` or `degraded`), within `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Readiness, InstanceError> {
        let started = lock(&self.machine).vm.as_ref().map(Vm::started).unwrap_or_else(Instant::now);
        let req = ExecRequest {
            argv: ["systemctl", "is-system-running", "--wait"].map(String::from).to_vec(),
            timeout: Some(timeout),
            ..Default::default()
        };
        let out = self.session.exec(&req).map_err(|e| InstanceError::NotReady {
            reason: format!("asking systemd for its state: {e}"),
            console: tail(&self.console(), 25),
        })?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status == kiln_host::ExitStatus::TimedOut {
            return Err(InstanceError::NotReady {
                reason: format!("systemd did not finish starting within {} s", timeout.as_secs()),
                console: tail(&self.console(), 25),
            });
        }
        Ok(Readiness { state, after: started.elapsed() })
    }

    /// The copy-on-write overlay the guest writes to.
    pub fn overlay(&self) -> PathBuf {
        self.work_dir.join("overlay.qcow2")
    }

    /// Flushes the guest's file systems and powers it off; waits up to `timeout` for QEMU to
    /// exit (and kills it after that, which loses nothing: the file systems were synced).
    pub fn power_off(&mut self, timeout: Duration) -> Result<(), InstanceError> {
        let run = |argv: &[&str]| {
            let req = ExecRequest {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                timeout: Some(Duration::from_secs(120)),
                ..Default::default()
            };
            self.session.exec(&req)
        };
        let sync = run(&["sync"]).map_err(|e| InstanceError::Qemu(format!("sync in the guest: {e}")))?;
        if !sync.status.success() {
            return Err(InstanceError::Qemu(format!("sync in the guest ended with {:?}", sync.status)));
        }
        run(&["systemctl", "poweroff", "--no-block"])
            .map_err(|e| InstanceError::Qemu(format!("asking the guest to power off: {e}")))?;
        let deadline = Instant::now() + timeout;
        let mut machine = lock(&self.machine);
        if let Some(vm) = machine.vm.as_mut() {
            while vm.exited().is_none() {
                if Instant::now() >= deadline {
                    vm.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        machine.vm = None;
        Ok(())
    }

    /// Leaves the instance running for inspection; says how to reach it.
    pub fn keep(mut self) -> KeptInstance {
        self.keep = true;
        // A kept instance is nobody's to restart: a reboot in it powers it off.
        let pid = lock(&self.machine).vm.take().and_then(Vm::detach);
        let socket = self.socket_dir.take().map(tempfile::TempDir::keep).map(|d| d.join("agent.sock"));
        KeptInstance {
            pid,
            work_dir: self.work_dir.clone(),
            serial: self.serial.clone(),
            agent_socket: socket,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut vm) = lock(&self.machine).vm.take() {
            vm.kill();
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.work_dir);
        }
    }
}

/// An instance left running by [`Instance::keep`].
#[derive(Debug, Clone)]
pub struct KeptInstance {
    pub pid: Option<u32>,
    pub work_dir: PathBuf,
    pub serial: PathBuf,
    pub agent_socket: Option<PathBuf>,
}

impl std::fmt::Display for KeptInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the test instance is still running (QEMU pid {})", self.pid.unwrap_or(0))?;
        writeln!(f, "  console log:  tail -f {}", self.serial.display())?;
        if let Some(s) = &self.agent_socket {
            writeln!(f, "  agent socket: {}", s.display())?;
        }
        writeln!(f, "  overlay:      {}", self.work_dir.join("overlay.qcow2").display())?;
        write!(f, "  stop it with: kill {}  (then remove {})", self.pid.unwrap_or(0), self.work_dir.display())
    }
}

/// Says why the guest is gone: QEMU exited, or the console shows a fatal boot failure — or
/// the instance was cancelled, which every wait on the guest then reports at its next tick.
/// A QEMU that exited because its guest rebooted is started again instead (see [`Machine`]).
fn watchdog(machine: SharedMachine, cancel: Option<kiln_host::Cancel>) -> kiln_sandbox::Watchdog {
    Box::new(move || {
        if cancel.as_ref().is_some_and(kiln_host::Cancel::is_cancelled) {
            return Some(CANCELLED.to_string());
        }
        let mut m = lock(&machine);
        let serial = m.cfg.work_dir.join("serial.log");
        let console = fs::read(&serial).unwrap_or_default();
        if let Some(why) = fatal_console(&String::from_utf8_lossy(&console)) {
            return Some(why);
        }
        if let Some(why) = &m.gone {
            return Some(why.clone());
        }
        let Some(vm) = m.vm.as_mut() else { return Some("QEMU was stopped".into()) };
        let exited = vm.exited()?;
        let this_boot = console.get(m.boot_console_at as usize..).unwrap_or_default();
        if !String::from_utf8_lossy(this_boot).contains(KERNEL_REBOOTING) {
            m.gone = Some(exited.clone());
            return Some(exited);
        }
        m.boot_console_at = console.len() as u64;
        let cfg = m.cfg.clone();
        let restarted = match m.vm.as_mut() {
            Some(vm) => vm.restart(&cfg),
            None => return Some("QEMU was stopped".into()),
        };
        match restarted {
            Ok(()) => {
                tracing::info!("the guest rebooted: QEMU powered it on again (a cold reboot)");
                None
            }
            Err(e) => {
                let why = format!("the guest rebooted and QEMU could not start it again: {e}");
                m.gone = Some(why.clone());
                Some(why)
            }
        }
    })
}

/// The first fatal boot failure on the console, with the line that shows it.
pub fn fatal_console(console: &str) -> Option<String> {
    for line in console.lines() {
        for (marker, what) in FATAL_CONSOLE {
            if line.contains(marker) {
                return Some(format!("{what}: {}", line.trim()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_console_lines_are_recognised() {
        let panic =
            "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)";
        assert!(fatal_console(panic).unwrap().starts_with("kernel panic: "));
        let initramfs = "Gave up waiting for root file system device.  Common problems:\nALERT!  UUID=x does not exist.  Dropping to a shell!";
        assert!(fatal_console(initramfs).unwrap().contains("no root file system"));
        assert_eq!(fatal_console("Debian GNU/Linux 12 kiln ttyS0\n\nkiln login:"), None);
    }
}
