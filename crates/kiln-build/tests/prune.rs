//! `kiln cache prune` keeps the layers of AVAILABLE images, unless asked to remove all.

use kiln_build::Kiln;

#[test]
fn prune_keeps_what_available_images_are_made_of() {
    let home = tempfile::tempdir().unwrap();
    // A private cache: this test removes layers.
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: this test binary holds this one test, so no other thread reads the environment.
    unsafe { std::env::set_var("KILN_CACHE_DIR", cache.path()) };
    let kiln = Kiln::open(home.path()).unwrap();
    let store = kiln.store();
    let image = kiln
        .block_on(store.create_image(&kiln_store::NewImage {
            name: "kept".into(),
            version: "1.0.0".parse().unwrap(),
            region: "local".into(),
            account: "000000000000".into(),
            recipe: serde_json::json!({}),
            tags: Default::default(),
        }))
        .unwrap();
    for state in [kiln_store::ImageState::Building, kiln_store::ImageState::Available] {
        kiln.block_on(store.transition(&image.arn, state, None)).unwrap();
    }
    kiln.block_on(store.set_manifest(&image.arn, "/nowhere", &serde_json::json!({ "layers": ["used"] })))
        .unwrap();
    let layers = kiln.layer_cache().dir().to_path_buf();
    for name in ["used", "unused"] {
        std::fs::create_dir_all(layers.join(name).join("etc")).unwrap();
        std::fs::write(layers.join(name).join("etc/file"), vec![7u8; 100_000]).unwrap();
        std::fs::write(layers.join(format!("{name}.report.json")), "{}").unwrap();
    }
    let freed = kiln.prune_layers(false).unwrap();
    assert!(freed >= 100_000, "freed {freed}");
    assert!(layers.join("used").is_dir() && layers.join("used.report.json").is_file());
    assert!(!layers.join("unused").exists() && !layers.join("unused.report.json").exists());
    kiln.prune_layers(true).unwrap();
    assert!(!layers.join("used").exists());
}
