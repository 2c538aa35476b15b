//! A tiny root file system built from the host's own binaries, for tests (feature
//! `test-support`).
//!
//! [`build`] copies `bash`, `sh` and a few coreutils with every shared library `ldd` lists into
//! a directory laid out like a merged-`/usr` Debian root (`/bin -> usr/bin`, ...), and writes an
//! `/etc/passwd` and `/etc/group` whose accounts do not exist on a usual host ([`BUILDER_UID`]),
//! so tests can tell the image's account database from the host's. Files are copied, never
//! hard-linked: a test that changes them inside the sandbox cannot touch the host's.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Programs copied into the root when the host has them; `bash` and `sh` are required.
pub const PROGRAMS: &[&str] = &[
    "bash", "sh", "cat", "echo", "ls", "sleep", "mkdir", "id", "readlink", "touch", "hostname", "true",
    "false", "env", "pwd", "rm", "ln", "chmod", "stat", "head", "wc", "grep", "sort", "kill",
];

/// The uid of the image's `builder` user (and [`BUILDER_GID`] its group).
pub const BUILDER_UID: u32 = 4242;
pub const BUILDER_GID: u32 = 4343;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
builder:x:4242:4343:Builder:/home/builder:/bin/bash\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

const GROUP: &str = "root:x:0:\ntty:x:5:\nbuilders:x:4343:builder\nnogroup:x:65534:\n";

fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Shared libraries (and the dynamic loader) `ldd` lists for `program`, as absolute paths.
fn libraries(program: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copy `host_path`'s content (following symlinks) to the same path under `root`.
fn copy_in(root: &Path, host_path: &Path) -> io::Result<()> {
    let rel = host_path.strip_prefix("/").unwrap_or(host_path);
    let dest = root.join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::symlink_metadata(&dest).is_ok() {
        return Ok(());
    }
    fs::copy(host_path, &dest)?;
    Ok(())
}

/// Fill `root` (an existing, empty directory) with a runnable tiny root file system.
pub fn build(root: &Path) -> io::Result<()> {
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "etc",
        "root",
        "tmp",
        "proc",
        "sys",
        "dev",
        "home/builder",
        "var/tmp",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700))?;
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        std::os::unix::fs::symlink(target, root.join(link))?;
    }
    if Path::new("/lib64").exists() {
        fs::create_dir_all(root.join("usr/lib64"))?;
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64"))?;
    }

    let mut libs = BTreeSet::new();
    for name in PROGRAMS {
        let Some(host) = find_program(name) else {
            if matches!(*name, "bash" | "sh") {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("the host has no {name}")));
            }
            continue;
        };
        fs::copy(&host, root.join("usr/bin").join(name))?;
        libs.extend(libraries(&host)?);
    }
    for lib in libs {
        // `/lib/x86_64-linux-gnu/libc.so.6` lands in usr/lib through the root's `lib` link.
        copy_in(root, &lib)?;
    }

    fs::write(root.join("etc/passwd"), PASSWD)?;
    fs::write(root.join("etc/group"), GROUP)?;
    fs::write(root.join("etc/hostname"), "testroot\n")?;
    Ok(())
}
