//! Disk assembly of the cached bookworm tree (the boot test's) against its floor: one
//! `mke2fs -d` of the same tree into a file of the root partition's size, which any
//! directory-to-disk path must pay. Prints one JSON object.
//!
//! Run: `cargo bench -p kiln-image --bench assemble` (bootstraps the tree once if missing).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use kiln_image::{AssembleOptions, DiskLayout, OutputFormat, assemble};

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need to honour.
    let tree = common::bookworm_tree();
    let work = tempfile::tempdir().unwrap();

    let mut opts = AssembleOptions::new(work.path().join("out"));
    opts.formats = vec![OutputFormat::Raw, OutputFormat::Qcow2 { compressed: false }];
    opts.source_date_epoch = Some(1_700_000_000);
    let start = Instant::now();
    let disk = assemble(&tree, &DiskLayout::default(), &opts).expect("assembly");
    let assemble_ms = start.elapsed().as_millis();
    let root = disk.partitions.iter().find(|p| p.mount_point == "/").unwrap();

    let floor_img = work.path().join("floor.ext4");
    let f = std::fs::File::create(&floor_img).unwrap();
    f.set_len(root.size).unwrap();
    drop(f);
    let start = Instant::now();
    let status = Command::new("mke2fs")
        .env("LC_ALL", "C")
        .args(["-t", "ext4", "-F", "-q", "-E", "nodiscard", "-d"])
        .arg(&tree)
        .arg(&floor_img)
        .status()
        .expect("run mke2fs");
    assert!(status.success(), "mke2fs -d of the tree failed");
    let floor_ms = start.elapsed().as_millis();

    let stages: Vec<String> = disk.timings.iter().map(|t| format!("\"{}\":{}", t.stage, t.millis)).collect();
    println!(
        "{{\"tree\":{:?},\"disk_bytes\":{},\"root_bytes\":{},\"assemble_ms\":{},\"stages_ms\":{{{}}},\
         \"mkfs_floor_ms\":{},\"ratio\":{:.2}}}",
        tree.display().to_string(),
        disk.disk_size,
        root.size,
        assemble_ms,
        stages.join(","),
        floor_ms,
        assemble_ms as f64 / floor_ms.max(1) as f64
    );
}
