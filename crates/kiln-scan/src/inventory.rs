//! What is installed in an image: packages, OS release, kernel.
//!
//! Only dpkg databases are read today; [`PackageManager`] and the per-manager reader functions
//! leave room for rpm and apk. Reading never fails because of the image's content: a corrupt
//! stanza, an unreadable file or a missing database becomes a [`Problem`] next to whatever
//! could be read, so a half-broken image still gets a (flagged) inventory.

use serde::{Deserialize, Serialize};

use crate::deb822::{self, Stanza};
use crate::rootfs::RootFs;
use crate::version::Version;

/// The package manager that owns a package record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    /// Debian's dpkg (`var/lib/dpkg/status`, `var/lib/dpkg/status.d/*`).
    Dpkg,
    /// RPM (not read yet).
    Rpm,
    /// Alpine's apk (not read yet).
    Apk,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Binary package name.
    pub name: String,
    /// Installed version, exactly as the database spells it.
    pub version: String,
    /// Architecture (`amd64`, `all`, ...), when the record states one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub arch: Option<String>,
    /// Source package it was built from (the binary name when the record names none).
    pub source_name: String,
    /// Version of that source (the binary version unless `Source: name (version)` says otherwise).
    pub source_version: String,
    /// Exact-version sources from `Built-Using` (signed kernels and bootloaders name the source
    /// they carry this way).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub built_using: Vec<(String, String)>,
    /// Who owns the record.
    pub manager: PackageManager,
    /// Licences from the package's machine-readable copyright file (DEP-5 `License:` names).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub licenses: Vec<String>,
    /// Where the record was read (path inside the image).
    pub db_path: String,
}

/// The image's `os-release`, plus Debian's point release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    /// `ID` (`debian`).
    pub id: String,
    /// `ID_LIKE` words.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub id_like: Vec<String>,
    /// `VERSION_ID` (`12`); absent on testing/unstable.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version_id: Option<String>,
    /// `VERSION_CODENAME`, or derived from `VERSION` / `VERSION_ID` for older images.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub codename: Option<String>,
    /// `PRETTY_NAME`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pretty_name: Option<String>,
    /// Content of `etc/debian_version` (`12.5`, `trixie/sid`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub debian_version: Option<String>,
}

/// The kernel the image boots by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPackage {
    /// The `linux-image-*` package holding it.
    pub package: String,
    /// That package's version.
    pub version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-18-amd64`.
    pub release: String,
    /// How it was chosen: `vmlinuz-link` (the `/vmlinuz` or `/boot/vmlinuz` symlink) or
    /// `newest-installed` (the highest version among installed kernel images).
    pub determined_by: String,
}

/// Something that could not be read or understood; the inventory is incomplete there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Path inside the image.
    pub path: String,
    /// 1-based line, when the problem is in a file's content.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<usize>,
    /// What is wrong and what it means for the inventory.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "/{}:{l}: {}", self.path, self.message),
            None => write!(f, "/{}: {}", self.path, self.message),
        }
    }
}

/// Everything known about what an image holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The OS release, if `os-release` was found.
    pub os: Option<OsRelease>,
    /// Installed packages, sorted by name then architecture.
    pub packages: Vec<Package>,
    /// The default kernel, if a kernel image package is installed.
    pub kernel: Option<KernelPackage>,
    /// What could not be read; empty for a clean image.
    pub problems: Vec<Problem>,
}

/// The root itself could not be opened: nothing inside it was read.
#[derive(Debug, thiserror::Error)]
#[error("cannot open image root {path}: {source}; give a directory holding an unpacked image")]
pub struct InventoryError {
    /// The root given.
    pub path: std::path::PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

const DPKG_STATUS: &str = "var/lib/dpkg/status";
const DPKG_STATUS_D: &str = "var/lib/dpkg/status.d";

impl Inventory {
    /// Reads the inventory of the unpacked image at `root`, never leaving it (see [`RootFs`]).
    pub fn from_root(root: &std::path::Path) -> Result<Inventory, InventoryError> {
        let fs = RootFs::open(root).map_err(|source| InventoryError { path: root.to_path_buf(), source })?;
        Ok(Inventory::from_rootfs(&fs))
    }

    /// As [`Inventory::from_root`], on an already opened root.
    pub fn from_rootfs(fs: &RootFs) -> Inventory {
        let mut inv = Inventory::default();
        let mut problems = Vec::new();
        inv.os = read_os_release(fs, &mut problems);
        let found_dpkg = read_dpkg(fs, &mut inv.packages, &mut problems);
        if !found_dpkg {
            problems.push(Problem {
                path: DPKG_STATUS.into(),
                line: None,
                message:
                    "no package database found (neither var/lib/dpkg/status nor var/lib/dpkg/status.d); \
                          the inventory lists no packages"
                        .into(),
            });
        }
        for p in &mut inv.packages {
            p.licenses = read_licenses(fs, &p.name);
        }
        inv.packages.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
        inv.kernel = find_kernel(fs, &inv.packages);
        inv.problems = problems;
        inv
    }

    /// The release codename the image's packages come from (`bookworm`), if known.
    pub fn codename(&self) -> Option<&str> {
        self.os.as_ref().and_then(|o| o.codename.as_deref())
    }
}

fn io_problem(path: &str, what: &str, e: &std::io::Error) -> Problem {
    Problem { path: path.into(), line: None, message: format!("cannot read {what}: {e}") }
}

/// Reads the dpkg database; false when the image has none at all.
fn read_dpkg(fs: &RootFs, out: &mut Vec<Package>, problems: &mut Vec<Problem>) -> bool {
    let mut found = false;
    match fs.read(DPKG_STATUS) {
        Ok(Some(bytes)) => {
            found = true;
            parse_status_file(&bytes, DPKG_STATUS, false, out, problems);
        }
        Ok(None) => {}
        Err(e) => {
            found = true;
            problems.push(io_problem(DPKG_STATUS, "the dpkg status file", &e));
        }
    }
    match fs.read_dir(DPKG_STATUS_D) {
        Ok(Some(names)) => {
            found = true;
            for name in names {
                // Distroless keeps `<pkg>` records next to `<pkg>.md5sums` file lists.
                if name.ends_with(".md5sums") || name.starts_with('.') {
                    continue;
                }
                let path = format!("{DPKG_STATUS_D}/{name}");
                match fs.read(&path) {
                    Ok(Some(bytes)) => parse_status_file(&bytes, &path, true, out, problems),
                    Ok(None) => {}
                    Err(e) => problems.push(io_problem(&path, "a distroless package record", &e)),
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            found = true;
            problems.push(io_problem(DPKG_STATUS_D, "the status.d directory", &e));
        }
    }
    found
}

/// dpkg states in which the package's files are unpacked *and* configured. `triggers-*` only
/// wait for trigger processing, so their files are as exposed as `installed` ones.
fn status_is_installed(status: &str) -> bool {
    matches!(status.split_whitespace().nth(2), Some("installed" | "triggers-awaiting" | "triggers-pending"))
}

/// Parses one status file (or status.d record) into `out`. `status_optional`: records without a
/// `Status` field count as installed (distroless `status.d` writes none).
pub(crate) fn parse_status_file(
    bytes: &[u8],
    path: &str,
    status_optional: bool,
    out: &mut Vec<Package>,
    problems: &mut Vec<Problem>,
) {
    let text = String::from_utf8_lossy(bytes);
    let parsed = deb822::parse(&text);
    for err in parsed.errors {
        problems.push(Problem { path: path.into(), line: Some(err.line), message: err.message });
    }
    for stanza in parsed.stanzas {
        match package_from_stanza(&stanza, path, status_optional) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => {}
            Err(message) => problems.push(Problem { path: path.into(), line: Some(stanza.line), message }),
        }
    }
}

fn package_from_stanza(s: &Stanza, path: &str, status_optional: bool) -> Result<Option<Package>, String> {
    let name = s.get("Package").map(str::trim).filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| "stanza has no Package field; record skipped".to_string())?;
    match s.get("Status") {
        Some(st) if !status_is_installed(st) => return Ok(None),
        None if !status_optional => return Ok(None),
        _ => {}
    }
    let version = s.get("Version").map(str::trim).filter(|v| !v.is_empty());
    let version = version.ok_or_else(|| format!("package {name} has no Version field; record skipped"))?;
    if let Err(e) = Version::parse(version) {
        return Err(format!("package {name}: {e}; record skipped"));
    }
    let (source_name, source_version) = match s.get("Source").map(str::trim).filter(|v| !v.is_empty()) {
        None => (name.to_string(), version.to_string()),
        Some(src) => match src.split_once('(') {
            Some((n, rest)) => {
                let v = rest.trim_end().strip_suffix(')').map(str::trim).unwrap_or("");
                if Version::parse(v).is_err() {
                    return Err(format!(
                        "package {name}: Source field {src:?} has no valid version in parentheses"
                    ));
                }
                (n.trim().to_string(), v.to_string())
            }
            None => (src.to_string(), version.to_string()),
        },
    };
    let built_using = s.get("Built-Using").map(parse_built_using).unwrap_or_default();
    Ok(Some(Package {
        name: name.to_string(),
        version: version.to_string(),
        arch: s.get("Architecture").map(|a| a.trim().to_string()).filter(|a| !a.is_empty()),
        source_name,
        source_version,
        built_using,
        manager: PackageManager::Dpkg,
        licenses: Vec::new(),
        db_path: path.to_string(),
    }))
}

/// `Built-Using: linux (= 6.1.76-1), gcc-12 (= 12.2.0-14)` → pairs; malformed items are dropped
/// because the field only refines matching, it never removes a package.
fn parse_built_using(field: &str) -> Vec<(String, String)> {
    field
        .split(',')
        .filter_map(|item| {
            let (n, rest) = item.split_once('(')?;
            let v = rest.trim().strip_prefix('=')?.trim().strip_suffix(')')?.trim();
            Version::parse(v).ok()?;
            Some((n.trim().to_string(), v.to_string()))
        })
        .collect()
}

fn parse_os_release(text: &str) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            map.insert(k.trim().to_string(), v.replace("\\\"", "\"").replace("\\\\", "\\"));
        }
    }
    map
}

/// Debian codenames by major version, for images whose os-release predates VERSION_CODENAME.
pub fn debian_codename(major: &str) -> Option<&'static str> {
    Some(match major {
        "4" => "etch",
        "5" => "lenny",
        "6" => "squeeze",
        "7" => "wheezy",
        "8" => "jessie",
        "9" => "stretch",
        "10" => "buster",
        "11" => "bullseye",
        "12" => "bookworm",
        "13" => "trixie",
        "14" => "forky",
        "15" => "duke",
        _ => return None,
    })
}

fn read_os_release(fs: &RootFs, problems: &mut Vec<Problem>) -> Option<OsRelease> {
    let mut text = None;
    for path in ["etc/os-release", "usr/lib/os-release"] {
        match fs.read(path) {
            Ok(Some(b)) => {
                text = Some(String::from_utf8_lossy(&b).into_owned());
                break;
            }
            Ok(None) => {}
            Err(e) => problems.push(io_problem(path, "the OS release file", &e)),
        }
    }
    let Some(text) = text else {
        problems.push(Problem {
            path: "etc/os-release".into(),
            line: None,
            message: "no os-release file (etc/os-release or usr/lib/os-release); the release is unknown, so \
                      release-specific advisories cannot be matched"
                .into(),
        });
        return None;
    };
    let map = parse_os_release(&text);
    let debian_version = match fs.read("etc/debian_version") {
        Ok(Some(b)) => Some(String::from_utf8_lossy(&b).trim().to_string()).filter(|s| !s.is_empty()),
        _ => None,
    };
    let version_id = map.get("VERSION_ID").cloned().filter(|s| !s.is_empty());
    let codename = map
        .get("VERSION_CODENAME")
        .cloned()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            // Old images: VERSION="8 (jessie)".
            let v = map.get("VERSION")?;
            let inner = v.split_once('(')?.1.split_once(')')?.0.trim();
            Some(inner.split_whitespace().next()?.to_lowercase())
        })
        .or_else(|| {
            let major = version_id.as_deref()?.split('.').next()?;
            debian_codename(major).map(str::to_string)
        });
    Some(OsRelease {
        id: map.get("ID").cloned().unwrap_or_default(),
        id_like: map
            .get("ID_LIKE")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        version_id,
        codename,
        pretty_name: map.get("PRETTY_NAME").cloned(),
        debian_version,
    })
}

/// `linux-image-6.1.0-18-amd64` (and `-unsigned`, `-dbg` excluded): a package holding a kernel,
/// as opposed to the `linux-image-amd64` metapackage that only depends on one.
fn kernel_release_of(pkg: &str) -> Option<&str> {
    let rel = pkg.strip_prefix("linux-image-")?;
    if !rel.starts_with(|c: char| c.is_ascii_digit()) || rel.ends_with("-dbg") {
        return None;
    }
    Some(rel.strip_suffix("-unsigned").unwrap_or(rel))
}

fn find_kernel(fs: &RootFs, packages: &[Package]) -> Option<KernelPackage> {
    let kernels: Vec<(&Package, &str)> =
        packages.iter().filter_map(|p| kernel_release_of(&p.name).map(|r| (p, r))).collect();
    for link in ["vmlinuz", "boot/vmlinuz"] {
        if let Ok(Some(target)) = fs.read_link(link) {
            let file = target.rsplit('/').next().unwrap_or("");
            if let Some(rel) = file.strip_prefix("vmlinuz-")
                && let Some((p, _)) = kernels.iter().find(|(_, r)| *r == rel)
            {
                return Some(KernelPackage {
                    package: p.name.clone(),
                    version: p.version.clone(),
                    release: rel.to_string(),
                    determined_by: "vmlinuz-link".into(),
                });
            }
        }
    }
    // No link: the boot loader's default is the newest kernel (update-grub sorts that way).
    let newest = kernels.iter().max_by(|(a, _), (b, _)| {
        match (Version::parse(&a.version), Version::parse(&b.version)) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => std::cmp::Ordering::Equal,
        }
    })?;
    Some(KernelPackage {
        package: newest.0.name.clone(),
        version: newest.0.version.clone(),
        release: newest.1.to_string(),
        determined_by: "newest-installed".into(),
    })
}

/// Licence names from `usr/share/doc/PKG/copyright` when it is machine-readable (DEP-5), in
/// order of first appearance. Anything else (free-form text, missing file) yields none: a
/// guessed licence in an SBOM is worse than an absent one.
fn read_licenses(fs: &RootFs, pkg: &str) -> Vec<String> {
    if pkg.contains('/') || pkg.starts_with('.') {
        return Vec::new();
    }
    let Ok(Some(bytes)) = fs.read(&format!("usr/share/doc/{pkg}/copyright")) else {
        return Vec::new();
    };
    licenses_from_copyright(&String::from_utf8_lossy(&bytes))
}

/// Parses a DEP-5 copyright file's `License:` short names (first line of each field).
pub fn licenses_from_copyright(text: &str) -> Vec<String> {
    let parsed = deb822::parse(text);
    let Some(header) = parsed.stanzas.first() else { return Vec::new() };
    let is_dep5 = header.get("Format").is_some_and(|f| f.contains("copyright-format"));
    if !is_dep5 {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (i, st) in parsed.stanzas.iter().enumerate() {
        // Standalone `License:` stanzas only give the text of names used elsewhere.
        if i > 0 && st.get("Files").is_none() {
            continue;
        }
        if let Some(lic) = st.get("License") {
            let first = lic.lines().next().unwrap_or("").trim();
            if !first.is_empty() && !out.iter().any(|l| l == first) {
                out.push(first.to_string());
            }
        }
    }
    out
}
