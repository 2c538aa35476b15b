//! Importing an existing system as a parent: a raw or qcow2 disk image, or a root file system
//! tarball, copied into a plain root tree.
//!
//! A disk's file systems are read through loop devices with an offset, mounted read-only by a
//! helper process in its own mount and PID namespace (`unshare --mount --propagation private
//! --pid --fork --kill-child`). The mounts exist only in that namespace, so the host's mount
//! table never sees them; the loop devices are `mount -o loop` autoclear devices, released as
//! soon as the namespace (and with it the mount) goes away. The helper gets SIGKILL when kiln
//! dies, its shell is PID 1 of the namespace, so a killed kiln leaves neither mounts nor loop
//! devices. The copy is `cp` with modes, owners, times, hard links and xattrs (so ACLs and file
//! capabilities), symlinks and device nodes as they are. `debugfs rdump` would need no mount,
//! but it drops device nodes, FIFOs, sockets, xattrs (file capabilities) and hard links; it is
//! only used here to look into a candidate file system (`stat /etc/os-release`, `cat
//! /etc/fstab`) before anything is mounted. Mounting makes the host kernel parse the image's
//! ext4 metadata: import images you would boot.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bootstrap::Timings;
use crate::disk::{self, GPT_LINUX_FS, GPT_ROOT_X86_64, Magic, Partition, TableKind};
use crate::dpkg::{self, Package};
use crate::error::{ParentError, Result};
use crate::tool::{self, Staging};

/// The format of an imported source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Raw,
    Qcow2,
    Tarball,
}

/// A separate partition brought in from the image's /etc/fstab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportedMount {
    /// Where it is mounted in the tree (`/var`).
    pub target: String,
    /// Its partition number on the disk.
    pub partition: u32,
}

/// What an import produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportInfo {
    pub source: PathBuf,
    /// sha256 of the source file as given (the qcow2 or tarball bytes): the parent's identity.
    pub source_sha256: String,
    pub format: SourceFormat,
    /// For disks: the partition table found and the root partition used.
    pub partition_table: Option<TableKind>,
    pub root: Option<Partition>,
    pub mounts: Vec<ImportedMount>,
    /// fstab entries not brought in, with the reason (`/boot/efi: vfat`).
    pub skipped_mounts: Vec<String>,
    /// /etc/os-release of the tree.
    pub os_release: BTreeMap<String, String>,
    /// dpkg's installed packages, empty for a non-Debian tree.
    pub packages: Vec<Package>,
    pub timings: Timings,
}

/// The format of a disk image file, from its first bytes: `"raw"` or `"qcow2"`; anything else
/// (VMDK, VHD(X), an archive) is an error that says what it is and what to do.
pub fn disk_format(path: &Path) -> Result<&'static str> {
    match disk::sniff(path)? {
        Magic::Qcow2 => Ok("qcow2"),
        Magic::Raw => Ok("raw"),
        Magic::Other(what) => {
            Err(ParentError::BadDisk { path: path.to_owned(), reason: format!("it is {what}") })
        }
    }
}

/// The root file system partition of the raw disk at `path` (the rules of [`import_disk`]).
pub fn root_partition(path: &Path) -> Result<Partition> {
    let (_, parts) = disk::partitions(path)?;
    // debugfs takes `FILE?offset=N`, so the path must not hold a `?`.
    if path.to_string_lossy().contains('?') {
        return Err(ParentError::BadDisk { path: path.to_owned(), reason: "the path contains `?`".into() });
    }
    find_root(path, &parts).map_err(|reason| ParentError::NoRootFs { path: path.to_owned(), reason })
}

/// Imports the root file system of the raw or qcow2 disk image at `path` (format detected from
/// its content) into `dest` (absent or an empty directory), with the ext4 partitions its
/// /etc/fstab mounts below / (such as /var or /home) in place.
pub fn import_disk(path: &Path, dest: &Path) -> Result<ImportInfo> {
    let start = Instant::now();
    let bad = |reason: String| ParentError::BadDisk { path: path.to_owned(), reason };
    let source = path.canonicalize().map_err(ParentError::io("cannot open disk image", path))?;
    if !source.is_file() {
        return Err(bad("not a regular file".into()));
    }
    for (t, pkg) in
        [("unshare", "util-linux"), ("mount", "mount"), ("cp", "coreutils"), ("debugfs", "e2fsprogs")]
    {
        if !tool::have(t) {
            return Err(missing(t, pkg));
        }
    }
    let format = match disk::sniff(&source)? {
        Magic::Qcow2 => SourceFormat::Qcow2,
        Magic::Raw => SourceFormat::Raw,
        Magic::Other(what) => return Err(bad(format!("it is {what}"))),
    };
    let staging = Staging::new(dest)?;
    let work = WorkDir::new(dest)?;
    let t = Instant::now();
    let source_sha256 = sha256_file(&source)?;

    let raw = match format {
        SourceFormat::Qcow2 => {
            let raw = work.path.join("disk.raw");
            qcow2_to_raw(&source, &raw)?;
            raw
        }
        _ => source.clone(),
    };
    // debugfs takes `FILE?offset=N`; a link with a plain name keeps odd characters out of it.
    let link = work.path.join("disk");
    std::os::unix::fs::symlink(&raw, &link).map_err(ParentError::io("cannot create", &link))?;

    let (table, parts) = disk::partitions(&raw).map_err(|e| match e {
        ParentError::BadDisk { reason, .. } => bad(reason),
        e => e,
    })?;
    let root =
        find_root(&link, &parts).map_err(|reason| ParentError::NoRootFs { path: path.to_owned(), reason })?;

    let (mounts, skipped_mounts) = fstab_mounts(&link, &root, &parts)?;
    let mnt = work.path.join("mnt");
    fs::create_dir(&mnt).map_err(ParentError::io("cannot create", &mnt))?;
    let mnt = mnt.canonicalize().map_err(ParentError::io("cannot resolve", &mnt))?;

    let mut cmd = tool::command("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        "sh",
        "-c",
        HELPER,
    ])
    .arg("kiln-import")
    .arg(&raw)
    .arg(staging.path())
    .arg(&mnt);
    let mut offsets = vec![root.offset];
    cmd.arg(root.offset.to_string()).arg(root.size.to_string()).arg("/");
    let mut imported = Vec::new();
    for (target, p) in &mounts {
        cmd.arg(p.offset.to_string()).arg(p.size.to_string()).arg(target);
        offsets.push(p.offset);
        imported.push(ImportedMount { target: target.clone(), partition: p.number });
    }
    tool::die_with_parent(&mut cmd);
    {
        let _sweep = LoopSweep { backing: raw.clone(), offsets };
        tool::run(cmd, "util-linux", "copying the file systems out of the disk image")?;
    }
    let materialize_ms = ms(t);

    let os_release = read_os_release(staging.path()).ok_or_else(|| ParentError::NoRootFs {
        path: path.to_owned(),
        reason: format!("{} holds no /etc/os-release after all", root.describe()),
    })?;
    let t = Instant::now();
    let packages = dpkg::installed_packages(staging.path())?;
    let inventory_ms = ms(t);
    drop(work);
    staging.commit()?;
    Ok(ImportInfo {
        source,
        source_sha256,
        format,
        partition_table: Some(table),
        root: Some(root),
        mounts: imported,
        skipped_mounts,
        os_release,
        packages,
        timings: Timings { materialize_ms, inventory_ms, total_ms: ms(start) },
    })
}

/// Extracts the root file system tarball at `path` (plain, gzip, xz, zstd or bzip2, detected by
/// GNU tar) into `dest` (absent or an empty directory) with numeric owners, modes, xattrs and
/// ACLs. GNU tar strips a leading `/` from member names and refuses members with `..` and
/// writes through symlinks the archive made (any such refusal fails the import). The result
/// must hold /etc/os-release.
pub fn import_tarball(path: &Path, dest: &Path) -> Result<ImportInfo> {
    let start = Instant::now();
    let bad = |reason: String| ParentError::BadTarball { path: path.to_owned(), reason };
    let source = path.canonicalize().map_err(ParentError::io("cannot open tarball", path))?;
    if !source.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let staging = Staging::new(dest)?;
    let t = Instant::now();
    let source_sha256 = sha256_file(&source)?;
    let mut cmd = tool::command("tar");
    cmd.arg("-x").arg("-f").arg(&source).arg("-C").arg(staging.path()).args([
        "--numeric-owner",
        "--same-owner",
        "-p",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
    ]);
    tool::die_with_parent(&mut cmd);
    let out = cmd.output().map_err(|source| ParentError::ToolMissing {
        tool: "tar".into(),
        package: "tar",
        source,
    })?;
    if !out.status.success() {
        return Err(bad(format!("tar failed ({}):\n{}", out.status, tool::tail(&out, 20))));
    }
    let materialize_ms = ms(t);
    let os_release = read_os_release(staging.path())
        .ok_or_else(|| bad("it is not a root file system tree: it has no /etc/os-release".into()))?;
    let t = Instant::now();
    let packages = dpkg::installed_packages(staging.path())?;
    let inventory_ms = ms(t);
    staging.commit()?;
    Ok(ImportInfo {
        source,
        source_sha256,
        format: SourceFormat::Tarball,
        partition_table: None,
        root: None,
        mounts: Vec::new(),
        skipped_mounts: Vec::new(),
        os_release,
        packages,
        timings: Timings { materialize_ms, inventory_ms, total_ms: ms(start) },
    })
}

/// The helper's script: `$1` raw disk, `$2` destination, `$3` mount point, then triples of
/// offset, size and place in the tree (`/` first). Mount points are resolved inside the
/// mounted tree and must stay in it.
const HELPER: &str = r#"set -eu
img=$1 dest=$2 mnt=$3
shift 3
trap 'umount -R "$mnt" 2>/dev/null || true' EXIT
while [ $# -gt 0 ]; do
  off=$1 size=$2 rel=$3
  shift 3
  t=$mnt
  if [ "$rel" != / ]; then
    t=$(realpath -e -- "$mnt$rel") || { echo "kiln: mount point $rel does not exist in the image" >&2; exit 3; }
    case "$t/" in "$mnt"/*) ;; *) echo "kiln: mount point $rel leaves the image" >&2; exit 3 ;; esac
  fi
  mount -t ext4 -o ro,noload,nodev,nosuid,noexec,loop,offset="$off",sizelimit="$size" -- "$img" "$t"
done
cp -dR --preserve=mode,ownership,timestamps,links,xattr --sparse=auto -- "$mnt/." "$dest/"
"#;

fn missing(tool: &str, package: &'static str) -> ParentError {
    ParentError::ToolMissing {
        tool: tool.into(),
        package,
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(ParentError::io("cannot open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(ParentError::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Converts a qcow2 image into a sparse raw file, refusing backing files (they would make
/// qemu-img read another file of the host).
fn qcow2_to_raw(src: &Path, raw: &Path) -> Result<()> {
    let bad = |reason: String| ParentError::BadDisk { path: src.to_owned(), reason };
    if !tool::have("qemu-img") {
        return Err(missing("qemu-img", "qemu-utils"));
    }
    let mut info = tool::command("qemu-img");
    info.args(["info", "--output=json", "-f", "qcow2"]).arg(src);
    let out = info.output().map_err(|source| ParentError::ToolMissing {
        tool: "qemu-img".into(),
        package: "qemu-utils",
        source,
    })?;
    if !out.status.success() {
        return Err(bad(format!("not a readable qcow2 image: {}", tool::tail(&out, 5))));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| bad(format!("cannot read `qemu-img info` output: {e}")))?;
    if let Some(b) = json.get("backing-filename") {
        return Err(bad(format!("it has a backing file ({b}); flatten it with `qemu-img convert` first")));
    }
    if json.pointer("/format-specific/data/corrupt").and_then(|v| v.as_bool()) == Some(true) {
        return Err(bad("qemu-img marks the qcow2 image as corrupt".into()));
    }
    let mut conv = tool::command("qemu-img");
    conv.args(["convert", "-q", "-f", "qcow2", "-O", "raw"]).arg(src).arg(raw);
    tool::die_with_parent(&mut conv);
    let out = conv.output().map_err(|source| ParentError::ToolMissing {
        tool: "qemu-img".into(),
        package: "qemu-utils",
        source,
    })?;
    if !out.status.success() {
        return Err(bad(format!("qemu-img cannot convert it: {}", tool::tail(&out, 5))));
    }
    Ok(())
}

/// Runs a read-only debugfs request against the file system at `offset` of `disk`.
fn debugfs(disk: &Path, offset: u64, request: &str) -> Result<(String, String)> {
    let mut cmd = tool::command("debugfs");
    cmd.arg("-R").arg(request).arg(format!("{}?offset={offset}", disk.display()));
    tool::die_with_parent(&mut cmd);
    let out = cmd.output().map_err(|source| ParentError::ToolMissing {
        tool: "debugfs".into(),
        package: "e2fsprogs",
        source,
    })?;
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn has_os_release(disk: &Path, p: &Partition) -> bool {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .any(|f| debugfs(disk, p.offset, &format!("stat {f}")).is_ok_and(|(out, _)| out.contains("Inode:")))
}

/// The root file system: the partition typed x86-64 root (Discoverable Partitions
/// Specification), else the first Linux file system partition (GPT Linux file system, MBR
/// 0x83, or a table-less disk) whose ext4 holds /etc/os-release.
fn find_root(disk: &Path, parts: &[Partition]) -> std::result::Result<Partition, String> {
    if let Some(p) = parts.iter().find(|p| p.type_id == GPT_ROOT_X86_64) {
        if p.fs.kind != "ext4" {
            return Err(format!(
                "the root {} holds {}, and kiln reads only ext2/3/4",
                p.describe(),
                p.fs.kind
            ));
        }
        return Ok(p.clone());
    }
    let linux: Vec<&Partition> =
        parts.iter().filter(|p| p.type_id == GPT_LINUX_FS || p.type_id == "0x83" || p.number == 0).collect();
    for p in &linux {
        if p.fs.kind == "ext4" && has_os_release(disk, p) {
            return Ok((*p).clone());
        }
    }
    let found = if parts.is_empty() {
        "the partition table is empty".to_owned()
    } else {
        parts.iter().map(|p| p.describe()).collect::<Vec<_>>().join(", ")
    };
    let why = if linux.is_empty() {
        "no partition has the x86-64 root or a Linux file system type"
    } else if linux.iter().any(|p| p.fs.kind == "ext4") {
        "no Linux ext4 file system holds /etc/os-release"
    } else {
        "the Linux partitions hold no ext2/3/4 file system (the only kind kiln reads)"
    };
    Err(format!("{why}; found {found}"))
}

/// Places in the tree and the partitions mounted there.
type Mounts = Vec<(String, Partition)>;

/// The ext4 partitions the root's /etc/fstab mounts below /, deepest last, and the entries
/// left out with why.
fn fstab_mounts(disk: &Path, root: &Partition, parts: &[Partition]) -> Result<(Mounts, Vec<String>)> {
    let (text, _) = debugfs(disk, root.offset, "cat /etc/fstab")?;
    let (mut mounts, mut skipped) = (Vec::new(), Vec::new());
    for e in disk::parse_fstab(&text) {
        if e.target == "/" || !e.target.starts_with('/') || e.fstype == "swap" {
            continue;
        }
        if matches!(e.fstype.as_str(), "tmpfs" | "proc" | "sysfs" | "devpts" | "none" | "bind")
            || e.options.split(',').any(|o| o == "bind")
        {
            continue;
        }
        let clean = e.target.split('/').all(|c| c != ".." && c != ".");
        let Some(p) = disk::resolve_spec(&e.spec, parts) else {
            skipped.push(format!("{}: {} is not a partition of this disk", e.target, e.spec));
            continue;
        };
        if !clean {
            skipped.push(format!("{}: not a plain path", e.target));
        } else if p.number == root.number {
            skipped.push(format!("{}: the root partition again", e.target));
        } else if p.fs.kind != "ext4" {
            skipped.push(format!("{}: {} (only ext2/3/4 is imported)", e.target, p.fs.kind));
        } else if mounts.iter().any(|(t, q): &(String, Partition)| *t == e.target || q.number == p.number) {
            skipped.push(format!("{}: mounted twice", e.target));
        } else {
            mounts.push((e.target.trim_end_matches('/').to_owned(), p.clone()));
        }
    }
    mounts.sort_by_key(|(t, _)| t.matches('/').count());
    Ok((mounts, skipped))
}

fn read_os_release(root: &Path) -> Option<BTreeMap<String, String>> {
    // /etc/os-release is usually a relative symlink to ../usr/lib/os-release; never follow a
    // link out of the tree.
    let etc = root.join("etc/os-release");
    let file = match fs::symlink_metadata(&etc) {
        Ok(m) if m.is_file() => etc,
        Ok(m) if m.is_symlink() => root.join("usr/lib/os-release"),
        _ => return None,
    };
    if !fs::symlink_metadata(&file).ok()?.is_file() {
        return None;
    }
    let text = fs::read_to_string(file).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').trim_matches('\'').to_owned()))
            .collect(),
    )
}

/// A scratch directory beside the destination (the raw copy of a qcow2, the mount point),
/// with a fixed name so a killed run's leftovers are removed by the next one; removed on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new(dest: &Path) -> Result<WorkDir> {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let parent = parent.canonicalize().map_err(ParentError::io("cannot resolve", &parent))?;
        // Absolute, so that loop devices report it as their backing file.
        let path = parent.join(format!(".{name}.kiln-work"));
        tool::remove_tree(&path)?;
        fs::create_dir(&path).map_err(ParentError::io("cannot create", &path))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = tool::remove_tree(&self.path);
    }
}

/// Detaches, on drop, any loop device still backed by `backing` at one of `offsets`. The
/// helper's loop devices are autoclear ones that go when its namespace does; this is the
/// belt to those braces (the kernel releases them asynchronously, so it waits a little).
#[derive(Debug)]
struct LoopSweep {
    backing: PathBuf,
    offsets: Vec<u64>,
}

impl LoopSweep {
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(dir) = fs::read_dir("/sys/block") else { return out };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let read =
                |f: &str| fs::read_to_string(e.path().join("loop").join(f)).map(|s| s.trim().to_owned());
            let (Ok(backing), Ok(offset)) = (read("backing_file"), read("offset")) else { continue };
            let ours = Path::new(&backing) == self.backing
                && offset.parse::<u64>().is_ok_and(|o| self.offsets.contains(&o))
                && read("autoclear").is_ok_and(|a| a == "1");
            if ours {
                out.push(format!("/dev/{name}"));
            }
        }
        out
    }
}

impl Drop for LoopSweep {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut left = self.leftovers();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = self.leftovers();
        }
        for dev in left {
            let _ = tool::command("losetup").arg("-d").arg(dev).output();
        }
    }
}
