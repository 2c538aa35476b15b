//! What makes the disk boot: the image's own kernel and initramfs, systemd-boot as the
//! removable-media boot path `\EFI\BOOT\BOOTX64.EFI`, its loader.conf and one Type #1 loader
//! entry, and the image's /etc/fstab.
//!
//! systemd-boot because it needs no install step that inspects the running host (unlike
//! grub-install), is configured by two small text files, and reads the kernel from the ESP.
//! Its binary comes from the image's own systemd-boot-efi package when the image has it: the
//! boot loader then matches the image, is updated by the image's package manager, and the
//! disk does not depend on what the build host has installed. The host's copy is the
//! fallback, and the manifest says so.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};
use crate::tree::{Scan, name_of, open_regular};

/// Where systemd-boot's x86-64 binary lives, in the image and on Debian hosts.
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Where to take the systemd-boot EFI binary from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BootLoaderSource {
    /// The image's copy if it has one, else the host's.
    #[default]
    Auto,
    /// Only the image's copy.
    Image,
    /// Only the build host's copy.
    Host,
    /// This file on the host.
    File(PathBuf),
}

/// The kernel and initramfs found in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelFiles {
    /// Kernel release, such as `6.1.0-28-amd64`.
    pub version: String,
    /// Host paths inside the tree (symlinks resolved inside the tree).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Finds the image's kernel: the `/vmlinuz` and `/initrd.img` links Debian maintains (or the
/// same in /boot), else the newest `vmlinuz-VERSION` in /boot with a matching initramfs.
/// Paths resolve inside the merged tree; the files are read from the layers holding them.
pub(crate) fn find_kernel(tree: &Scan) -> Result<KernelFiles> {
    let top = || tree.source.top().to_owned();
    for (k, i) in [("/vmlinuz", "/initrd.img"), ("/boot/vmlinuz", "/boot/initrd.img")] {
        if let (Some(kernel), Some(initrd)) = (tree.resolve(k)?, tree.resolve(i)?)
            && kernel.is_file()
            && initrd.is_file()
        {
            let version = name_of(&kernel).trim_start_matches("vmlinuz-").to_owned();
            return Ok(KernelFiles { version, kernel, initrd });
        }
    }
    let boot = tree
        .resolve_rel("/boot")?
        .ok_or_else(|| ImageError::NoKernel { tree: top(), reason: "the image has no /boot".into() })?;
    let mut versions: Vec<String> = tree
        .list(&boot)
        .into_iter()
        .filter_map(|n| n.to_str().and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_owned))
        .collect();
    versions.sort_by(|a, b| version_cmp(b, a));
    for v in &versions {
        let kernel = tree.resolve(&format!("/boot/vmlinuz-{v}"))?;
        for initrd in [format!("/boot/initrd.img-{v}"), format!("/boot/initramfs-{v}.img")] {
            if let (Some(kernel), Some(initrd)) = (&kernel, tree.resolve(&initrd)?)
                && kernel.is_file()
                && initrd.is_file()
            {
                return Ok(KernelFiles { version: v.clone(), kernel: kernel.clone(), initrd });
            }
        }
    }
    Err(ImageError::NoKernel {
        tree: top(),
        reason: if versions.is_empty() {
            "no /vmlinuz link and no /boot/vmlinuz-* file".into()
        } else {
            format!(
                "kernels {versions:?} in /boot have no initrd.img-VERSION or initramfs-VERSION.img beside them"
            )
        },
    })
}

/// Compares version strings the way people read them: digit runs as numbers.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut v = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                v.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        v
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then(x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// Where the boot loader binary came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BootLoaderOrigin {
    Image,
    Host,
    File,
}

/// Finds the systemd-boot binary per `source`.
pub(crate) fn find_boot_loader(
    tree: &Scan,
    source: &BootLoaderSource,
) -> Result<(PathBuf, BootLoaderOrigin)> {
    let mut looked = Vec::new();
    if matches!(source, BootLoaderSource::Auto | BootLoaderSource::Image) {
        looked.push(tree.host_path(Path::new(SYSTEMD_BOOT_EFI.trim_start_matches('/'))));
        if let Some(p) = tree.resolve(SYSTEMD_BOOT_EFI)?
            && p.is_file()
        {
            return Ok((p, BootLoaderOrigin::Image));
        }
    }
    if matches!(source, BootLoaderSource::Auto | BootLoaderSource::Host) {
        let p = PathBuf::from(SYSTEMD_BOOT_EFI);
        if p.is_file() {
            return Ok((p, BootLoaderOrigin::Host));
        }
        looked.push(p);
    }
    if let BootLoaderSource::File(p) = source {
        if p.is_file() {
            return Ok((p.clone(), BootLoaderOrigin::File));
        }
        looked.push(p.clone());
    }
    Err(ImageError::NoBootLoader { looked })
}

/// The image's PRETTY_NAME (from os-release inside the tree), for the boot menu.
pub(crate) fn os_title(tree: &Scan) -> String {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        let Ok(Some(path)) = tree.resolve(p) else { continue };
        let Ok(f) = open_regular(&path) else { continue };
        let mut text = String::new();
        // Bounded: a hostile tree could make os-release huge.
        if f.take(64 * 1024).read_to_string(&mut text).is_err() {
            continue;
        }
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("PRETTY_NAME=") {
                let v = v.trim().trim_matches('"').trim_matches('\'');
                let clean: String = v.chars().filter(|c| !c.is_control()).take(100).collect();
                if !clean.is_empty() {
                    return clean;
                }
            }
        }
    }
    "Linux".into()
}

/// systemd-boot's loader.conf: boot the one entry at once.
pub(crate) fn loader_conf() -> String {
    "default kiln.conf\ntimeout 0\neditor no\n".into()
}

/// The Type #1 boot loader entry.
pub(crate) fn loader_entry(title: &str, version: &str, kernel: &str, initrd: &str, options: &str) -> String {
    format!("title {title}\nversion {version}\nlinux {kernel}\ninitrd {initrd}\noptions {options}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Source, scan};
    use std::fs;
    use std::os::unix::fs::symlink;

    fn find_kernel(tree: &Path) -> Result<KernelFiles> {
        super::find_kernel(&scan(&Source::dir(tree), &[PathBuf::new()])?)
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(version_cmp("6.10.0-1-amd64", "6.9.0-3-amd64").is_gt());
        assert!(version_cmp("6.1.0-28-amd64", "6.1.0-9-amd64").is_gt());
        assert!(version_cmp("6.1.0", "6.1.0").is_eq());
    }

    #[test]
    fn kernel_found_by_link_or_newest() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("boot")).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-28-amd64"] {
            fs::write(r.join(format!("boot/vmlinuz-{v}")), b"k").unwrap();
            fs::write(r.join(format!("boot/initrd.img-{v}")), b"i").unwrap();
        }
        assert_eq!(find_kernel(r).unwrap().version, "6.1.0-28-amd64");
        symlink("boot/vmlinuz-6.1.0-9-amd64", r.join("vmlinuz")).unwrap();
        symlink("/boot/initrd.img-6.1.0-9-amd64", r.join("initrd.img")).unwrap();
        let k = find_kernel(r).unwrap();
        assert_eq!(k.version, "6.1.0-9-amd64");
        assert_eq!(k.initrd, r.join("boot/initrd.img-6.1.0-9-amd64"));
    }

    #[test]
    fn no_kernel_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("boot")).unwrap();
        let e = find_kernel(t.path()).unwrap_err().to_string();
        assert!(e.contains("no bootable kernel") && e.contains("linux-image"), "{e}");
    }
}
