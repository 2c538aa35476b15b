//! A real bootstrap of Debian bookworm (minbase and a small package set), twice: the second
//! run must download no package, because the first left every `.deb` in the package cache.
//! The cache lives under `$KILN_CACHE_DIR` (or `~/.cache/kiln`) so that later test runs are
//! warm too. mmdebstrap and a reachable Debian mirror are required: this test fails, it does
//! not skip, without them.

use std::fs;
use std::path::PathBuf;

use kiln_parent::{BootstrapSpec, ParentError, Suite, bootstrap, bootstrap_key};

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("KILN_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
            .join("kiln")
    });
    base.join("kiln-parent-test")
}

fn spec() -> BootstrapSpec {
    let mut s = BootstrapSpec::new(Suite::Bookworm);
    // Small, but enough to exercise the networkd and resolved configuration.
    s.packages = ["sudo", "systemd", "systemd-resolved"].into_iter().map(String::from).collect();
    s
}

#[test]
fn bookworm_twice_second_from_cache() {
    let t = tempfile::Builder::new().prefix("kiln-parent-bootstrap").tempdir().unwrap();
    let cache = cache_dir();
    let spec = spec();
    let was_empty = !cache.join("apt-archives/bookworm").is_dir()
        || !fs::read_dir(cache.join("apt-archives/bookworm"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".deb"));

    let first = bootstrap(&spec, &t.path().join("one"), &cache).unwrap();
    eprintln!(
        "first: {} ms, {} downloaded, {} cached before",
        first.timings.total_ms,
        first.downloaded.len(),
        first.cached_before
    );
    if was_empty {
        assert!(first.downloaded.len() > 50, "{:?}", first.downloaded);
    }
    let second = bootstrap(&spec, &t.path().join("two"), &cache).unwrap();
    eprintln!("second: {} ms, {} downloaded", second.timings.total_ms, second.downloaded.len());
    assert!(second.downloaded.is_empty(), "the second bootstrap downloaded {:?}", second.downloaded);
    assert!(second.cached_before >= first.packages.len() - 5, "{} debs cached", second.cached_before);
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.key, bootstrap_key(&spec));

    let info = second;
    assert_eq!(info.codename, "bookworm");
    assert_eq!(info.variant, "minbase");
    let names: Vec<&str> = info.packages.iter().map(|p| p.name.as_str()).collect();
    for p in ["sudo", "systemd", "systemd-resolved", "dpkg", "apt"] {
        assert!(names.contains(&p), "{p} missing from {names:?}");
    }
    assert!(info.packages.iter().all(|p| !p.version.is_empty()));

    let root = t.path().join("two");
    let m = fs::metadata(&root).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(fs::metadata(root.join("etc/shadow")).unwrap().uid(), 0);
    // Lists kept, no .debs, no host identity.
    assert!(
        fs::read_dir(root.join("var/lib/apt/lists")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with("_Packages"))
    );
    assert!(
        !fs::read_dir(root.join("var/cache/apt/archives")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".deb"))
    );
    assert_eq!(
        fs::read_link(root.join("etc/resolv.conf")).unwrap(),
        PathBuf::from("../run/systemd/resolve/stub-resolv.conf")
    );
    assert!(!root.join("etc/hostname").exists());
    assert!(fs::read_to_string(root.join("etc/hosts")).unwrap().contains("localhost"));
    assert!(
        fs::read_to_string(root.join("etc/systemd/network/80-kiln-dhcp.network"))
            .unwrap()
            .contains("DHCP=yes")
    );
    assert!(
        fs::symlink_metadata(
            root.join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        )
        .is_ok()
    );
    let sources = fs::read_to_string(root.join("etc/apt/sources.list")).unwrap();
    assert!(sources.contains("bookworm-security"), "{sources}");
    // Nothing but the two trees in the parent directory; the cache keeps no apt lock or partials.
    let mut entries: Vec<String> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["one", "two"]);
    assert!(!cache.join("apt-archives/bookworm/partial").exists());
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["codename"], "bookworm");
}

#[test]
fn unknown_package_fails_cleanly() {
    let t = tempfile::Builder::new().prefix("kiln-parent-bootstrap").tempdir().unwrap();
    let mut spec = spec();
    spec.packages.insert("kiln-no-such-package".into());
    spec.security_mirror = None;
    spec.updates = false;
    let dest = t.path().join("root");
    let e = bootstrap(&spec, &dest, &cache_dir()).unwrap_err();
    assert!(matches!(e, ParentError::ToolFailed { .. }), "{e:?}");
    assert!(e.to_string().contains("kiln-no-such-package"), "{e}");
    assert!(!dest.exists());
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
}

/// The full default package set of each suite (kernel, initramfs, systemd-boot, ssh): slow,
/// so run on demand: `KILN_TEST_SUITES=bullseye,trixie cargo test -p kiln-parent --test
/// bootstrap -- --ignored`.
#[test]
#[ignore = "bootstraps the full default package set of every suite (minutes)"]
fn default_package_sets() {
    let suites = std::env::var("KILN_TEST_SUITES").unwrap_or_else(|_| "bullseye,bookworm,trixie".into());
    for name in suites.split(',') {
        let suite = Suite::from_codename(name.trim()).expect("a suite");
        let t = tempfile::Builder::new().prefix("kiln-parent-bootstrap").tempdir().unwrap();
        let root = t.path().join("root");
        let info = bootstrap(&BootstrapSpec::new(suite), &root, &cache_dir()).unwrap();
        eprintln!(
            "{name}: {} packages in {} ms, {} downloaded",
            info.packages.len(),
            info.timings.total_ms,
            info.downloaded.len()
        );
        assert!(
            root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi").is_file(),
            "{name}: no systemd-boot"
        );
        let boot: Vec<String> = fs::read_dir(root.join("boot"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            boot.iter().any(|n| n.starts_with("vmlinuz-"))
                && boot.iter().any(|n| n.starts_with("initrd.img-")),
            "{name}: {boot:?}"
        );
        assert!(root.join("usr/sbin/sshd").is_file());
        assert!(
            fs::symlink_metadata(
                root.join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
            )
            .is_ok()
        );
        assert!(fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap().file_type().is_symlink());
    }
}
