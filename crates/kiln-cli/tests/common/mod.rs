//! Shared fixtures for the CLI's integration tests.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (this crate sits at crates/kiln-cli).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// `shared/` beside the repository, as on the developers' machines and in CI.
pub fn shared() -> PathBuf {
    let dir = workspace().join("../shared");
    assert!(
        dir.is_dir(),
        "the shared folder is missing at {}: it must sit beside the repository",
        dir.display()
    );
    dir
}

/// The layer and package cache shared by every heavy test (and kept between runs), so the
/// Debian base is bootstrapped once.
pub fn shared_cache() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
        base.join("kiln/test-cache")
    });
    std::fs::create_dir_all(&dir).expect("create the shared test cache");
    dir
}

/// Run the kiln binary.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

/// Runs `cmd` to completion like `Command::output`, and also copies its output to the test's
/// standard error as it comes, each line with the seconds since the start: a test that hangs
/// or times out then shows how far the command got (the harness prints captured output).
pub fn output_echoed(cmd: &mut Command) -> Output {
    use std::process::Stdio;
    let start = std::time::Instant::now();
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run command");
    let echo = |stream: Box<dyn std::io::Read + Send>, tag: &'static str| {
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut all = Vec::new();
            let mut reader = std::io::BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let secs = start.elapsed().as_secs_f64();
                eprint!("[{secs:7.1}s {tag}] {}", String::from_utf8_lossy(&line));
                all.append(&mut line);
            }
            all
        })
    };
    let out = echo(Box::new(child.stdout.take().expect("piped stdout")), "out");
    let err = echo(Box::new(child.stderr.take().expect("piped stderr")), "err");
    let status = child.wait().expect("wait for command");
    Output { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

/// The cached Debian bookworm tarball (minbase + sudo) that heavy tests unpack. `scripts/test.sh`
/// passes it in `KILN_TEST_DEBIAN_TAR`; run alone, a test makes it (once; mmdebstrap, ~1 min).
pub fn debian_tar() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_TEST_DEBIAN_TAR") {
        return PathBuf::from(p);
    }
    let script = workspace().join("scripts/debian-root.sh");
    // flock serialises concurrent test processes so only one bootstraps.
    let lock = std::env::temp_dir().join("kiln-test-debian-root.lock");
    let out = Command::new("flock")
        .arg(&lock)
        .arg(&script)
        .arg("test")
        .output()
        .expect("run scripts/debian-root.sh");
    assert!(
        out.status.success(),
        "bootstrapping the Debian test root failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// A fresh, writable Debian root in a temporary directory.
pub fn debian_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("kiln-test-root-").tempdir().expect("tempdir");
    let status =
        Command::new("tar").arg("-C").arg(dir.path()).arg("-xf").arg(debian_tar()).status().expect("run tar");
    assert!(status.success(), "unpacking the Debian test root failed");
    dir
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A raw GPT disk holding `root` as an ext4 file system in a partition typed x86-64 root, made
/// the way kiln-parent's import tests make theirs (sfdisk, then `mkfs.ext4 -d` at the
/// partition's offset). Needs mkfs.ext4 and sfdisk; no root privileges to make, root to import.
pub fn disk_from_root(dir: &Path, root: &Path, name: &str) -> PathBuf {
    const START: u64 = 2048;
    const SECTORS: u64 = 32768;
    let disk = dir.join(format!("{name}.raw"));
    let sh = |cmd: &str| {
        let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
        assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
    };
    sh(&format!("truncate -s 20M {}", disk.display()));
    sh(&format!(
        "printf 'label: gpt\\nstart={START}, size={SECTORS}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\\n' \
         | sfdisk -q --no-reread --no-tell-kernel {} >/dev/null",
        disk.display()
    ));
    sh(&format!(
        "mkfs.ext4 -q -F -E offset={} -d {} {} {}k",
        START * 512,
        root.display(),
        disk.display(),
        SECTORS / 2
    ));
    disk
}

/// Puts an AVAILABLE image `name`/1.0.0 straight into the catalogue under `home`, as a build
/// would leave it: its manifest lists `disk` (in `disk`'s folder) when given, and the
/// inventory of `inventory_root` is kept when given. Returns its ARN.
pub fn catalogue_image(
    home: &Path,
    name: &str,
    disk: Option<&Path>,
    inventory_root: Option<&Path>,
) -> String {
    use kiln_store::{ImageState, NewImage};
    let kiln = kiln_build::Kiln::open(home).expect("open KILN_HOME");
    let store = kiln.store();
    let image = kiln
        .block_on(store.create_image(&NewImage {
            name: name.into(),
            version: "1.0.0".parse().unwrap(),
            region: "local".into(),
            account: "000000000000".into(),
            recipe: serde_json::json!({ "imageRecipe": { "name": name, "semanticVersion": "1.0.0" } }),
            tags: Default::default(),
        }))
        .expect("create image");
    for state in [ImageState::Building, ImageState::Available] {
        kiln.block_on(store.transition(&image.arn, state, None)).expect("transition");
    }
    if let Some(disk) = disk {
        let file = disk.file_name().unwrap().to_str().unwrap();
        let manifest = serde_json::json!({ "artifacts": [{ "file": file, "format": "raw" }] });
        let dir = disk.parent().unwrap().to_str().unwrap();
        kiln.block_on(store.set_manifest(&image.arn, dir, &manifest)).expect("set manifest");
    }
    if let Some(root) = inventory_root {
        let inventory = kiln_scan::Inventory::from_root(root).expect("inventory");
        let value = serde_json::to_value(&inventory).unwrap();
        kiln.block_on(store.put_inventory(&image.arn, &value)).expect("keep inventory");
    }
    kiln.block_on(store.close());
    image.arn
}
