//! `kiln launch`: an image booted for a person to try, on a throwaway overlay.
//!
//! Unlike a test instance it gets no agent: the console is the user's (attached to the
//! terminal, or logged to a file when detached) and, when asked, SSH is forwarded from a port
//! on 127.0.0.1 through QEMU's user-mode network (the guest can reach out through it; nothing
//! outside this machine can reach in). A cloud-init NoCloud seed (a small FAT disk labelled
//! CIDATA with user-data and meta-data) lets users try their first-boot configuration.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_image::qemu::{Vm, VmConfig, find_firmware};

use crate::InstanceError;
use crate::prepare::{create_overlay, run, tool};

/// How to launch an image.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub image: PathBuf,
    /// Holds the overlay, the seed and (detached) the console log.
    pub work_dir: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Forward 127.0.0.1:PORT to the guest's port 22 (gives the guest a user-mode network).
    pub ssh_port: Option<u16>,
    /// Run in the background with the console in a log file.
    pub detach: bool,
    /// cloud-init NoCloud user-data and meta-data files.
    pub user_data: Option<PathBuf>,
    pub meta_data: Option<PathBuf>,
}

/// How a launch ended, or where the detached instance runs.
#[derive(Debug)]
pub enum Launched {
    /// The interactive session ended (the user quit QEMU or powered the guest off).
    Ended {
        status: String,
    },
    Detached {
        pid: u32,
        console: PathBuf,
        work_dir: PathBuf,
        ssh_port: Option<u16>,
    },
}

/// The NoCloud seed disk: a FAT file system labelled CIDATA holding user-data and meta-data
/// (an instance id is made up when no meta-data is given, as cloud-init requires one).
pub fn nocloud_seed(
    dir: &Path,
    user_data: Option<&Path>,
    meta_data: Option<&Path>,
) -> Result<PathBuf, InstanceError> {
    let files = dir.join("seed");
    fs::create_dir_all(&files)
        .map_err(|e| InstanceError::Prepare(format!("cannot create {}: {e}", files.display())))?;
    let copy = |from: Option<&Path>, name: &str, default: String| -> Result<(), InstanceError> {
        let to = files.join(name);
        match from {
            Some(f) => fs::copy(f, &to)
                .map(|_| ())
                .map_err(|e| InstanceError::Prepare(format!("cannot read {} ({name}): {e}", f.display()))),
            None => fs::write(&to, default)
                .map_err(|e| InstanceError::Prepare(format!("cannot write {name}: {e}"))),
        }
    };
    let id = format!("kiln-{}", std::process::id());
    copy(user_data, "user-data", "#cloud-config\n{}\n".into())?;
    copy(meta_data, "meta-data", format!("instance-id: {id}\nlocal-hostname: kiln\n"))?;
    let seed = dir.join("seed.img");
    let _ = fs::remove_file(&seed);
    let mut mkfs = tool("mkfs.vfat");
    mkfs.args(["-n", "CIDATA", "-C"]).arg(&seed).arg("2048");
    run(mkfs, "making the NoCloud seed with mkfs.vfat (Debian package dosfstools)")?;
    let mut mcopy = tool("mcopy");
    mcopy.arg("-i").arg(&seed).arg(files.join("user-data")).arg(files.join("meta-data")).arg("::");
    run(mcopy, "copying the seed files with mcopy (Debian package mtools)")?;
    Ok(seed)
}

/// Boots the image on an overlay: interactively (returns when the session ends, removing the
/// overlay) or detached (returns at once; the overlay stays until the user removes it).
pub fn launch(opts: &LaunchOptions) -> Result<Launched, InstanceError> {
    let firmware = find_firmware().map_err(|e| InstanceError::Prepare(e.to_string()))?;
    fs::create_dir_all(&opts.work_dir)
        .map_err(|e| InstanceError::Prepare(format!("cannot create {}: {e}", opts.work_dir.display())))?;
    let overlay = opts.work_dir.join("overlay.qcow2");
    create_overlay(&opts.image, &overlay)?;

    let mut cfg = VmConfig::new(&overlay, "qcow2", firmware, opts.work_dir.as_path());
    cfg.snapshot = false;
    cfg.cpus = opts.cpus;
    cfg.memory_mib = opts.memory_mib;
    cfg.outlive_kiln = opts.detach;
    cfg.interactive = !opts.detach;
    cfg.nic = opts.ssh_port.map(|p| format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{p}-:22"));
    if opts.user_data.is_some() || opts.meta_data.is_some() {
        let seed = nocloud_seed(&opts.work_dir, opts.user_data.as_deref(), opts.meta_data.as_deref())?;
        cfg.extra_args = vec![
            "-drive".into(),
            format!("if=virtio,format=raw,readonly=on,file={}", crate::prepare::qemu_path(&seed)),
        ];
    }
    let mut vm = Vm::spawn(&cfg).map_err(|e| InstanceError::Qemu(e.to_string()))?;
    if opts.detach {
        let console = vm.serial_log().to_path_buf();
        // A QEMU that cannot start exits at once: say so instead of printing a dead pid.
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Some(why) = vm.exited() {
            return Err(InstanceError::Qemu(why));
        }
        let pid = vm.detach().unwrap_or(0);
        return Ok(Launched::Detached {
            pid,
            console,
            work_dir: opts.work_dir.clone(),
            ssh_port: opts.ssh_port,
        });
    }
    let status = vm.wait().map_err(|e| InstanceError::Qemu(e.to_string()))?;
    let _ = fs::remove_dir_all(&opts.work_dir);
    Ok(Launched::Ended { status: status.to_string() })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn the_seed_is_a_cidata_fat_disk_with_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let ud = dir.path().join("ud");
        fs::write(&ud, "#cloud-config\nhostname: tried\n").unwrap();
        let seed = nocloud_seed(dir.path(), Some(&ud), None).unwrap();
        let label = Command::new("fatlabel").arg(&seed).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "CIDATA");
        let out = Command::new("mtype").arg("-i").arg(&seed).arg("::user-data").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "#cloud-config\nhostname: tried\n");
        let out = Command::new("mtype").arg("-i").arg(&seed).arg("::meta-data").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("instance-id: kiln-"));
    }
}
