//! Parent image references: what a recipe's `parentImage` may name.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{ParentError, Result};

/// A Debian release kiln can bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// Debian 11.
    Bullseye,
    /// Debian 12.
    Bookworm,
    /// Debian 13.
    Trixie,
}

impl Suite {
    /// Every suite, oldest first.
    pub const ALL: [Suite; 3] = [Suite::Bullseye, Suite::Bookworm, Suite::Trixie];

    /// The release codename, which is also the suite name mmdebstrap and apt use.
    pub fn codename(self) -> &'static str {
        match self {
            Suite::Bullseye => "bullseye",
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }

    /// The Debian major version.
    pub fn version(self) -> u32 {
        match self {
            Suite::Bullseye => 11,
            Suite::Bookworm => 12,
            Suite::Trixie => 13,
        }
    }

    /// The managed image name, like Image Builder's: `debian-12-x86`.
    pub fn managed_name(self) -> String {
        format!("debian-{}-x86", self.version())
    }

    /// The suite of a managed image name.
    pub fn from_managed_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.managed_name() == name)
    }

    /// The suite of a codename (`bookworm`) or a major version (`12`).
    pub fn from_codename(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.codename() == name || s.version().to_string() == name)
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.codename())
    }
}

/// A parent image reference, parsed but not resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ParentRef {
    /// A built-in Debian bootstrap (`debian-12-x86`, or its ARN with account `kiln`).
    Managed {
        suite: Suite,
        /// The version the ARN asked for; `None` for a bare name or `x.x.x`. A bootstrap
        /// always takes the packages the mirror has now; the version is only recorded.
        version: Option<String>,
    },
    /// A raw or qcow2 disk image file (format detected from content on import).
    Disk { path: PathBuf },
    /// A root file system tarball (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`, `.tar.xz`).
    Tarball { path: PathBuf },
    /// An image kiln built before (`NAME/1.2.3`, or an image ARN whose account is not `kiln`);
    /// the caller resolves it from its catalogue. `version` is `X.Y.Z`, where each part may be
    /// the wildcard `x`.
    KilnImage { name: String, version: String },
}

const DISK_EXTS: [&str; 3] = [".qcow2", ".raw", ".img"];
const TAR_EXTS: [&str; 6] = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".tar.bz2"];

impl ParentRef {
    /// Parses a `parentImage` value; see [`crate::ACCEPTED_FORMS`].
    pub fn parse(input: &str) -> Result<ParentRef> {
        let unknown =
            |reason: &str| ParentError::UnknownParent { input: input.to_owned(), reason: reason.to_owned() };
        let s = input.trim();
        if s.is_empty() {
            return Err(unknown("the reference is empty"));
        }
        if let Some(suite) = Suite::from_managed_name(s) {
            return Ok(ParentRef::Managed { suite, version: None });
        }
        if let Some(rest) = s.strip_prefix("arn:") {
            return parse_arn(rest).map_err(|r| unknown(&r));
        }
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(unknown("a file:// URL needs an absolute path (file:///path/disk.qcow2)"));
            }
            return file_ref(Path::new(rest)).ok_or_else(|| {
                unknown("the file is neither a disk image (.qcow2, .raw, .img) nor a tarball (.tar, .tar.gz, .tar.zst, .tar.xz)")
            });
        }
        if s.contains("://") {
            return Err(unknown("only file:// URLs are accepted; download the image first"));
        }
        if let Some(r) = file_ref(Path::new(s)) {
            return Ok(r);
        }
        if let Some((name, version)) = s.split_once('/') {
            if valid_image_name(name) && valid_version(version) {
                return Ok(ParentRef::KilnImage { name: name.to_owned(), version: version.to_owned() });
            }
            if valid_image_name(name) {
                return Err(unknown(&format!(
                    "`{version}` is not a version of the form 1.2.3 (x wildcards allowed, no build number)"
                )));
            }
        }
        if s.starts_with("debian") {
            return Err(unknown(
                "the built-in Debian images are debian-11-x86, debian-12-x86 and debian-13-x86",
            ));
        }
        Err(unknown("not a built-in image name, a kiln image NAME/VERSION, a disk image or a tarball path"))
    }
}

impl fmt::Display for ParentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParentRef::Managed { suite, version: None } => write!(f, "{}", suite.managed_name()),
            ParentRef::Managed { suite, version: Some(v) } => write!(f, "{}/{v}", suite.managed_name()),
            ParentRef::Disk { path } | ParentRef::Tarball { path } => write!(f, "{}", path.display()),
            ParentRef::KilnImage { name, version } => write!(f, "{name}/{version}"),
        }
    }
}

/// `aws:imagebuilder:REGION:ACCOUNT:image/NAME/VERSION` (after `arn:`).
fn parse_arn(rest: &str) -> std::result::Result<ParentRef, String> {
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    let [partition, service, region, account, resource] = parts[..] else {
        return Err("an ARN has the form arn:aws:imagebuilder:REGION:ACCOUNT:image/NAME/VERSION".into());
    };
    if !partition.starts_with("aws") || service != "imagebuilder" {
        return Err(format!("`arn:{partition}:{service}:` is not an Image Builder ARN"));
    }
    if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("`{region}` is not a region"));
    }
    let Some(path) = resource.strip_prefix("image/") else {
        return Err(format!("`{resource}` is not an image resource (image/NAME/VERSION)"));
    };
    let segs: Vec<&str> = path.split('/').collect();
    let (name, version) = match segs[..] {
        [name, version] => (name, version),
        [_, _, _] => return Err("build numbers in image ARNs are not supported; use NAME/X.Y.Z".into()),
        _ => return Err(format!("`{resource}` is not image/NAME/VERSION")),
    };
    if !valid_version(version) {
        return Err(format!("`{version}` is not a version of the form 1.2.3 (x wildcards allowed)"));
    }
    if account == "kiln" {
        let suite = Suite::from_managed_name(name).ok_or_else(|| {
            format!("`{name}` is not a built-in image (debian-11-x86, debian-12-x86, debian-13-x86)")
        })?;
        let version = (version != "x.x.x").then(|| version.to_owned());
        return Ok(ParentRef::Managed { suite, version });
    }
    if account.is_empty() || !account.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("`{account}` is not an account"));
    }
    if !valid_image_name(name) {
        return Err(format!("`{name}` is not an image name"));
    }
    Ok(ParentRef::KilnImage { name: name.to_owned(), version: version.to_owned() })
}

fn file_ref(path: &Path) -> Option<ParentRef> {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    if DISK_EXTS.iter().any(|e| lower.ends_with(e)) {
        Some(ParentRef::Disk { path: path.to_owned() })
    } else if TAR_EXTS.iter().any(|e| lower.ends_with(e)) {
        Some(ParentRef::Tarball { path: path.to_owned() })
    } else {
        None
    }
}

/// Image Builder's name rule, without the spaces it allows.
fn valid_image_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}

/// `X.Y.Z`, each part a number or the wildcard `x`.
fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| *p == "x" || (!p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ParentRef {
        ParentRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match ParentRef::parse(s) {
            Ok(r) => panic!("{s} parsed as {r:?}"),
            Err(e @ ParentError::UnknownParent { .. }) => e.to_string(),
            Err(e) => panic!("{s}: wrong error {e:?}"),
        }
    }

    #[test]
    fn managed_names() {
        assert_eq!(ok("debian-11-x86"), ParentRef::Managed { suite: Suite::Bullseye, version: None });
        assert_eq!(ok("debian-12-x86"), ParentRef::Managed { suite: Suite::Bookworm, version: None });
        assert_eq!(ok(" debian-13-x86 "), ParentRef::Managed { suite: Suite::Trixie, version: None });
        assert_eq!(Suite::Bullseye.codename(), "bullseye");
        assert_eq!(Suite::from_codename("12"), Some(Suite::Bookworm));
        assert_eq!(ok("debian-12-x86").to_string(), "debian-12-x86");
    }

    #[test]
    fn managed_arns() {
        assert_eq!(
            ok("arn:aws:imagebuilder:us-east-1:kiln:image/debian-12-x86/x.x.x"),
            ParentRef::Managed { suite: Suite::Bookworm, version: None }
        );
        assert_eq!(
            ok("arn:aws:imagebuilder:eu-west-3:kiln:image/debian-11-x86/2024.1.0"),
            ParentRef::Managed { suite: Suite::Bullseye, version: Some("2024.1.0".into()) }
        );
        let e = err("arn:aws:imagebuilder:us-east-1:kiln:image/ubuntu-22-x86/x.x.x");
        assert!(e.contains("not a built-in image"), "{e}");
    }

    #[test]
    fn kiln_images() {
        assert_eq!(
            ok("web-server/1.2.3"),
            ParentRef::KilnImage { name: "web-server".into(), version: "1.2.3".into() }
        );
        assert_eq!(
            ok("arn:aws:imagebuilder:us-east-1:123456789012:image/base_img/1.x.x"),
            ParentRef::KilnImage { name: "base_img".into(), version: "1.x.x".into() }
        );
        assert!(
            err("arn:aws:imagebuilder:us-east-1:123456789012:image/base/1.0.0/3").contains("build numbers")
        );
        assert!(err("web-server/latest").contains("not a version"));
        assert!(err("web-server/1.2").contains("not a version"));
    }

    #[test]
    fn files() {
        assert_eq!(ok("file:///srv/disk.qcow2"), ParentRef::Disk { path: "/srv/disk.qcow2".into() });
        assert_eq!(ok("/srv/disk.raw"), ParentRef::Disk { path: "/srv/disk.raw".into() });
        assert_eq!(ok("images/Disk.IMG"), ParentRef::Disk { path: "images/Disk.IMG".into() });
        for t in ["root.tar", "/a/root.tar.gz", "r.tgz", "file:///r.tar.zst", "r.tar.xz"] {
            assert!(matches!(ok(t), ParentRef::Tarball { .. }), "{t}");
        }
        assert!(err("file://relative/disk.qcow2").contains("absolute path"));
        assert!(err("file:///srv/disk.vmdk").contains("neither a disk image"));
        assert!(err("https://example.com/disk.qcow2").contains("only file://"));
    }

    #[test]
    fn bad_input_lists_the_accepted_forms() {
        for bad in [
            "",
            "ubuntu-22.04",
            "debian-12",
            "debian-12-arm64",
            "arn:aws:s3:::bucket",
            "arn:aws:imagebuilder:us-east-1:kiln:component/x/1.0.0",
            "arn:foo",
            "/srv/disk.vmdk",
        ] {
            let e = err(bad);
            assert!(
                e.contains("accepted forms:") && e.contains("debian-12-x86") && e.contains(".tar.zst"),
                "{bad}: {e}"
            );
        }
        assert!(err("debian-12").contains("debian-11-x86, debian-12-x86 and debian-13-x86"));
    }
}
