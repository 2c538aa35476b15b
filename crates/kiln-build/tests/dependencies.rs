//! `Kiln::dependency_changes` against a catalogue: components, the three kinds of parent,
//! and packages through a fixture package index (the sandbox's apt is tested in
//! kiln-cli/tests/dependencies.rs, where a kiln binary can serve as the sandbox helper).

use std::path::Path;

use kiln_build::Kiln;
use kiln_build::dependencies::{ChangeKind, DependencyError, DependencyOptions, FixtureIndex, summary};
use kiln_store::{ComponentSource, ImageState, NewComponent, NewImage};
use serde_json::{Value, json};

const DOC_V1: &str = "name: hello\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: S\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo 1\"]\n";
const DOC_V2: &str = "name: hello\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: S\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo 2\"]\n";

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn resource_file(parent: &str, components: &[&str]) -> Value {
    json!({
        "imageRecipe": {
            "name": "app", "semanticVersion": "1.0.0", "parentImage": parent,
            "components": components.iter().map(|c| json!({ "componentArn": c })).collect::<Vec<_>>(),
        },
        "infrastructureConfiguration": { "name": "local", "instanceProfileName": "kiln" },
        "distributionConfiguration": { "name": "local", "distributions": [] },
    })
}

fn register(kiln: &Kiln, version: &str, document: &str) {
    kiln.block_on(kiln.store().create_component(&NewComponent {
        name: "hello".into(),
        version: version.parse().unwrap(),
        platform: "Linux".into(),
        description: String::new(),
        document: document.into(),
        source: ComponentSource::Api,
        tags: Default::default(),
    }))
    .unwrap();
}

/// An AVAILABLE image `name`/1.0.0 with `recipe` and `manifest`, its layers made (empty) in
/// the cache. Returns the catalogued image.
fn catalogue(kiln: &Kiln, name: &str, recipe: &Value, manifest: Value) -> kiln_store::Image {
    let store = kiln.store();
    let image = kiln
        .block_on(store.create_image(&NewImage {
            name: name.into(),
            version: "1.0.0".parse().unwrap(),
            region: "local".into(),
            account: "000000000000".into(),
            recipe: recipe.clone(),
            tags: Default::default(),
        }))
        .unwrap();
    for state in [ImageState::Building, ImageState::Available] {
        kiln.block_on(store.transition(&image.arn, state, None)).unwrap();
    }
    for key in manifest["layers"].as_array().into_iter().flatten() {
        std::fs::create_dir_all(kiln.layer_cache().dir().join(key.as_str().unwrap())).unwrap();
    }
    kiln.block_on(store.set_manifest(&image.arn, "/nowhere", &manifest)).unwrap();
    kiln.block_on(store.get_image_by_arn(&image.arn)).unwrap()
}

fn manifest(parent_reference: &str, info: Value, components: Value, packages: Value) -> Value {
    json!({
        "parent": { "reference": parent_reference, "layers": ["base-layer"], "info": info },
        "components": components,
        "layers": ["base-layer", "component-layer"],
        "packages": packages,
    })
}

fn open() -> (tempfile::TempDir, Kiln) {
    let home = tempfile::tempdir().unwrap();
    let kiln = Kiln::open(home.path()).unwrap();
    (home, kiln)
}

fn changes(kiln: &Kiln, image: &kiln_store::Image, index: &FixtureIndex) -> Vec<(ChangeKind, String)> {
    kiln.dependency_changes(image, None, index, &DependencyOptions::default())
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.reason))
        .collect()
}

fn disk_parent(dir: &Path) -> (String, Value) {
    let disk = dir.join("parent.raw");
    std::fs::write(&disk, b"disk one").unwrap();
    let reference = disk.display().to_string();
    let info = json!({ "kind": "import", "path": disk, "sha256": sha256("disk one") });
    (reference, info)
}

#[test]
fn a_version_filter_that_now_resolves_higher_is_a_change() {
    let (home, kiln) = open();
    let (parent, info) = disk_parent(home.path());
    register(&kiln, "1.0.0", DOC_V1);
    let recipe = resource_file(&parent, &["hello/1.x.x", "kiln-hardening-cis/1.x.x"]);
    let cis = kiln_build::builtin::find("kiln-hardening-cis").unwrap();
    let recorded = json!([
        { "name": "hello", "version": "1.0.0", "digest": sha256(DOC_V1) },
        { "name": "kiln-hardening-cis", "version": cis.version, "digest": sha256(cis.document) },
    ]);
    // The recipe is read back from the catalogue as the build recorded it (the whole file).
    let as_built: kiln_model::ResourceFile = serde_json::from_value(recipe.clone()).unwrap();
    let recipe = serde_json::to_value(&as_built).unwrap();
    let image = catalogue(&kiln, "app", &recipe, manifest(&parent, info.clone(), recorded, json!([])));
    let none = FixtureIndex::default();
    assert_eq!(changes(&kiln, &image, &none), [], "nothing changed yet");

    register(&kiln, "1.1.0", DOC_V2);
    register(&kiln, "2.0.0", DOC_V2);
    assert_eq!(
        changes(&kiln, &image, &none),
        [(ChangeKind::Component, "hello 1.0.0 → 1.1.0 available".to_string())],
        "1.x.x takes 1.1.0, not 2.0.0"
    );
    // A pinned version does not move; the built-in's document is compared by digest.
    let pinned = resource_file(&parent, &["hello/1.0.0", "kiln-hardening-cis/1.x.x"]);
    let file: kiln_model::ResourceFile = serde_json::from_value(pinned).unwrap();
    let found = kiln.dependency_changes(&image, Some(&file), &none, &DependencyOptions::default()).unwrap();
    assert!(found.is_empty(), "{found:?}");
    let tampered = json!([
        { "name": "hello", "version": "1.0.0", "digest": sha256(DOC_V1) },
        { "name": "kiln-hardening-cis", "version": cis.version, "digest": sha256("an older document") },
    ]);
    let image = catalogue(&kiln, "app2", &recipe, manifest(&parent, info, tampered, json!([])));
    let found = kiln.dependency_changes(&image, Some(&file), &none, &DependencyOptions::default()).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].subject, "kiln-hardening-cis");
    assert!(found[0].reason.contains("its document changed (sha256 "), "{}", found[0].reason);

    // A filter nothing matches any more is an error: a build would fail the same way.
    let gone = resource_file(&parent, &["hello/3.x.x"]);
    let file: kiln_model::ResourceFile = serde_json::from_value(gone).unwrap();
    let e = kiln.dependency_changes(&image, Some(&file), &none, &DependencyOptions::default()).unwrap_err();
    assert!(matches!(&e, DependencyError::Component { name, .. } if name == "hello"), "{e}");
}

#[test]
fn a_chained_parent_with_a_newer_build_is_a_change() {
    let (_home, kiln) = open();
    let base_recipe = resource_file("debian-12-x86", &[]);
    let base = catalogue(&kiln, "base", &base_recipe, json!({ "layers": ["b1"] }));
    let recipe = resource_file("base/1.x.x", &[]);
    let info = json!({ "kind": "kiln-image", "arn": base.arn });
    let image = catalogue(&kiln, "app", &recipe, manifest("base/1.x.x", info, json!([]), json!([])));
    let none = FixtureIndex::default();
    assert_eq!(changes(&kiln, &image, &none), []);

    let newer = catalogue(&kiln, "base", &base_recipe, json!({ "layers": ["b2"] }));
    let found = kiln.dependency_changes(&image, None, &none, &DependencyOptions::default()).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, ChangeKind::Parent);
    assert_eq!(found[0].reason, "base: base/1.0.0/1 → base/1.0.0/2 available");
    assert_eq!(found[0].to.as_deref(), Some(newer.arn.as_str()));
    // A newer build that is not AVAILABLE (deprecated, failed) is not a parent to move to.
    kiln.block_on(kiln.store().transition(&newer.arn, ImageState::Deprecated, None)).unwrap();
    assert_eq!(changes(&kiln, &image, &none), []);
}

#[test]
fn a_disk_parent_whose_file_changed_is_a_change() {
    let (home, kiln) = open();
    let (parent, info) = disk_parent(home.path());
    let recipe = resource_file(&parent, &[]);
    let image = catalogue(&kiln, "app", &recipe, manifest(&parent, info, json!([]), json!([])));
    let none = FixtureIndex::default();
    assert_eq!(changes(&kiln, &image, &none), []);
    std::fs::write(&parent, b"disk two").unwrap();
    let found = changes(&kiln, &image, &none);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, ChangeKind::Parent);
    assert!(found[0].1.contains("parent.raw changed (sha256 "), "{}", found[0].1);
    // The recipe naming another parent is a change too, whatever the files say.
    let other = resource_file("debian-12-x86", &[]);
    let file: kiln_model::ResourceFile = serde_json::from_value(other).unwrap();
    let found = kiln.dependency_changes(&image, Some(&file), &none, &DependencyOptions::default()).unwrap();
    assert!(found[0].reason.starts_with("the recipe's parent changed from "), "{found:?}");
}

#[test]
fn package_updates_from_the_image_sources_and_a_new_bootstrap() {
    let (_home, kiln) = open();
    let recipe = resource_file("debian-12-x86", &[]);
    let spec = kiln_parent::BootstrapSpec::new(kiln_parent::Suite::Bookworm);
    let info = json!({
        "kind": "bootstrap",
        "spec": spec,
        "bootstrap": { "packages": [
            { "name": "base-files", "version": "12.4+deb12u5", "architecture": "amd64" },
            { "name": "openssl", "version": "3.0.11-1~deb12u1", "architecture": "amd64" },
        ] },
    });
    let installed = json!([
        { "name": "base-files", "version": "12.4+deb12u5", "arch": "amd64" },
        { "name": "openssl", "version": "3.0.11-1~deb12u1", "arch": "amd64" },
        { "name": "nginx", "version": "1.22.1-9", "arch": "amd64" },
    ]);
    let image = catalogue(&kiln, "app", &recipe, manifest("debian-12-x86", info, json!([]), installed));
    let same = FixtureIndex::new([
        ("base-files", "12.4+deb12u5"),
        ("openssl", "3.0.11-1~deb12u1"),
        ("nginx", "1.22.1-9"),
    ]);
    assert_eq!(changes(&kiln, &image, &same), []);

    // The mirror has a new openssl (the base's, so the parent's change) and the image's own
    // sources a new nginx (installed by a component).
    let mut updated = same.clone();
    updated.own.insert("openssl".into(), "3.0.11-1~deb12u2".into());
    updated.own.insert("nginx".into(), "1.22.1-9+deb12u1".into());
    updated.by_sources.insert(spec.sources().join("\n"), {
        let mut m = same.own.clone();
        m.insert("openssl".into(), "3.0.11-1~deb12u2".into());
        m
    });
    let found = kiln.dependency_changes(&image, None, &updated, &DependencyOptions::default()).unwrap();
    let got: Vec<(ChangeKind, &str)> = found.iter().map(|c| (c.kind, c.reason.as_str())).collect();
    assert_eq!(
        got,
        [
            (
                ChangeKind::Parent,
                "debian-12-x86 would bootstrap openssl 3.0.11-1~deb12u2 (the base has 3.0.11-1~deb12u1)"
            ),
            (ChangeKind::Packages, "nginx 1.22.1-9 → 1.22.1-9+deb12u1 available"),
        ],
        "the base's openssl is reported once, as the parent's"
    );
    assert_eq!(
        summary(&found),
        "parent (1): debian-12-x86 would bootstrap openssl 3.0.11-1~deb12u2 (the base has 3.0.11-1~deb12u1); \
         packages (1): nginx 1.22.1-9 → 1.22.1-9+deb12u1 available"
    );

    // Changed bootstrap settings are the parent's change without asking apt.
    let mut other = recipe.clone();
    other["imageRecipe"]["packages"] = json!({ "include": ["curl"] });
    let file: kiln_model::ResourceFile = serde_json::from_value(other).unwrap();
    let found = kiln.dependency_changes(&image, Some(&file), &same, &DependencyOptions::default()).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].reason.contains("bootstrap settings"), "{}", found[0].reason);

    // Pruned layers: no tree to ask apt in.
    std::fs::remove_dir(kiln.layer_cache().dir().join("component-layer")).unwrap();
    let e = kiln.dependency_changes(&image, None, &same, &DependencyOptions::default()).unwrap_err();
    assert!(
        matches!(&e, DependencyError::LayersMissing { missing, .. } if missing == &["component-layer"]),
        "{e}"
    );
}

#[test]
fn policy_output_is_read() {
    let text = "openssl:\n  Installed: 3.0.11-1~deb12u1\n  Candidate: 3.0.11-1~deb12u2\n  Version table:\n \
                *** 3.0.11-1~deb12u1 100\n        100 /var/lib/dpkg/status\nlocal-tool:\n  Installed: 1.0\n  \
                Candidate: (none)\n  Version table:\nlibc6:i386:\n  Installed: (none)\n  Candidate: 2.36-9\n";
    let c = kiln_build::dependencies::parse_policy(text);
    assert_eq!(c.get("openssl").map(String::as_str), Some("3.0.11-1~deb12u2"));
    assert_eq!(c.get("libc6:i386").map(String::as_str), Some("2.36-9"));
    assert!(!c.contains_key("local-tool"));
    assert_eq!(c.len(), 2);
}
