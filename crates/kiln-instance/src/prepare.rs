//! Making a test instance's disks: the copy-on-write overlay of the image with the agent's
//! unit added to it, and the read-only agent disk.
//!
//! The overlay is a qcow2 file whose backing file is the image (raw or qcow2), so the image is
//! never opened for writing. The agent's systemd unit is written into the overlay's root file
//! system without mounting it in the host kernel: `qemu-storage-daemon` exports the overlay as
//! a raw file through FUSE and `debugfs -w` (e2fsprogs) writes the unit at the root partition's
//! offset. Both run in a re-executed helper (`kiln` with [`PREPARE_ARG`]) that is PID 1 of
//! private mount and PID namespaces (`unshare --mount --pid --fork --kill-child`): the FUSE
//! mount exists only in that namespace, and if kiln dies the kernel kills the daemon with it,
//! so nothing is left mounted. debugfs resolves every path inside the image's own file
//! system, so a symlink planted in the image cannot make it write on the host.
//!
//! The agent disk is a small ext4 file system (made with `mkfs.ext4 -d`) holding the running
//! kiln executable, the shared libraries it links and the dynamic loader, run through that
//! loader: the guest needs no particular C library. It is cached by the executable's identity.
//! Other tools reach a guest the same way ([`ToolBundle`], [`tool_disk`]): OpenSCAP, for rules
//! that need the running system.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::InstanceError;

/// The hidden first argument of the overlay helper; then OVERLAY UNIT.
pub const PREPARE_ARG: &str = "__kiln-instance-prepare";

/// The name of the virtio-serial port the agent listens on.
pub const AGENT_PORT: &str = "org.kiln.agent.0";
/// The agent disk's file system label (ext4 labels hold 16 bytes).
pub const AGENT_LABEL: &str = "KILN-AGENT";
/// The unit added to the overlay (and only to it).
pub const AGENT_UNIT: &str = "kiln-guest-agent.service";

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command with a fixed environment (no inherited variables, a known PATH, the C locale).
pub(crate) fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.env_clear().env("PATH", PATH).env("LC_ALL", "C");
    c
}

/// Runs `cmd`; its stdout, or an error saying what was being done and what it printed.
pub(crate) fn run(mut cmd: Command, what: &str) -> Result<String, InstanceError> {
    let out =
        cmd.stdin(Stdio::null()).output().map_err(|e| InstanceError::Prepare(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(InstanceError::Prepare(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unit that starts the agent in the guest, after basic.target and before multi-user.target
/// is complete. Its `ExecStart` mounts the agent disk and runs kiln through its own loader.
fn unit_text() -> String {
    format!(
        "# Added by kiln to a throwaway test-instance overlay; never part of an image.\n\
         [Unit]\n\
         Description=kiln test-instance agent\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart=/bin/sh -c 'mkdir -p /run/kiln-agent && {{ mountpoint -q /run/kiln-agent || mount -o ro,nodev,nosuid LABEL={AGENT_LABEL} /run/kiln-agent; }} && exec /bin/sh /run/kiln-agent/start'\n\
         Restart=on-failure\n\
         RestartSec=1\n"
    )
}

/// Creates a qcow2 overlay at `overlay` whose backing file is `image` (raw or qcow2, detected
/// from its content), so that a guest's writes never reach the image.
pub(crate) fn create_overlay(image: &Path, overlay: &Path) -> Result<(), InstanceError> {
    let image = image
        .canonicalize()
        .map_err(|e| InstanceError::Prepare(format!("cannot open the image {}: {e}", image.display())))?;
    let format = kiln_parent::disk_format(&image).map_err(|e| InstanceError::Prepare(e.to_string()))?;
    let mut create = tool("qemu-img");
    create.args(["create", "-q", "-f", "qcow2", "-F", format, "-b"]).arg(&image).arg(overlay);
    run(create, "creating the copy-on-write overlay with qemu-img").map(drop)
}

/// Creates the overlay of `image` at `overlay` and adds the agent's unit to its root file
/// system (through the namespaced helper).
pub fn make_overlay(image: &Path, overlay: &Path) -> Result<(), InstanceError> {
    create_overlay(image, overlay)?;
    let unit = overlay.with_extension("unit");
    fs::write(&unit, unit_text())
        .map_err(|e| InstanceError::Prepare(format!("cannot write {}: {e}", unit.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| InstanceError::Prepare(format!("cannot find the running executable: {e}")))?;
    let mut helper = tool("unshare");
    helper
        .args(["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--"])
        .arg(&exe)
        .arg(PREPARE_ARG)
        .arg(overlay)
        .arg(&unit);
    let r = run(helper, "adding the agent to the overlay");
    let _ = fs::remove_file(&unit);
    r.map(|_| ())
}

/// Runs the overlay helper if this process was started as one, and never returns then.
pub fn prepare_main_if_requested() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(PREPARE_ARG) {
        return;
    }
    let code = match (args.get(2), args.get(3)) {
        (Some(overlay), Some(unit)) => match inject(Path::new(overlay), Path::new(unit)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        _ => {
            eprintln!("usage: {PREPARE_ARG} OVERLAY UNIT");
            2
        }
    };
    std::process::exit(code);
}

/// In the helper's namespaces: export the overlay, write the unit, end the export.
fn inject(overlay: &Path, unit: &Path) -> Result<(), String> {
    let dir = overlay.parent().ok_or("the overlay has no folder")?;
    let export = dir.join("export.raw");
    fs::File::create(&export).map_err(|e| format!("cannot create {}: {e}", export.display()))?;
    let mut daemon = tool("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=file0,filename={}", qemu_path(overlay)))
        .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!("type=fuse,id=exp0,node-name=disk0,mountpoint={},writable=on", qemu_path(&export)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-storage-daemon (Debian package qemu-system-common): {e}"))?;
    let result = (|| {
        let start = Instant::now();
        while !is_fuse_mount(&export) {
            if let Ok(Some(status)) = daemon.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = daemon.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!("qemu-storage-daemon exited ({status}): {}", err.trim()));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err("qemu-storage-daemon did not export the overlay within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let root = kiln_parent::root_partition(&export).map_err(|e| e.to_string())?;
        let target = format!("{}?offset={}", export.display(), root.offset);
        let cmds = format!(
            "mkdir /etc/systemd/system/multi-user.target.wants\n\
             write {unit} /etc/systemd/system/{AGENT_UNIT}\n\
             symlink /etc/systemd/system/multi-user.target.wants/{AGENT_UNIT} /etc/systemd/system/{AGENT_UNIT}\n",
            unit = unit.display()
        );
        let mut debugfs = tool("debugfs");
        debugfs.args(["-w", "-f", "-"]).arg(&target).stdin(Stdio::piped()).stdout(Stdio::piped());
        debugfs.stderr(Stdio::piped());
        let mut child =
            debugfs.spawn().map_err(|e| format!("cannot run debugfs (Debian package e2fsprogs): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(cmds.as_bytes()).map_err(|e| format!("debugfs: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("debugfs: {e}"))?;
        if !out.status.success() {
            return Err(format!("debugfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        // debugfs carries on after a failed command: check the result instead of its status.
        let check = tool("debugfs")
            .arg("-R")
            .arg(format!("stat /etc/systemd/system/multi-user.target.wants/{AGENT_UNIT}"))
            .arg(&target)
            .output()
            .map_err(|e| format!("debugfs: {e}"))?;
        if !String::from_utf8_lossy(&check.stdout).contains("Type: symlink") {
            return Err(format!(
                "could not add the agent unit to the image's root file system: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}

fn is_fuse_mount(path: &Path) -> bool {
    let want = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()) && l.contains(" - fuse"))
}

/// QEMU's option syntax splits on commas; a comma in a path is written twice.
pub(crate) fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Programs and data for a guest, as a small read-only ext4 disk (made with `mkfs.ext4 -d`)
/// that the guest mounts by its label. Each program is copied with the shared libraries it
/// links and the host's dynamic loader, and gets a wrapper script of its name at the disk's
/// root that runs it through that loader: the guest needs no particular C library.
#[derive(Debug, Clone, Default)]
pub struct ToolBundle {
    /// The file system label the guest mounts it by (at most 16 bytes).
    pub label: String,
    /// `(name, host path)`: each becomes `bin/NAME` and the wrapper `NAME`.
    pub programs: Vec<(String, PathBuf)>,
    /// `(host file or folder, path on the disk)`, copied as they are.
    pub data: Vec<(PathBuf, String)>,
    /// `(name, body)`: executable shell scripts at the root; `$d` is the disk's mount point.
    pub scripts: Vec<(String, String)>,
}

/// The agent disk for the running executable, made once and cached in `cache_dir`.
pub fn agent_disk(cache_dir: &Path) -> Result<PathBuf, InstanceError> {
    let exe = std::env::current_exe()
        .map_err(|e| InstanceError::Prepare(format!("cannot find the running executable: {e}")))?;
    let bundle = ToolBundle {
        label: AGENT_LABEL.into(),
        programs: vec![("kiln".into(), exe)],
        data: Vec::new(),
        scripts: vec![(
            "start".into(),
            format!("exec \"$d/kiln\" {} /dev/virtio-ports/{AGENT_PORT}\n", kiln_sandbox::GUEST_AGENT_ARG),
        )],
    };
    tool_disk(cache_dir, "agent", &bundle)
}

/// The disk for `bundle`, made once and cached in `cache_dir` under `prefix` and a digest of
/// everything that goes into it (paths, sizes and modification times); disks of the same
/// prefix that are stale are removed.
pub fn tool_disk(cache_dir: &Path, prefix: &str, bundle: &ToolBundle) -> Result<PathBuf, InstanceError> {
    use sha2::Digest;
    let err = |what: &str, e: std::io::Error| InstanceError::Prepare(format!("{what}: {e}"));
    let mut key = sha2::Sha256::new();
    key.update(format!("{}\n", bundle.label));
    for (name, path) in &bundle.programs {
        key.update(format!("program {name} "));
        identity(path, &mut key).map_err(|e| err(&format!("cannot inspect {}", path.display()), e))?;
    }
    for (src, dest) in &bundle.data {
        key.update(format!("data {dest} "));
        identity(src, &mut key).map_err(|e| err(&format!("cannot inspect {}", src.display()), e))?;
    }
    for (name, body) in &bundle.scripts {
        key.update(format!("script {name} {}\n{body}", body.len()));
    }
    let key = hex::encode(&key.finalize()[..12]);
    fs::create_dir_all(cache_dir).map_err(|e| err(&format!("cannot create {}", cache_dir.display()), e))?;
    let disk = cache_dir.join(format!("{prefix}-{key}.ext4"));
    if disk.is_file() {
        return Ok(disk);
    }
    let work = tempfile::Builder::new()
        .prefix(&format!(".{prefix}-"))
        .tempdir_in(cache_dir)
        .map_err(|e| err("cannot create a folder for the disk", e))?;
    let root = work.path().join("bundle");
    let (bin, lib) = (root.join("bin"), root.join("lib"));
    for d in [&bin, &lib] {
        fs::create_dir_all(d).map_err(|e| err(&format!("cannot create {}", d.display()), e))?;
    }
    let mut scripts = bundle.scripts.clone();
    for (name, exe) in &bundle.programs {
        fs::copy(exe, bin.join(name)).map_err(|e| err(&format!("cannot copy {}", exe.display()), e))?;
        let mut loader = None;
        for (lib_name, path) in shared_libraries(exe)? {
            let dest = lib.join(&lib_name);
            if !dest.exists() {
                fs::copy(&path, &dest).map_err(|e| err(&format!("cannot copy {}", path.display()), e))?;
            }
            if lib_name.starts_with("ld-linux") {
                loader = Some(lib_name);
            }
        }
        let loader = loader.ok_or_else(|| {
            InstanceError::Prepare(format!("ldd shows no dynamic loader for {}", exe.display()))
        })?;
        scripts.push((
            name.clone(),
            format!("exec \"$d/lib/{loader}\" --library-path \"$d/lib\" \"$d/bin/{name}\" \"$@\"\n"),
        ));
    }
    for (src, dest) in &bundle.data {
        let to = root.join(dest.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| err(&format!("cannot create {}", parent.display()), e))?;
        }
        // `cp -a` keeps the tree as it is (links included); the host's own files are trusted.
        let mut cp = tool("cp");
        cp.arg("-a").arg(src).arg(&to);
        run(cp, &format!("copying {} into the {prefix} disk", src.display()))?;
    }
    for (name, body) in &scripts {
        let path = root.join(name);
        let text = format!("#!/bin/sh\n# Made by kiln for a test instance.\nd=$(dirname \"$0\")\n{body}");
        fs::write(&path, text).map_err(|e| err(&format!("cannot write {}", path.display()), e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|e| err(&format!("cannot make {} executable", path.display()), e))?;
    }
    let size_mib = du(&root) / (1 << 20) * 5 / 4 + 16;
    let tmp = work.path().join("disk.ext4");
    let mut mkfs = tool("mkfs.ext4");
    mkfs.args(["-q", "-F", "-L", &bundle.label, "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&tmp)
        .arg(format!("{size_mib}M"));
    run(mkfs, &format!("making the {prefix} disk with mkfs.ext4"))?;
    fs::rename(&tmp, &disk).map_err(|e| err(&format!("cannot store the {prefix} disk"), e))?;
    remove_old_disks(cache_dir, prefix, &disk);
    Ok(disk)
}

/// Feeds what identifies `path` (and, for a folder, everything in it) into `key`.
fn identity(path: &Path, key: &mut sha2::Sha256) -> std::io::Result<()> {
    use sha2::Digest;
    let meta = fs::metadata(path)?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    key.update(format!(
        "{} {} {}\n",
        path.display(),
        meta.len(),
        mtime.map(|d| d.as_nanos()).unwrap_or_default()
    ));
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            identity(&e, key)?;
        }
    }
    Ok(())
}

/// Disks of `prefix` other than `keep` (each up to a few hundred MiB) are removed once they
/// have not been made for a while; a running instance keeps its disk open, so unlinking is
/// safe.
fn remove_old_disks(cache_dir: &Path, prefix: &str, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(600));
        if path != keep && name.starts_with(&format!("{prefix}-")) && name.ends_with(".ext4") && old {
            let _ = fs::remove_file(&path);
        }
    }
}

/// `(file name, path)` of every shared library `exe` loads, the dynamic loader included.
fn shared_libraries(exe: &Path) -> Result<Vec<(String, PathBuf)>, InstanceError> {
    let mut ldd = tool("ldd");
    ldd.arg(exe);
    let out = run(ldd, "listing kiln's shared libraries with ldd")?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let real = p.canonicalize().unwrap_or(p);
            libs.push((name, real));
        }
    }
    Ok(libs)
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).map(|rd| rd.flatten().map(|e| du(&e.path())).sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_mounts_the_agent_disk_by_label_and_runs_the_start_script() {
        let u = unit_text();
        assert!(u.contains("LABEL=KILN-AGENT"));
        assert!(u.contains("/run/kiln-agent/start"));
        assert!(!u.contains("[Install]"), "the unit is enabled by a link, not by an [Install] section");
    }

    #[test]
    fn the_running_test_binary_has_a_loader() {
        let exe = std::env::current_exe().unwrap();
        let libs = shared_libraries(&exe).unwrap();
        assert!(libs.iter().any(|(n, p)| n.starts_with("ld-linux") && p.is_file()), "{libs:?}");
        assert!(libs.iter().any(|(n, _)| n.starts_with("libc.so")), "{libs:?}");
    }
}
