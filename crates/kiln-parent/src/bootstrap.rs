//! Built-in Debian parents: a root tree bootstrapped with mmdebstrap, with a local package
//! cache so that a second bootstrap of the same package set downloads nothing.
//!
//! mmdebstrap runs in `--mode=unshare` (as root: a private mount and PID namespace, no user
//! namespace). Its /proc, /sys and /dev mounts for the chroot then live only in that
//! namespace, so a killed bootstrap leaves no mounts on the host, and the tree is still owned
//! by real root. `--mode=root` would mount them in the host's mount table.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dpkg::{self, Package};
use crate::error::{ParentError, Result};
use crate::parent_ref::Suite;
use crate::tool::{self, Staging, shell_quote};

/// The default Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The default Debian security mirror.
pub const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// Bumped whenever the hooks below change what a bootstrap writes; part of the cache key.
const BOOTSTRAP_FORMAT: u32 = 1;

const VARIANTS: [&str; 11] = [
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "-",
    "standard",
];

/// What a bootable, manageable VM needs on top of `minbase`, for `suite`.
///
/// - `systemd`, `systemd-sysv`: the init system; `udev`: device nodes, module loading and
///   predictable interface names; `dbus`: systemctl, logind and hostnamectl talk over it (a
///   Recommends of systemd, and mmdebstrap installs no Recommends).
/// - `linux-image-amd64` with `initramfs-tools` named explicitly, so the initramfs generator
///   is always the same one rather than whichever alternative apt picks.
/// - `systemd-boot-efi` (bookworm and trixie): the boot loader binary disk assembly installs.
///   Bullseye's `systemd` 247 still ships `systemd-bootx64.efi` itself, and has no such
///   package.
/// - Networking through systemd-networkd, which is part of `systemd`: one `.network` file
///   (DHCP on `en*`/`eth*`) instead of ifupdown plus a DHCP client. `systemd-resolved`
///   (bookworm and trixie; inside `systemd` in bullseye) applies the DNS servers DHCP hands out.
/// - `openssh-server` and `sudo`: an instance can be reached and administered.
pub fn default_packages(suite: Suite) -> BTreeSet<String> {
    let mut p: BTreeSet<String> = [
        "systemd",
        "systemd-sysv",
        "udev",
        "dbus",
        "linux-image-amd64",
        "initramfs-tools",
        "openssh-server",
        "sudo",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if suite != Suite::Bullseye {
        p.insert("systemd-boot-efi".into());
        p.insert("systemd-resolved".into());
    }
    p
}

/// How to bootstrap a Debian parent. [`BootstrapSpec::new`] gives the defaults; a recipe
/// changes the fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    pub suite: Suite,
    /// mmdebstrap's `--variant`; `minbase` by default.
    pub variant: String,
    /// The main archive mirror.
    pub mirror: String,
    /// The security archive (`SUITE-security`); `None` leaves it out.
    pub security_mirror: Option<String>,
    /// Whether `SUITE-updates` from `mirror` is used.
    pub updates: bool,
    /// Archive components, `main` by default.
    pub components: Vec<String>,
    /// The packages installed on top of the variant: `name`, `name=version` or `name/release`.
    pub packages: BTreeSet<String>,
    /// Passed to mmdebstrap as `SOURCE_DATE_EPOCH` (clamped times in the tree).
    pub source_date_epoch: Option<u64>,
}

impl BootstrapSpec {
    /// The defaults for `suite`: minbase, deb.debian.org with updates and security, `main`,
    /// [`default_packages`].
    pub fn new(suite: Suite) -> BootstrapSpec {
        BootstrapSpec {
            suite,
            variant: "minbase".into(),
            mirror: DEFAULT_MIRROR.into(),
            security_mirror: Some(DEFAULT_SECURITY_MIRROR.into()),
            updates: true,
            components: vec!["main".into()],
            packages: default_packages(suite),
            source_date_epoch: None,
        }
    }

    /// Adds packages to the set.
    pub fn add_packages<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, names: I) -> &mut Self {
        self.packages.extend(names.into_iter().map(Into::into));
        self
    }

    /// Removes packages from the set (by name, whatever version suffix they carry).
    pub fn remove_packages<I: IntoIterator<Item = S>, S: AsRef<str>>(&mut self, names: I) -> &mut Self {
        for n in names {
            let n = n.as_ref();
            self.packages.retain(|p| package_name(p) != n);
        }
        self
    }

    /// The apt source lines mmdebstrap is given.
    pub fn sources(&self) -> Vec<String> {
        let comps = self.components.join(" ");
        let code = self.suite.codename();
        let mut v = vec![format!("deb {} {code} {comps}", self.mirror)];
        if self.updates {
            v.push(format!("deb {} {code}-updates {comps}", self.mirror));
        }
        if let Some(sec) = &self.security_mirror {
            v.push(format!("deb {sec} {code}-security {comps}"));
        }
        v
    }

    /// Checks every field that ends up on mmdebstrap's command line or in a hook.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ParentError::InvalidSpec(m));
        if !VARIANTS.contains(&self.variant.as_str()) {
            return bad(format!("unknown variant `{}` (use one of {})", self.variant, VARIANTS.join(", ")));
        }
        for m in std::iter::once(&self.mirror).chain(self.security_mirror.as_ref()) {
            let scheme_ok = ["http://", "https://", "file:///", "copy:///"].iter().any(|s| m.starts_with(s));
            if !scheme_ok
                || m.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"\\`$;|&<>".contains(c))
            {
                return bad(format!("mirror `{m}` is not an http(s)://, file:/// or copy:/// URL"));
            }
        }
        if self.components.is_empty() {
            return bad("no archive components (use at least `main`)".into());
        }
        for c in &self.components {
            if c.is_empty() || !c.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return bad(format!("`{c}` is not an archive component"));
            }
        }
        for p in &self.packages {
            if !valid_package(p) {
                return bad(format!("`{p}` is not a package (name, name=version or name/release)"));
            }
        }
        Ok(())
    }
}

fn package_name(p: &str) -> &str {
    let end = p.find(['=', '/', ':']).unwrap_or(p.len());
    &p[..end]
}

fn valid_package(p: &str) -> bool {
    let name = package_name(p);
    let name_ok = name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let rest = &p[name.len()..];
    let (arch, rest) = match rest.strip_prefix(':') {
        Some(r) => {
            let end = r.find(['=', '/']).unwrap_or(r.len());
            (Some(&r[..end]), &r[end..])
        }
        None => (None, rest),
    };
    let arch_ok = arch.is_none_or(|a| {
        !a.is_empty() && a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    let rest_ok = match rest.chars().next() {
        None => true,
        Some('=') => {
            rest.len() > 1 && rest[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b"+.~:-".contains(&b))
        }
        Some('/') => {
            rest.len() > 1 && rest[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        }
        _ => false,
    };
    name_ok && arch_ok && rest_ok
}

/// A cache key for the tree [`bootstrap`] makes from `spec`: sha256 over the suite, variant,
/// apt sources (mirrors, components, updates, security), the sorted package set,
/// `SOURCE_DATE_EPOCH`, the kiln version and the format of kiln's own bootstrap hooks. It
/// does not cover what the mirror serves today; [`BaseInfo::digest`] does.
pub fn bootstrap_key(spec: &BootstrapSpec) -> String {
    let mut h = Sha256::new();
    h.update(format!("kiln-parent bootstrap {BOOTSTRAP_FORMAT}\nkiln {}\n", env!("CARGO_PKG_VERSION")));
    h.update(format!("suite {}\nvariant {}\n", spec.suite.codename(), spec.variant));
    for s in spec.sources() {
        h.update(format!("source {s}\n"));
    }
    for p in &spec.packages {
        h.update(format!("package {p}\n"));
    }
    h.update(format!("source-date-epoch {:?}\n", spec.source_date_epoch));
    hex::encode(h.finalize())
}

/// Milliseconds spent in each stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// mmdebstrap, or the copy out of a disk or tarball.
    pub materialize_ms: u64,
    /// Reading the package list.
    pub inventory_ms: u64,
    /// Everything, including locks and checks.
    pub total_ms: u64,
}

/// What a bootstrap produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseInfo {
    pub suite: Suite,
    pub codename: String,
    pub variant: String,
    pub mirror: String,
    /// The apt source lines used.
    pub sources: Vec<String>,
    /// The requested package set.
    pub requested: Vec<String>,
    /// Every installed package, from the tree's dpkg status.
    pub packages: Vec<Package>,
    /// [`bootstrap_key`] of the spec.
    pub key: String,
    /// sha256 over suite, variant and the sorted `name=version` list: when a rebuild resolves
    /// to a different digest, the package versions the mirror offers have changed.
    pub digest: String,
    /// `.deb` files this bootstrap fetched into the package cache (absent from it before);
    /// empty when the cache already held the whole package set.
    pub downloaded: Vec<String>,
    /// How many `.deb` files the cache held before.
    pub cached_before: usize,
    pub timings: Timings,
}

/// Bootstraps `spec` into `dest` (absent or an empty directory), with the package cache in
/// `cache_dir/apt-archives/CODENAME`.
///
/// The cache works through mmdebstrap's documented hooks: a setup hook `sync-in`s the cache
/// into the chroot's /var/cache/apt/archives before anything is downloaded (apt and
/// mmdebstrap's own download step then fetch only what is missing), `--skip=essential/unlink`
/// keeps the essential `.deb`s there, and a customize hook `sync-out`s the archives back
/// before mmdebstrap's cleanup empties them in the tree. (`--skip=download/empty` of newer
/// mmdebstrap releases is not needed: 1.3 accepts a non-empty archive directory.) One
/// bootstrap per suite uses the cache at a time (a lock file beside it).
///
/// The tree keeps apt's package lists (the golden-image cleanup removes them later), has no
/// `.deb`s, no host /etc/hostname, and no host /etc/resolv.conf: it becomes the
/// systemd-resolved stub symlink when resolved is installed, else it is absent (whoever runs
/// steps in the tree provides name resolution). When systemd is installed, networkd gets a
/// DHCP configuration and is enabled.
pub fn bootstrap(spec: &BootstrapSpec, dest: &Path, cache_dir: &Path) -> Result<BaseInfo> {
    bootstrap_until(spec, dest, cache_dir, None)
}

/// [`bootstrap`], stopped by `cancel`: mmdebstrap and everything it started are killed
/// within seconds, the partial tree is removed, and the result is [`ParentError::Cancelled`].
pub fn bootstrap_until(
    spec: &BootstrapSpec,
    dest: &Path,
    cache_dir: &Path,
    cancel: Option<&kiln_host::Cancel>,
) -> Result<BaseInfo> {
    let start = Instant::now();
    spec.validate()?;
    if !tool::have("mmdebstrap") {
        return Err(ParentError::ToolMissing {
            tool: "mmdebstrap".into(),
            package: "mmdebstrap",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let code = spec.suite.codename();
    let archives_root = cache_dir.join("apt-archives");
    let cache = archives_root.join(code);
    fs::create_dir_all(&cache).map_err(ParentError::io("cannot create", &cache))?;
    let cache = cache.canonicalize().map_err(ParentError::io("cannot resolve", &cache))?;
    let cache_str =
        cache.to_str().ok_or_else(|| ParentError::InvalidSpec("the cache path is not UTF-8".into()))?;
    let _lock = FileLock::exclusive(&archives_root.join(format!("{code}.lock")))?;

    let staging = Staging::new(dest)?;
    let before = deb_snapshot(&cache)?;

    let mut cmd = tool::command("mmdebstrap");
    cmd.arg("--mode=unshare")
        .arg("--format=directory")
        .arg(format!("--variant={}", spec.variant))
        .arg("--skip=essential/unlink")
        .arg("--skip=cleanup/apt/lists")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", shell_quote(cache_str)))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", shell_quote(cache_str)))
        .arg(format!("--customize-hook={FINISH_HOOK}"));
    if !spec.packages.is_empty() {
        cmd.arg(format!("--include={}", spec.packages.iter().cloned().collect::<Vec<_>>().join(",")));
    }
    if let Some(t) = spec.source_date_epoch {
        cmd.env("SOURCE_DATE_EPOCH", t.to_string());
    }
    cmd.arg(code).arg(staging.path()).args(spec.sources());
    tool::die_with_parent(&mut cmd);
    let t = Instant::now();
    let result = tool::run_until(cmd, "mmdebstrap", &format!("bootstrapping Debian {code}"), cancel);
    let materialize_ms = ms(t);
    // Whatever happened, the cache must not keep apt's lock and partial downloads.
    let _ = fs::remove_file(cache.join("lock"));
    let _ = tool::remove_tree(&cache.join("partial"));
    result?;

    let after = deb_snapshot(&cache)?;
    let downloaded: Vec<String> =
        after.iter().filter(|(name, meta)| before.get(*name) != Some(meta)).map(|(n, _)| n.clone()).collect();

    let t = Instant::now();
    let packages = dpkg::installed_packages(staging.path())?;
    let inventory_ms = ms(t);
    if packages.is_empty() && spec.variant != "extract" && spec.variant != "custom" {
        return Err(ParentError::ToolFailed {
            tool: "mmdebstrap".into(),
            doing: format!("bootstrapping Debian {code}"),
            status: "exit status: 0".into(),
            output: "the tree has no installed packages in /var/lib/dpkg/status".into(),
        });
    }
    let digest = dpkg::package_digest(code, &spec.variant, &packages);
    staging.commit()?;
    Ok(BaseInfo {
        suite: spec.suite,
        codename: code.into(),
        variant: spec.variant.clone(),
        mirror: spec.mirror.clone(),
        sources: spec.sources(),
        requested: spec.packages.iter().cloned().collect(),
        packages,
        key: bootstrap_key(spec),
        digest,
        downloaded,
        cached_before: before.len(),
        timings: Timings { materialize_ms, inventory_ms, total_ms: ms(start) },
    })
}

/// Runs as mmdebstrap's last customize hook (after the cache sync-out), with the root as $1.
const FINISH_HOOK: &str = r#"set -eu
root="$1"
resolved=
for d in lib usr/lib; do
  [ -e "$root/$d/systemd/system/systemd-resolved.service" ] && resolved=1
done
# mmdebstrap copied the host's resolv.conf and hostname in for the build; neither belongs in a base.
if [ -f "$root/etc/resolv.conf" ] && [ ! -L "$root/etc/resolv.conf" ]; then
  rm -f "$root/etc/resolv.conf"
  if [ -n "$resolved" ]; then ln -s ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"; fi
fi
rm -f "$root/etc/hostname"
if [ ! -e "$root/etc/hosts" ]; then
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n' > "$root/etc/hosts"
fi
if [ -x "$root/bin/systemctl" ] || [ -x "$root/usr/bin/systemctl" ]; then
  mkdir -p "$root/etc/systemd/network"
  printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/80-kiln-dhcp.network"
  chroot "$root" systemctl enable systemd-networkd.service
  if [ -n "$resolved" ]; then chroot "$root" systemctl enable systemd-resolved.service; fi
fi
"#;

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// `.deb` name → (size, mtime in ns) of the cache directory.
fn deb_snapshot(dir: &Path) -> Result<BTreeMap<String, (u64, i128)>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(ParentError::io("cannot read", dir))? {
        let e = e.map_err(ParentError::io("cannot read", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".deb") {
            continue;
        }
        let m = e.metadata().map_err(ParentError::io("cannot inspect", e.path()))?;
        out.insert(name, (m.len(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128));
    }
    Ok(out)
}

/// An exclusive flock(2) held until dropped.
#[derive(Debug)]
struct FileLock {
    _file: fs::File,
    _path: PathBuf,
}

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ParentError::io("cannot open lock", path))?;
        loop {
            // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(ParentError::io("cannot lock", path)(e));
            }
        }
        Ok(FileLock { _file: file, _path: path.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_per_suite() {
        let b = BootstrapSpec::new(Suite::Bullseye);
        assert!(!b.packages.contains("systemd-boot-efi") && b.packages.contains("systemd"));
        let t = BootstrapSpec::new(Suite::Trixie);
        assert!(t.packages.contains("systemd-boot-efi") && t.packages.contains("systemd-resolved"));
        assert_eq!(
            BootstrapSpec::new(Suite::Bookworm).sources(),
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
        b.validate().unwrap();
    }

    #[test]
    fn key_covers_every_input() {
        let base = BootstrapSpec::new(Suite::Bookworm);
        let k = bootstrap_key(&base);
        assert_eq!(k, bootstrap_key(&base.clone()));
        let mut variants = Vec::new();
        let mut s = base.clone();
        s.variant = "apt".into();
        variants.push(s);
        let mut s = base.clone();
        s.mirror = "http://mirror.example/debian".into();
        variants.push(s);
        let mut s = base.clone();
        s.components.push("contrib".into());
        variants.push(s);
        let mut s = base.clone();
        s.add_packages(["curl"]);
        variants.push(s);
        let mut s = base.clone();
        s.remove_packages(["sudo"]);
        variants.push(s);
        let mut s = base.clone();
        s.suite = Suite::Trixie;
        variants.push(s);
        let mut s = base.clone();
        s.security_mirror = None;
        variants.push(s);
        for v in variants {
            assert_ne!(bootstrap_key(&v), k, "{v:?}");
        }
    }

    #[test]
    fn validation() {
        let mut s = BootstrapSpec::new(Suite::Bookworm);
        s.add_packages(["curl=7.88.1-10+deb12u5", "libc6:amd64", "nginx/bookworm-backports"]);
        s.validate().unwrap();
        for bad in ["--allow-unauthenticated", "a b", "x", "curl;rm", "Curl", "curl=", "curl=$(x)"] {
            let mut s = BootstrapSpec::new(Suite::Bookworm);
            s.packages.insert(bad.into());
            assert!(matches!(s.validate(), Err(ParentError::InvalidSpec(_))), "{bad}");
        }
        for bad in ["ftp://x", "http://x/'y", "http://x y", "/srv/mirror"] {
            let mut s = BootstrapSpec::new(Suite::Bookworm);
            s.mirror = bad.into();
            assert!(s.validate().is_err(), "{bad}");
        }
        let mut s = BootstrapSpec::new(Suite::Bookworm);
        s.variant = "tiny".into();
        assert!(s.validate().unwrap_err().to_string().contains("minbase"));
        let mut s = BootstrapSpec::new(Suite::Bookworm);
        s.components = vec!["main contrib".into()];
        assert!(s.validate().is_err());
    }
}
