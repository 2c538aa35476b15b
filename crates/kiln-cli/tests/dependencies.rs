//! The package checks of `kiln_build::dependencies` for real: apt in the namespace sandbox
//! (the kiln binary is the sandbox helper) over the shared Debian test root, asking the
//! Debian mirror through the host's network. Needs root and the network, like the other
//! sandbox tests with `--network host`; about half a minute (two `apt-get update`s).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use kiln_build::Kiln;
use kiln_build::dependencies::{ChangeKind, DependencyOptions};
use kiln_store::{ImageState, NewImage};
use serde_json::json;

/// Lowers `package`'s version in the tree's dpkg status, so the mirror surely has a newer one.
fn pretend_older(status: &str, package: &str, version: &str) -> String {
    status
        .split("\n\n")
        .map(|para| {
            if para.lines().any(|l| l == format!("Package: {package}")) {
                para.lines()
                    .map(|l| {
                        if l.starts_with("Version: ") { format!("Version: {version}") } else { l.to_string() }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                para.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[test]
fn apt_in_the_sandbox_finds_updates_of_the_base_and_of_the_image() {
    let home = tempfile::tempdir().unwrap();
    let kiln = Kiln::open(home.path()).unwrap();
    // The image is one layer: the Debian test root, with two packages made to look old.
    let layer = kiln.layer_cache().dir().join("dependencies-test-root");
    std::fs::create_dir_all(&layer).unwrap();
    let status =
        Command::new("tar").arg("-C").arg(&layer).arg("-xf").arg(common::debian_tar()).status().unwrap();
    assert!(status.success(), "unpacking the Debian test root failed");
    let status_file = layer.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&status_file).unwrap();
    let text = pretend_older(&pretend_older(&text, "base-files", "12.0"), "sudo", "1.9.0-1");
    std::fs::write(&status_file, text).unwrap();
    let installed = kiln_parent::installed_packages(&layer).unwrap();
    let version = |name: &str| installed.iter().find(|p| p.name == name).unwrap().version.clone();
    assert_eq!((version("base-files"), version("sudo")), ("12.0".to_string(), "1.9.0-1".to_string()));

    // A bootstrapped parent whose base is the tree without sudo (which a component installed).
    let spec = kiln_parent::BootstrapSpec::new(kiln_parent::Suite::Bookworm);
    let base: Vec<_> = installed.iter().filter(|p| p.name != "sudo").collect();
    let manifest = json!({
        "parent": {
            "reference": "debian-12-x86",
            "layers": ["dependencies-test-root"],
            "info": { "kind": "bootstrap", "spec": spec, "bootstrap": { "packages": base } },
        },
        "components": [],
        "layers": ["dependencies-test-root"],
        "packages": installed.iter().map(|p| json!({ "name": p.name, "version": p.version, "arch": p.architecture })).collect::<Vec<_>>(),
    });
    let recipe = json!({
        "imageRecipe": { "name": "app", "semanticVersion": "1.0.0", "parentImage": "debian-12-x86", "components": [] },
    });
    let store = kiln.store();
    let image = kiln
        .block_on(store.create_image(&NewImage {
            name: "app".into(),
            version: "1.0.0".parse().unwrap(),
            region: "local".into(),
            account: "000000000000".into(),
            recipe,
            tags: Default::default(),
        }))
        .unwrap();
    for state in [ImageState::Building, ImageState::Available] {
        kiln.block_on(store.transition(&image.arn, state, None)).unwrap();
    }
    kiln.block_on(store.set_manifest(&image.arn, "/nowhere", &manifest)).unwrap();
    let image = kiln.block_on(store.get_image_by_arn(&image.arn)).unwrap();

    let mut index = kiln.sandbox_index();
    index.helper = env!("CARGO_BIN_EXE_kiln").into();
    let started = std::time::Instant::now();
    let changes = kiln
        .dependency_changes(&image, None, &index, &DependencyOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{} change(s) in {:?}:", changes.len(), started.elapsed());
    for c in &changes {
        eprintln!("  {c}");
    }
    let by_subject: BTreeMap<(ChangeKind, String), &kiln_build::dependencies::DependencyChange> = changes
        .iter()
        .map(|c| {
            let package = c.from.as_deref().and_then(|f| f.split(' ').next()).unwrap_or_default();
            let key = if c.kind == ChangeKind::Parent { package.to_string() } else { c.subject.clone() };
            ((c.kind, key), c)
        })
        .collect();
    let base_files =
        by_subject.get(&(ChangeKind::Parent, "base-files".into())).expect("base-files from the parent");
    assert!(
        base_files.reason.starts_with("debian-12-x86 would bootstrap base-files 12.")
            && base_files.reason.ends_with("(the base has 12.0)"),
        "{}",
        base_files.reason
    );
    let sudo = by_subject.get(&(ChangeKind::Packages, "sudo".into())).expect("sudo from the image's sources");
    assert_eq!(sudo.from.as_deref(), Some("1.9.0-1"));
    assert!(sudo.reason.starts_with("sudo 1.9.0-1 → 1.9.13"), "{}", sudo.reason);
    assert!(
        !by_subject.contains_key(&(ChangeKind::Packages, "base-files".into())),
        "a base package's update is reported once, as the parent's"
    );
    // Every change names what the image has.
    for c in &changes {
        let from = c.from.as_deref().unwrap_or_default();
        assert!(
            installed.iter().any(|p| from == p.version || from == format!("{} {}", p.name, p.version)),
            "{c:?}"
        );
    }
    // The throw-away overlay is gone.
    let scratch = kiln.cache_root().join("scratch");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "{}", scratch.display());
}
