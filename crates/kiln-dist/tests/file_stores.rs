//! Distribution to `file://` stores: round trips, deduplication across versions, resumption,
//! encryption at rest, and tamper detection.

use std::path::{Path, PathBuf};

use kiln_dist::{DistError, ImageRef, Keyring, S3Options, Target, is_published, push, remove, verify};

const MARKER: &[u8] = b"KILN-PLAINTEXT-MARKER-0123456789";

/// A pseudo-random file (xorshift, so it does not compress or repeat) with markers in it.
fn disk(path: &Path, size: usize, seed: u64) {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    for at in (0..size.saturating_sub(MARKER.len())).step_by(1 << 20) {
        data[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    std::fs::write(path, data).unwrap();
}

fn image(build: u32) -> ImageRef {
    ImageRef { name: "minimal".into(), version: "1.0.0".into(), build }
}

fn target(dir: &Path, key: Option<&str>) -> Target {
    let url = format!("file://{}", dir.display());
    Target::open("local", &url, key.map(String::from), &S3Options::default()).unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn push_pull_round_trip_and_a_second_version_uploads_only_what_changed() {
    let work = tempfile::tempdir().unwrap();
    let ring = Keyring::open(&work.path().join("keys")).unwrap();
    let store = target(&work.path().join("store"), None);
    let raw = work.path().join("minimal.raw");
    disk(&raw, 24 << 20, 7);
    let report = push(&store, &ring, &image(1), std::slice::from_ref(&raw), b"{\"v\":1}", 4).await.unwrap();
    assert_eq!(report.total_bytes, 24 << 20);
    assert_eq!(report.uploaded_bytes, report.total_bytes, "a new store gets everything");
    assert!(is_published(&store, &image(1)).await.unwrap());

    let out = work.path().join("pulled");
    let pulled = verify(&store, &ring, &image(1), None, Some(&out)).await.unwrap();
    assert_eq!(pulled.bytes, 24 << 20);
    assert_eq!(std::fs::read(out.join("minimal.raw")).unwrap(), std::fs::read(&raw).unwrap());
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), b"{\"v\":1}");

    // Version two changes 64 KiB in the middle: only the chunks around it are new.
    let mut data = std::fs::read(&raw).unwrap();
    for b in &mut data[(12 << 20)..(12 << 20) + 65536] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(&raw, &data).unwrap();
    let second = push(&store, &ring, &image(2), std::slice::from_ref(&raw), b"{\"v\":2}", 4).await.unwrap();
    assert!(
        second.uploaded_bytes * 100 < second.total_bytes * 25,
        "uploaded {} of {} bytes",
        second.uploaded_bytes,
        second.total_bytes
    );
    verify(&store, &ring, &image(2), None, None).await.unwrap();
    verify(&store, &ring, &image(1), None, None).await.unwrap();

    // Pushing again is a no-op upload: everything is there.
    let again = push(&store, &ring, &image(2), std::slice::from_ref(&raw), b"{\"v\":2}", 4).await.unwrap();
    assert_eq!(again.uploaded_bytes, 0);

    // Removing an image hides it first; its shared chunks stay for the other version.
    remove(&store, &image(1)).await.unwrap();
    assert!(!is_published(&store, &image(1)).await.unwrap());
    assert!(matches!(verify(&store, &ring, &image(1), None, None).await, Err(DistError::NotFound(_))));
    verify(&store, &ring, &image(2), None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_push_is_invisible_and_a_rerun_uploads_only_the_rest() {
    let work = tempfile::tempdir().unwrap();
    let ring = Keyring::open(&work.path().join("keys")).unwrap();
    let dir = work.path().join("store");
    let store = target(&dir, None);
    let raw = work.path().join("disk.raw");
    disk(&raw, 8 << 20, 11);
    let first = push(&store, &ring, &image(1), std::slice::from_ref(&raw), b"{}", 2).await.unwrap();
    // As if the push died before publishing, and half the chunks never arrived.
    let images = dir.join("images/minimal/1.0.0/1");
    std::fs::remove_file(images.join("release.sig")).unwrap();
    let chunks: Vec<PathBuf> = files(&dir.join("chunks"));
    for c in chunks.iter().step_by(2) {
        std::fs::remove_file(c).unwrap();
    }
    assert!(!is_published(&store, &image(1)).await.unwrap(), "no release.sig, no image");
    let rerun = push(&store, &ring, &image(1), std::slice::from_ref(&raw), b"{}", 2).await.unwrap();
    assert!(
        rerun.uploaded_chunks > 0 && rerun.uploaded_chunks < first.uploaded_chunks,
        "{rerun:?} vs {first:?}"
    );
    assert_eq!(rerun.uploaded_chunks, chunks.len().div_ceil(2));
    verify(&store, &ring, &image(1), None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_stores_hold_no_plaintext_and_need_the_key() {
    let work = tempfile::tempdir().unwrap();
    let ring = Keyring::open(&work.path().join("keys")).unwrap();
    let dir = work.path().join("store");
    let raw = work.path().join("disk.raw");
    disk(&raw, 6 << 20, 3);
    let store = target(&dir, Some("eu-key"));
    let err = push(&store, &ring, &image(1), std::slice::from_ref(&raw), b"{}", 2).await.unwrap_err();
    assert!(err.to_string().contains("kiln key create eu-key"), "{err}");
    ring.create("eu-key").unwrap();
    push(&store, &ring, &image(1), std::slice::from_ref(&raw), b"{}", 2).await.unwrap();
    let plain_digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&std::fs::read(&raw).unwrap()[..1]))
    };
    for f in files(&dir.join("chunks")) {
        let body = std::fs::read(&f).unwrap();
        assert!(!body.windows(MARKER.len()).any(|w| w == MARKER), "plaintext in {}", f.display());
        assert!(!f.to_string_lossy().contains(&plain_digest));
    }
    // Rotation: old data stays readable, new pushes use the new version.
    ring.rotate("eu-key").unwrap();
    let out = work.path().join("out");
    verify(&store, &ring, &image(1), None, Some(&out)).await.unwrap();
    assert_eq!(std::fs::read(out.join("disk.raw")).unwrap(), std::fs::read(&raw).unwrap());
    // Another keyring (another kiln) cannot read it.
    let other = Keyring::open(&work.path().join("other-keys")).unwrap();
    other.create("eu-key").unwrap();
    let err = verify(&store, &other, &image(1), None, None).await.unwrap_err();
    assert!(matches!(err, DistError::Key(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_or_missing_objects_and_strangers_signatures_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let ring = Keyring::open(&work.path().join("keys")).unwrap();
    let dir = work.path().join("store");
    let store = target(&dir, None);
    let raw = work.path().join("disk.raw");
    disk(&raw, 4 << 20, 5);
    push(&store, &ring, &image(1), std::slice::from_ref(&raw), b"{\"m\":1}", 2).await.unwrap();
    let me = ring.signing_key().unwrap().verifying_key();
    verify(&store, &ring, &image(1), Some(&me), None).await.unwrap();

    // A flipped byte in one chunk.
    let chunk = files(&dir.join("chunks")).into_iter().next().unwrap();
    let original = std::fs::read(&chunk).unwrap();
    let mut bad = original.clone();
    bad[100] ^= 0xff;
    std::fs::write(&chunk, &bad).unwrap();
    let err = verify(&store, &ring, &image(1), None, None).await.unwrap_err();
    assert!(matches!(&err, DistError::Tampered(m) if m.contains("was altered")), "{err}");
    // The chunk gone.
    std::fs::remove_file(&chunk).unwrap();
    let err = verify(&store, &ring, &image(1), None, Some(&work.path().join("out"))).await.unwrap_err();
    assert!(matches!(&err, DistError::Tampered(m) if m.contains("missing")), "{err}");
    assert!(!work.path().join("out/disk.raw").exists(), "nothing half-checked is left as the artifact");
    assert!(!work.path().join("out/.disk.raw.partial").exists(), "nor as a partial file");
    std::fs::write(&chunk, &original).unwrap();
    verify(&store, &ring, &image(1), None, None).await.unwrap();

    // The manifest edited.
    let manifest = dir.join("images/minimal/1.0.0/1/manifest.json");
    std::fs::write(&manifest, b"{\"m\":2}").unwrap();
    let err = verify(&store, &ring, &image(1), None, None).await.unwrap_err();
    assert!(matches!(&err, DistError::Tampered(m) if m.contains("manifest.json was altered")), "{err}");
    std::fs::write(&manifest, b"{\"m\":1}").unwrap();

    // Re-signed by someone else: fine without a trusted key, refused with ours.
    let stranger = Keyring::open(&work.path().join("stranger")).unwrap();
    push(&store, &stranger, &image(1), std::slice::from_ref(&raw), b"{\"m\":1}", 2).await.unwrap();
    let err = verify(&store, &ring, &image(1), Some(&me), None).await.unwrap_err();
    assert!(matches!(&err, DistError::Tampered(m) if m.contains("does not trust")), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_many_reads_once_for_all_stores_and_one_failing_store_does_not_stop_the_others() {
    let work = tempfile::tempdir().unwrap();
    let ring = Keyring::open(&work.path().join("keys")).unwrap();
    ring.create("eu-key").unwrap();
    let raw = work.path().join("disk.raw");
    disk(&raw, 10 << 20, 13);
    let plain = target(&work.path().join("plain"), None);
    let sealed = target(&work.path().join("sealed"), Some("eu-key"));
    // A key this keyring does not have: that store fails, the others go on.
    let keyless = target(&work.path().join("keyless"), Some("us-key"));
    let targets = [plain.clone(), keyless, sealed.clone()];
    let results =
        kiln_dist::push_many(&targets, &ring, &image(1), std::slice::from_ref(&raw), b"{}", 3).await;
    assert!(results[1].is_err(), "{:?}", results[1]);
    for (r, t) in [(&results[0], &plain), (&results[2], &sealed)] {
        let r = r.as_ref().unwrap();
        assert_eq!((r.uploaded_bytes, r.total_bytes), (10 << 20, 10 << 20));
        let out = work.path().join(format!("out-{}", t.url.len()));
        verify(t, &ring, &image(1), None, Some(&out)).await.unwrap();
        assert_eq!(std::fs::read(out.join("disk.raw")).unwrap(), std::fs::read(&raw).unwrap());
    }
    // The same index as a push of its own: a store written by either reads the same.
    let single = target(&work.path().join("single"), None);
    push(&single, &ring, &image(1), std::slice::from_ref(&raw), b"{}", 3).await.unwrap();
    let index =
        |d: &str| std::fs::read(work.path().join(d).join("images/minimal/1.0.0/1/index.json")).unwrap();
    assert_eq!(index("plain"), index("single"));
}
