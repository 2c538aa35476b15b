//! Booting a disk image in QEMU under OVMF (UEFI), as the tests of disk assembly and the
//! later image test stage do: accelerator detection, firmware lookup, a VM with its serial
//! console captured to a file, waiting for a pattern on it, and a guaranteed kill.
//!
//! KVM is used only if it actually runs a guest: on nested or restricted hosts /dev/kvm opens
//! and creates VMs and QEMU still aborts setting MSRs for `-cpu host`, or stops with "KVM
//! internal error" in the firmware. So [`detect_accel`] starts the firmware once under KVM
//! and falls back to TCG unless it gets going within seconds.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What can go wrong starting or watching a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    #[error("cannot run {tool}: {source}\nhint: install the Debian package qemu-system-x86")]
    Missing {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no OVMF firmware: looked for {looked:?}\nhint: install the Debian package ovmf")]
    NoFirmware { looked: Vec<PathBuf> },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "QEMU exited ({status}) before {pattern:?} appeared on the serial console\nstderr: {stderr}\nserial console (last lines):\n{serial}"
    )]
    Exited { status: String, pattern: String, stderr: String, serial: String },
    #[error(
        "{pattern:?} did not appear on the serial console within {seconds} s (accelerator {accel})\nserial console (last lines):\n{serial}\nhint: read the whole console log at {log}"
    )]
    Timeout { pattern: String, seconds: u64, accel: Accel, serial: String, log: PathBuf },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> QemuError + use<> {
    let path = path.to_owned();
    move |source| QemuError::Io { action, path, source }
}

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

const QEMU: &str = "qemu-system-x86_64";

/// KVM if it runs a guest on this host, else TCG. `KILN_QEMU_ACCEL=kvm|tcg` overrides.
/// The answer is probed once per process.
pub fn detect_accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| match std::env::var("KILN_QEMU_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ if kvm_runs() => Accel::Kvm,
        _ => Accel::Tcg,
    })
}

/// Tries KVM the way [`Vm::spawn`] will use it (q35, `-cpu host`): with OVMF when it is
/// installed (KVM works if the firmware writes to the serial console), else with a 64 KiB
/// firmware whose reset vector does `mov al,0; out 0xf4,al`, which makes QEMU's
/// isa-debug-exit device end QEMU with status 1. Anything else within 10 s means no KVM.
fn kvm_runs() -> bool {
    if fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    let Ok(dir) = tempfile::tempdir() else { return false };
    let serial = dir.path().join("serial.log");
    let mut cmd = Command::new(QEMU);
    cmd.args(["-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-nic", "none", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let ovmf = find_firmware().ok();
    if let Some(fw) = &ovmf {
        let vars = dir.path().join("vars.fd");
        if fs::copy(&fw.vars, &vars).is_err() {
            return false;
        }
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", qemu_path(&fw.code)))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", qemu_path(&vars)));
    } else {
        let bios = dir.path().join("exit.bin");
        let mut image = vec![0xF4u8; 64 * 1024]; // hlt everywhere
        let reset = image.len() - 16;
        image[reset..reset + 7].copy_from_slice(&[0xB0, 0x00, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]);
        if fs::write(&bios, &image).is_err() {
            return false;
        }
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-bios"]).arg(&bios);
    }
    let Ok(child) = cmd.spawn() else { return false };
    let mut guard = Guard(Some(child));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(c) = guard.0.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            guard.0 = None;
            return ovmf.is_none() && status.code() == Some(1);
        }
        if ovmf.is_some() && fs::metadata(&serial).is_ok_and(|m| m.len() > 0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Kills and reaps a child when dropped.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// OVMF's code (read-only) and the template of its variable store (copied per VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Finds OVMF: `KILN_OVMF_CODE`/`KILN_OVMF_VARS`, else Debian's and Fedora's locations.
pub fn find_firmware() -> Result<Firmware, QemuError> {
    if let (Some(c), Some(v)) = (std::env::var_os("KILN_OVMF_CODE"), std::env::var_os("KILN_OVMF_VARS")) {
        return Ok(Firmware { code: c.into(), vars: v.into() });
    }
    let pairs = [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ];
    let mut looked = Vec::new();
    for (c, v) in pairs {
        if Path::new(c).is_file() && Path::new(v).is_file() {
            return Ok(Firmware { code: c.into(), vars: v.into() });
        }
        looked.push(PathBuf::from(c));
    }
    Err(QemuError::NoFirmware { looked })
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub disk: PathBuf,
    /// qemu's format name: `qcow2`, `raw`, `vmdk`, `vhdx`, `vpc`.
    pub disk_format: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `None`: [`detect_accel`].
    pub accel: Option<Accel>,
    pub firmware: Firmware,
    /// Directory for the serial log, QEMU's stderr and the firmware variables.
    pub work_dir: PathBuf,
    /// Boot from a throw-away overlay so that the disk file (an artifact with a digest)
    /// is never written.
    pub snapshot: bool,
    pub extra_args: Vec<String>,
    /// Keep QEMU running when kiln exits (for an instance left for inspection); by default it
    /// dies with the thread that started it.
    pub outlive_kiln: bool,
    /// A network device (QEMU `-nic` value, such as user-mode networking with a port
    /// forwarded on 127.0.0.1); `None` gives the guest no network device at all.
    pub nic: Option<String>,
    /// Attach the serial console (and QEMU's monitor, Ctrl-A C) to kiln's terminal instead of
    /// a log file.
    pub interactive: bool,
    /// A guest reboot powers QEMU off (`-no-reboot`) instead of resetting the machine, for
    /// the owner to start it again cold with [`Vm::restart`]: under TCG, a warm reset now and
    /// then hangs in the firmware with a vCPU spinning, and a cold start does not.
    pub cold_reboot: bool,
}

impl VmConfig {
    pub fn new(
        disk: impl Into<PathBuf>,
        disk_format: &str,
        firmware: Firmware,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        VmConfig {
            disk: disk.into(),
            disk_format: disk_format.into(),
            memory_mib: 1024,
            cpus: 1,
            accel: None,
            firmware,
            work_dir: work_dir.into(),
            snapshot: true,
            extra_args: Vec::new(),
            outlive_kiln: false,
            nic: None,
            interactive: false,
            cold_reboot: false,
        }
    }
}

/// A running VM, killed and reaped when dropped. It has no network device (`-nic none`).
#[derive(Debug)]
pub struct Vm {
    child: Option<Child>,
    serial: PathBuf,
    stderr: PathBuf,
    accel: Accel,
    started: Instant,
}

impl Vm {
    /// Starts QEMU with the disk as its only boot device.
    pub fn spawn(cfg: &VmConfig) -> Result<Vm, QemuError> {
        Vm::start(cfg, true)
    }

    /// Starts QEMU again, cold, on the same disk, firmware variables and console log (which
    /// goes on after what the previous run wrote): the second half of a [`VmConfig::cold_reboot`].
    /// The previous QEMU is killed first if it still runs.
    pub fn restart(&mut self, cfg: &VmConfig) -> Result<(), QemuError> {
        self.kill();
        let next = Vm::start(cfg, false)?;
        *self = next;
        Ok(())
    }

    /// `fresh`: a new machine (the firmware's variables copied, the console log emptied);
    /// otherwise the same machine powered on again.
    fn start(cfg: &VmConfig, fresh: bool) -> Result<Vm, QemuError> {
        fs::create_dir_all(&cfg.work_dir).map_err(io_err("creating", &cfg.work_dir))?;
        let vars = cfg.work_dir.join("OVMF_VARS.fd");
        let serial = cfg.work_dir.join("serial.log");
        let stderr = cfg.work_dir.join("qemu.stderr");
        if fresh {
            fs::copy(&cfg.firmware.vars, &vars)
                .map_err(io_err("copying the OVMF variable store to", &vars))?;
            File::create(&serial).map_err(io_err("creating", &serial))?;
        }
        let err_file = File::create(&stderr).map_err(io_err("creating", &stderr))?;
        let accel = cfg.accel.unwrap_or_else(detect_accel);
        let mut cmd = Command::new(QEMU);
        cmd.args(["-machine", "q35", "-accel", &accel.to_string()])
            .args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }])
            .args(["-m", &cfg.memory_mib.to_string(), "-smp", &cfg.cpus.to_string()])
            .args(["-nodefaults", "-display", "none"])
            .args(if cfg.interactive { &[][..] } else { &["-monitor", "none"][..] })
            .args(["-nic", cfg.nic.as_deref().unwrap_or("none")])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", qemu_path(&cfg.firmware.code)))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", qemu_path(&vars)))
            .arg("-drive")
            .arg(format!(
                "if=virtio,format={},file={}{}",
                cfg.disk_format,
                qemu_path(&cfg.disk),
                if cfg.snapshot { ",snapshot=on" } else { "" }
            ))
            .args(if cfg.cold_reboot { &["-no-reboot"][..] } else { &[][..] });
        if cfg.interactive {
            cmd.args(["-serial", "mon:stdio"]);
        } else {
            // Appended to, so a cold reboot's console follows the previous boot's.
            cmd.arg("-chardev")
                .arg(format!("file,id=kilnserial,path={},append=on", qemu_path(&serial)))
                .args(["-serial", "chardev:kilnserial"]);
        }
        cmd.args(&cfg.extra_args);
        if cfg.interactive {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(err_file);
        } else {
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err_file);
        }
        // QEMU dies with the thread that started it, so a killed kiln leaves no guest running.
        if !cfg.outlive_kiln {
            // SAFETY: prctl(2) is async-signal-safe; the closure runs in the child before exec.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| QemuError::Missing { tool: QEMU.into(), source })?;
        Ok(Vm { child: Some(child), serial, stderr, accel, started: Instant::now() })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(how it ended and what QEMU said)` once QEMU has exited.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
                Some(format!(
                    "QEMU exited ({status}){}",
                    if stderr.trim().is_empty() { String::new() } else { format!(": {}", stderr.trim()) }
                ))
            }
            _ => None,
        }
    }

    /// Waits for QEMU to exit (an interactive session ends when the user quits).
    pub fn wait(&mut self) -> Result<std::process::ExitStatus, QemuError> {
        let mut c = self.child.take().ok_or_else(|| QemuError::Io {
            action: "waiting for",
            path: PathBuf::from(QEMU),
            source: std::io::Error::other("QEMU is not running"),
        })?;
        c.wait().map_err(io_err("waiting for", Path::new(QEMU)))
    }

    /// When QEMU started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Leaves QEMU running after this handle is dropped; returns its process id.
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn serial_output(&self) -> String {
        let mut s = Vec::new();
        if let Ok(mut f) = File::open(&self.serial) {
            let _ = f.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    /// Waits until `pattern` appears on the serial console; returns the time since spawn.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Duration, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_output().contains(pattern) {
                return Ok(self.started.elapsed());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(QemuError::Exited {
                    status: status.to_string(),
                    pattern: pattern.into(),
                    stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
                    serial: tail(&self.serial_output(), 30),
                });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout {
                    pattern: pattern.into(),
                    seconds: timeout.as_secs(),
                    accel: self.accel,
                    serial: tail(&self.serial_output(), 30),
                    log: self.serial.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills QEMU and reaps it (also done on drop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// QEMU's -drive syntax splits on commas; a comma in a path is written twice.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The last `lines` lines of `s`.
pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_commas_are_escaped() {
        assert_eq!(qemu_path(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
