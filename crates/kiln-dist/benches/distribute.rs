//! Distribution of a disk image (issue 7). Driven by `scripts/bench-dist.sh`, which makes the
//! images; each mode prints one JSON object on stdout.
//!
//! ```text
//! distribute throughput IMAGE WORK   cp of IMAGE to three directories, one after another,
//!                                    against kiln pushing it to three plaintext file:// stores
//!                                    (one `push_many`, as `kiln distribute` does), then to
//!                                    three encrypted ones; and each store's single `push`
//! distribute incremental OLD NEW WORK  bytes a push of NEW uploads to a store holding OLD
//! ```
//!
//! Caches: the source is read once before each timed run (so every run starts with it in the
//! page cache), `sync` runs before each timed run (no earlier dirty pages are written during
//! it) and inside it, at its end (a run ends when its data is on disk, as neither cp nor
//! kiln's file stores fsync on their own). Page-cache dropping needs privileges a bench should
//! not assume, so the destination writes are measured through the page cache and the sync.
//!
//! Without arguments (as under `cargo test --benches`) it prints how to run it and exits.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln_dist::{ImageRef, Keyring, PushReport, S3Options, Target, push, push_many};

/// Uploads at once per store, as `kiln distribute` runs them.
const PARALLEL: usize = 8;
const STORES: usize = 3;

fn main() {
    // `cargo bench` adds `--bench`; nothing else is an option here.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["throughput", image, work] => throughput(&rt, Path::new(image), Path::new(work)),
        ["incremental", old, new, work] => incremental(&rt, Path::new(old), Path::new(new), Path::new(work)),
        _ => eprintln!(
            "usage: distribute throughput IMAGE WORK | incremental OLD NEW WORK (see scripts/bench-dist.sh)"
        ),
    }
}

fn sync() {
    assert!(Command::new("sync").status().expect("run sync").success());
}

/// Reads `path` once, so the timed run starts with it cached; then flushes earlier writes.
fn prepare(path: &Path) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).unwrap() > 0 {}
    sync();
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    (bytes as f64 / 1e6 / secs * 10.0).round() / 10.0
}

fn image(build: u32) -> ImageRef {
    ImageRef { name: "bench".into(), version: "1.0.0".into(), build }
}

fn target(dir: &Path, key: Option<&str>) -> Target {
    Target::open("bench", &format!("file://{}", dir.display()), key.map(String::from), &S3Options::default())
        .unwrap()
}

/// Pushes `file` to `STORES` fresh stores under `work`: once with one `push` per store, one
/// after another (the seconds of each), then with one `push_many` to all (its seconds, and
/// those with the final sync).
fn push_all(
    rt: &tokio::runtime::Runtime,
    file: &Path,
    work: &Path,
    key: Option<&str>,
) -> (Vec<f64>, f64, f64) {
    let ring = Keyring::open(&work.join("keys")).unwrap();
    if let Some(k) = key {
        ring.create(k).unwrap();
    }
    let stores: Vec<PathBuf> = (0..STORES).map(|i| work.join(format!("store-{i}"))).collect();
    let files = [file.to_path_buf()];
    let clean = || {
        for d in &stores {
            std::fs::remove_dir_all(d).unwrap();
        }
    };

    let targets: Vec<Target> = stores.iter().map(|d| target(d, key)).collect();
    prepare(file);
    let mut each = Vec::new();
    for t in &targets {
        let one = Instant::now();
        rt.block_on(push(t, &ring, &image(1), &files, b"{}", PARALLEL)).unwrap();
        each.push(one.elapsed().as_secs_f64());
    }
    sync();
    clean();

    let targets: Vec<Target> = stores.iter().map(|d| target(d, key)).collect();
    prepare(file);
    let start = Instant::now();
    for r in rt.block_on(push_many(&targets, &ring, &image(1), &files, b"{}", PARALLEL)) {
        r.unwrap();
    }
    let pushed = start.elapsed().as_secs_f64();
    sync();
    let total = start.elapsed().as_secs_f64();
    clean();
    std::fs::remove_dir_all(work.join("keys")).unwrap();
    (each, pushed, total)
}

/// Reading, cutting and hashing the file as a push does, without storing anything: the part
/// of a push no store can speed up.
fn chunk_only(file: &Path) -> f64 {
    use sha2::{Digest, Sha256};
    prepare(file);
    let start = Instant::now();
    let mut whole = Sha256::new();
    let f = std::fs::File::open(file).unwrap();
    for c in fastcdc::v2020::StreamCDC::new(f, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024) {
        let c = c.unwrap();
        whole.update(&c.data);
        std::hint::black_box(Sha256::digest(&c.data));
    }
    std::hint::black_box(whole.finalize());
    start.elapsed().as_secs_f64()
}

fn throughput(rt: &tokio::runtime::Runtime, file: &Path, work: &Path) {
    let size = std::fs::metadata(file).unwrap().len();
    // Blocks the file really has: holes (free space of a sparse disk) are not copied by cp.
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(file).unwrap().blocks() * 512
    };

    let dests: Vec<PathBuf> = (0..STORES).map(|i| work.join(format!("cp-{i}"))).collect();
    for d in &dests {
        std::fs::create_dir_all(d).unwrap();
    }
    prepare(file);
    let start = Instant::now();
    for d in &dests {
        // --reflink=never: a copy-on-write clone would copy no data at all.
        let ok = Command::new("cp").arg("--reflink=never").arg(file).arg(d).status().unwrap().success();
        assert!(ok, "cp failed");
    }
    let cp_copy_secs = start.elapsed().as_secs_f64();
    sync();
    let cp_secs = start.elapsed().as_secs_f64();
    for d in &dests {
        std::fs::remove_dir_all(d).unwrap();
    }

    let chunk_secs = chunk_only(file);
    let (plain_each, plain_pushed, plain_total) = push_all(rt, file, work, None);
    let (sealed_each, sealed_pushed, sealed_total) = push_all(rt, file, work, Some("bench-key"));
    let secs = |s: f64| (s * 1000.0).round() / 1000.0;

    let n = STORES as u64;
    let cp_mbps = mbps(size * n, cp_secs);
    let plain_mbps = mbps(size * n, plain_total);
    let sealed_mbps = mbps(size * n, sealed_total);
    let per = |v: &[f64]| v.iter().map(|s| mbps(size, *s)).collect::<Vec<_>>();
    println!(
        "{}",
        serde_json::json!({
            "imageBytes": size,
            "imageAllocatedBytes": allocated,
            "stores": STORES,
            "parallel": PARALLEL,
            "cpSeconds": secs(cp_secs),
            "cpSecondsBeforeSync": secs(cp_copy_secs),
            "cpMBps": cp_mbps,
            "chunkHashOnlyMBps": mbps(size, chunk_secs),
            "kilnSeconds": secs(plain_total),
            "kilnSecondsBeforeSync": secs(plain_pushed),
            "kilnMBps": plain_mbps,
            "kilnSinglePushMBps": per(&plain_each),
            "kilnOverCp": (plain_mbps / cp_mbps * 1000.0).round() / 1000.0,
            "encryptedSeconds": secs(sealed_total),
            "encryptedSecondsBeforeSync": secs(sealed_pushed),
            "encryptedMBps": sealed_mbps,
            "encryptedSinglePushMBps": per(&sealed_each),
            "encryptedOverCp": (sealed_mbps / cp_mbps * 1000.0).round() / 1000.0,
            "target": "kilnOverCp >= 0.8",
        })
    );
}

fn incremental(rt: &tokio::runtime::Runtime, old: &Path, new: &Path, work: &Path) {
    let ring = Keyring::open(&work.join("keys")).unwrap();
    let dir = work.join("store-incremental");
    let t = target(&dir, None);
    let first: PushReport =
        rt.block_on(push(&t, &ring, &image(1), &[old.to_path_buf()], b"{}", PARALLEL)).unwrap();
    let second = rt.block_on(push(&t, &ring, &image(2), &[new.to_path_buf()], b"{}", PARALLEL)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(work.join("keys")).unwrap();
    println!(
        "{}",
        serde_json::json!({
            "imageBytes": second.total_bytes,
            "firstUploadedBytes": first.uploaded_bytes,
            "secondUploadedBytes": second.uploaded_bytes,
            "secondUploadedChunks": second.uploaded_chunks,
            "secondChunks": second.chunks,
            "secondUploadedPercent": (second.uploaded_bytes as f64 * 10000.0 / second.total_bytes as f64).round() / 100.0,
            "target": "secondUploadedPercent < 5",
        })
    );
}
