//! Inventory of root directories: dpkg edge cases, hostile roots, partial damage.

mod common;

use std::os::unix::fs::symlink;

use kiln_scan::Inventory;
use serde_json::Value;

fn names(inv: &Inventory) -> Vec<String> {
    let mut n: Vec<String> = inv.packages.iter().map(|p| p.name.clone()).collect();
    n.sort();
    n
}

fn expected() -> Value {
    let p = common::vuln_dir().join("dpkg-status-samples/expected-inventory.json");
    serde_json::from_str(&common::read(&p)).unwrap()
}

fn sample(name: &str) -> Inventory {
    Inventory::from_root(&common::vuln_dir().join("dpkg-status-samples").join(name)).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    s.sort();
    s
}

#[test]
fn status_field_states() {
    let exp = &expected()["statusfield"];
    let inv = sample("statusfield");
    assert_eq!(names(&inv), strings(&exp["installed"]));
    for n in strings(&exp["not_installed"]) {
        assert!(!names(&inv).contains(&n), "{n} is not installed");
    }
}

#[test]
fn distroless_status_d() {
    let exp = &expected()["status-d"];
    let inv = sample("status-d");
    assert_eq!(names(&inv), strings(&exp["installed"]));
    assert_eq!(inv.packages[0].arch.as_deref(), Some("amd64"));
    assert!(inv.packages[0].db_path.ends_with("status.d/foo"));
}

#[test]
fn transitional_source_without_version() {
    let exp = &expected()["transitional"]["installed"][0];
    let inv = sample("transitional");
    let p = &inv.packages[0];
    assert_eq!(p.name, exp["package"].as_str().unwrap());
    assert_eq!(p.version, exp["version"].as_str().unwrap());
    assert_eq!(p.source_name, exp["source_package"].as_str().unwrap());
    assert_eq!(p.source_version, exp["source_version"].as_str().unwrap());
}

#[test]
fn source_with_version_and_os_release() {
    let status = common::stanza("libselinux1", "2.8-1+b1", Some("libselinux (2.8-1)"), "")
        + &common::stanza("bsdutils", "1:2.33.1-0.1", Some("util-linux (2.33.1-0.1)"), "");
    let img = common::image(&[
        ("usr/lib/os-release", common::BOOKWORM_OS_RELEASE),
        ("etc/debian_version", "12.5\n"),
        ("var/lib/dpkg/status", &status),
    ]);
    symlink("../usr/lib/os-release", img.path().join("etc/os-release")).unwrap();
    let inv = Inventory::from_root(img.path()).unwrap();
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    let os = inv.os.as_ref().unwrap();
    assert_eq!(os.codename.as_deref(), Some("bookworm"));
    assert_eq!(os.version_id.as_deref(), Some("12"));
    assert_eq!(os.debian_version.as_deref(), Some("12.5"));
    let sel = inv.packages.iter().find(|p| p.name == "libselinux1").unwrap();
    assert_eq!((sel.source_name.as_str(), sel.source_version.as_str()), ("libselinux", "2.8-1"));
}

#[test]
fn os_release_fallback_and_old_version_field() {
    // No etc/os-release at all: usr/lib/os-release is read. No VERSION_CODENAME (jessie era):
    // the codename comes from VERSION.
    let img = common::image(&[(
        "usr/lib/os-release",
        "ID=debian\nVERSION_ID=\"8\"\nVERSION=\"8 (jessie)\"\nPRETTY_NAME=\"Debian GNU/Linux 8 (jessie)\"\n",
    )]);
    let inv = Inventory::from_root(img.path()).unwrap();
    assert_eq!(inv.codename(), Some("jessie"));
}

#[test]
fn planted_symlink_to_the_host_is_not_followed_out() {
    // The "host" has a dpkg database that must never appear in the image's inventory.
    let host = common::image(&[("status", &common::stanza("host-only-package", "1.0", None, ""))]);
    let img = common::image(&[("etc/os-release", common::BOOKWORM_OS_RELEASE)]);
    std::fs::create_dir_all(img.path().join("var/lib")).unwrap();
    symlink(host.path(), img.path().join("var/lib/dpkg")).unwrap();
    let inv = Inventory::from_root(img.path()).unwrap();
    assert!(inv.packages.is_empty(), "read through the symlink: {:?}", names(&inv));
    // Resolved inside the image (where that path does not exist): reported as no database.
    assert!(inv.problems.iter().any(|p| p.message.contains("no package database")), "{:?}", inv.problems);

    // An absolute in-image link is resolved inside the image, as chroot would.
    let img2 = common::image(&[
        ("etc/os-release", common::BOOKWORM_OS_RELEASE),
        ("srv/dpkg/status", &common::stanza("inside", "1.0", None, "")),
    ]);
    std::fs::create_dir_all(img2.path().join("var/lib")).unwrap();
    symlink("/srv/dpkg", img2.path().join("var/lib/dpkg")).unwrap();
    assert_eq!(names(&Inventory::from_root(img2.path()).unwrap()), ["inside"]);
}

#[test]
fn corrupt_status_still_yields_inventory_with_problems() {
    let status = common::stanza("good1", "1.0-1", None, "")
        + "Package: broken\nStatus: install ok installed\nthis line is garbage\nVersion: 1\n\n"
        + &common::stanza("badversion", "1.0-", None, "")
        + "Status: install ok installed\nVersion: 2\n\n"
        + &common::stanza("good2", "2:3.4", None, "");
    let img =
        common::image(&[("etc/os-release", common::BOOKWORM_OS_RELEASE), ("var/lib/dpkg/status", &status)]);
    // A record that cannot be read at all (a directory where a file should be).
    std::fs::create_dir_all(img.path().join("var/lib/dpkg/status.d/unreadable")).unwrap();
    let inv = Inventory::from_root(img.path()).unwrap();
    assert_eq!(names(&inv), ["good1", "good2"]);
    let lines: Vec<Option<usize>> = inv.problems.iter().map(|p| p.line).collect();
    assert!(lines.contains(&Some(8)), "garbage line reported with its line number: {:?}", inv.problems);
    assert!(inv.problems.iter().any(|p| p.message.contains("revision") && p.message.contains("badversion")));
    assert!(inv.problems.iter().any(|p| p.message.contains("no Package field")));
    assert!(inv.problems.iter().any(|p| p.path.ends_with("status.d/unreadable")));
    for p in &inv.problems {
        assert!(!p.to_string().is_empty());
    }
}

#[test]
fn missing_root_is_a_clear_error() {
    let e = Inventory::from_root(std::path::Path::new("/nonexistent/kiln-root")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/kiln-root"), "{e}");
}

#[test]
fn kernel_from_vmlinuz_link_and_newest() {
    let status =
        common::stanza(
            "linux-image-6.1.0-17-amd64",
            "6.1.69-1",
            Some("linux-signed-amd64 (6.1.69+1)"),
            "Built-Using: linux (= 6.1.69-1)\n",
        ) + &common::stanza(
            "linux-image-6.1.0-18-amd64",
            "6.1.76-1",
            Some("linux-signed-amd64 (6.1.76+1)"),
            "Built-Using: linux (= 6.1.76-1)\n",
        ) + &common::stanza("linux-image-amd64", "6.1.76-1", Some("linux-signed-amd64 (6.1.76+1)"), "");
    let img =
        common::image(&[("etc/os-release", common::BOOKWORM_OS_RELEASE), ("var/lib/dpkg/status", &status)]);
    let inv = Inventory::from_root(img.path()).unwrap();
    let k = inv.kernel.as_ref().unwrap();
    assert_eq!(
        (k.package.as_str(), k.determined_by.as_str()),
        ("linux-image-6.1.0-18-amd64", "newest-installed")
    );
    symlink("boot/vmlinuz-6.1.0-17-amd64", img.path().join("vmlinuz")).unwrap();
    let inv = Inventory::from_root(img.path()).unwrap();
    let k = inv.kernel.as_ref().unwrap();
    assert_eq!((k.release.as_str(), k.determined_by.as_str()), ("6.1.0-17-amd64", "vmlinuz-link"));
    assert_eq!(inv.packages[0].built_using, vec![("linux".to_string(), "6.1.69-1".to_string())]);
}

#[test]
fn dep5_licences_are_read() {
    let copyright = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: x\n\n\
Files: *\nCopyright: 2020 A\nLicense: GPL-2+\n\nFiles: lib/*\nCopyright: 2020 B\nLicense: BSD-3-clause\n\n\
License: GPL-2+\n This program is free software.\n";
    let img = common::image(&[
        ("etc/os-release", common::BOOKWORM_OS_RELEASE),
        (
            "var/lib/dpkg/status",
            &(common::stanza("x", "1.0", None, "") + &common::stanza("y", "1.0", None, "")),
        ),
        ("usr/share/doc/x/copyright", copyright),
        ("usr/share/doc/y/copyright", "This is free-form text, GPL.\n"),
    ]);
    let inv = Inventory::from_root(img.path()).unwrap();
    assert_eq!(inv.packages[0].licenses, ["GPL-2+", "BSD-3-clause"]);
    assert!(inv.packages[1].licenses.is_empty());
}
