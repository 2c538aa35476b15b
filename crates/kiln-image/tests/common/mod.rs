//! The cached bootable Debian tree shared by the boot test and the benchmark.
#![allow(dead_code)] // the test and the benchmark use different parts

use std::path::PathBuf;
use std::process::Command;

/// Packages on top of minbase: an init, udev, the kernel (its dependencies bring
/// initramfs-tools) and systemd-boot's EFI binary, which the assembly takes from the image.
pub const INCLUDE: &str = "systemd,systemd-sysv,udev,linux-image-amd64,systemd-boot-efi";

pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
    });
    base.join("kiln")
}

/// The bookworm tree, bootstrapped once with mmdebstrap and kept under the cache directory,
/// keyed by the package list.
pub fn bookworm_tree() -> PathBuf {
    use sha2::{Digest, Sha256};
    let key = hex::encode(&Sha256::digest(format!("bookworm minbase {INCLUDE}"))[..8]);
    let dir = cache_dir().join("image-roots");
    let tree = dir.join(format!("bookworm-minbase-{key}"));
    if tree.join("etc/os-release").exists() {
        return tree;
    }
    assert!(
        have("mmdebstrap"),
        "mmdebstrap is not installed and {} does not exist: run scripts/install-deps.sh",
        tree.display()
    );
    std::fs::create_dir_all(&dir).unwrap();
    // flock serialises concurrent test processes so that only one bootstraps; the others
    // find the finished tree.
    let part = dir.join(format!("bookworm-minbase-{key}.part"));
    let script = format!(
        "[ -e '{t}/etc/os-release' ] && exit 0; rm -rf '{p}' && \
         mmdebstrap --quiet --variant=minbase --include={INCLUDE} bookworm '{p}' && mv '{p}' '{t}'",
        t = tree.display(),
        p = part.display()
    );
    eprintln!("bootstrapping Debian bookworm into {} (once; a few minutes)", tree.display());
    let status =
        Command::new("flock").arg(dir.join(".bootstrap.lock")).args(["sh", "-c", &script]).status().unwrap();
    assert!(status.success(), "mmdebstrap of the boot test tree failed");
    tree
}
