//! The installed-package list of a root tree, read from dpkg's status file.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{ParentError, Result};

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// The packages dpkg records as installed in the tree at `root`, sorted by name. A tree without
/// a dpkg database (a non-Debian tarball) has none.
pub fn installed_packages(root: &Path) -> Result<Vec<Package>> {
    let path = root.join("var/lib/dpkg/status");
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ParentError::io("cannot read", path)(e)),
    };
    Ok(parse_status(&text))
}

pub(crate) fn parse_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut installed) = (None, None, None, false);
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package:") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version:") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture:") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status:") {
                installed = v.split_whitespace().last() == Some("installed");
            }
        }
        if let (Some(name), Some(version), true) = (name, version, installed) {
            out.push(Package {
                name: name.to_owned(),
                version: version.to_owned(),
                architecture: arch.unwrap_or("").to_owned(),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// sha256 over `suite`, `variant` and the sorted `name=version` list: it changes exactly when
/// the package versions a bootstrap resolved to change.
pub fn package_digest(suite: &str, variant: &str, packages: &[Package]) -> String {
    let mut lines: Vec<String> = packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    lines.sort();
    lines.dedup();
    let mut h = Sha256::new();
    h.update(format!("suite {suite}\nvariant {variant}\n"));
    for l in lines {
        h.update(l);
        h.update("\n");
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_digest() {
        let text = "Package: b\nStatus: install ok installed\nVersion: 2\nArchitecture: amd64\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                    Package: a\nStatus: install ok installed\nArchitecture: all\nVersion: 1:1.0-1\nDescription: x\n y\n";
        let p = parse_status(text);
        assert_eq!(p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(p[0].version, "1:1.0-1");
        let d = package_digest("bookworm", "minbase", &p);
        assert_eq!(d.len(), 64);
        assert_ne!(d, package_digest("bookworm", "apt", &p));
        assert_ne!(d, package_digest("bookworm", "minbase", &p[..1]));
    }
}
