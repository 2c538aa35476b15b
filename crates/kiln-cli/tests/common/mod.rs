//! Shared fixtures for the CLI's integration tests.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (this crate sits at crates/kiln-cli).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// `shared/` beside the repository, as on the developers' machines and in CI.
pub fn shared() -> PathBuf {
    let dir = workspace().join("../shared");
    assert!(
        dir.is_dir(),
        "the shared folder is missing at {}: it must sit beside the repository",
        dir.display()
    );
    dir
}

/// Run the kiln binary.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

/// The cached Debian bookworm tarball (minbase + sudo) that heavy tests unpack. `scripts/test.sh`
/// passes it in `KILN_TEST_DEBIAN_TAR`; run alone, a test makes it (once; mmdebstrap, ~1 min).
pub fn debian_tar() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_TEST_DEBIAN_TAR") {
        return PathBuf::from(p);
    }
    let script = workspace().join("scripts/debian-root.sh");
    // flock serialises concurrent test processes so only one bootstraps.
    let lock = std::env::temp_dir().join("kiln-test-debian-root.lock");
    let out = Command::new("flock")
        .arg(&lock)
        .arg(&script)
        .arg("test")
        .output()
        .expect("run scripts/debian-root.sh");
    assert!(
        out.status.success(),
        "bootstrapping the Debian test root failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// A fresh, writable Debian root in a temporary directory.
pub fn debian_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("kiln-test-root-").tempdir().expect("tempdir");
    let status =
        Command::new("tar").arg("-C").arg(dir.path()).arg("-xf").arg(debian_tar()).status().expect("run tar");
    assert!(status.success(), "unpacking the Debian test root failed");
    dir
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
