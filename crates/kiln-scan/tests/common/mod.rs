//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `shared/` beside the workspace root, where the public test data lives. Fails the test with a
/// clear message when it is missing, because silently skipping would hide a broken setup.
pub fn shared_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../..")).join("shared");
    assert!(
        dir.join("vuln").is_dir(),
        "test data missing: expected {}/vuln (the project's shared/ directory beside the workspace root)",
        dir.display()
    );
    dir
}

pub fn vuln_dir() -> PathBuf {
    shared_dir().join("vuln")
}

pub fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read test data {}: {e}", path.display()))
}

/// Writes `files` (path inside the image → content) under a new temporary root.
pub fn image(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

pub const BOOKWORM_OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";

/// A status stanza for an installed package.
pub fn stanza(name: &str, version: &str, source: Option<&str>, extra: &str) -> String {
    let mut s =
        format!("Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n");
    if let Some(src) = source {
        s.push_str(&format!("Source: {src}\n"));
    }
    s.push_str(extra);
    s.push('\n');
    s
}
