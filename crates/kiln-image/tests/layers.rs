//! Assembly from a stack of overlayfs layers (a base tree and upper directories with
//! whiteouts, opaque directories and overlayfs's own attributes), through `stage` and
//! `Staged::assemble`: the merged view, the disk's content, reproducibility, and layers that
//! try to lead the assembly out of the tree. Synthetic trees, no real kernel. Needs root
//! (trusted.* attributes, whiteout devices), e2fsprogs, dosfstools and mtools.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::{
    AssembleOptions, DiskLayout, ImageError, OutputFormat, SizeSpec, Staged, TreeSource, stage,
};

const EPOCH: i64 = 1_700_000_000;

fn require_tools() {
    for tool in ["mke2fs", "mkfs.fat", "mcopy", "debugfs"] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{tool} not installed (e2fsprogs, dosfstools, mtools): run scripts/install-deps.sh");
    }
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: live NUL-terminated strings and a buffer of the length given.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setting {name} on {}: {}", p.display(), std::io::Error::last_os_error());
}

fn xattr_names(p: &Path) -> Vec<String> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listing xattrs of {}", p.display());
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// An overlayfs whiteout: a character device 0:0.
fn whiteout(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a live NUL-terminated path.
    assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) }, 0);
}

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Three layers as a build makes them: the base tree, a component's upper directory, and the
/// cleanup layer's.
fn three_layers(base: &Path) -> Vec<PathBuf> {
    let l: Vec<PathBuf> = ["base", "component", "cleanup"].iter().map(|n| base.join(n)).collect();
    for d in &l {
        fs::create_dir(d).unwrap();
    }
    // Base: a bootable minimum and the things the layers above change.
    let b = &l[0];
    write(b, "boot/vmlinuz-6.1.0-9-amd64", &"k".repeat(100_000));
    write(b, "boot/initrd.img-6.1.0-9-amd64", &"i".repeat(200_000));
    symlink("boot/vmlinuz-6.1.0-9-amd64", b.join("vmlinuz")).unwrap();
    symlink("boot/initrd.img-6.1.0-9-amd64", b.join("initrd.img")).unwrap();
    write(b, "usr/lib/systemd/boot/efi/systemd-bootx64.efi", "MZ not really a boot loader");
    write(b, "etc/os-release", "PRETTY_NAME=\"Kiln Layers\"\n");
    write(b, "etc/keep", "kept");
    write(b, "etc/replace", "old");
    write(b, "etc/delete-me", "deleted by a whiteout");
    write(b, "opt/app/a/one", "hidden by the opaque directory");
    write(b, "opt/app/b", "hidden too");
    write(b, "srv/data/inside", "gone with its directory");
    write(b, "usr/share/doc/pkg/copyright", "removed by cleanup");
    write(b, "var/log/old.log", "old log");
    fs::create_dir_all(b.join("boot/efi")).unwrap();
    // Component: replaces a file (with the attribute copy-up leaves), deletes one, makes a
    // directory opaque, replaces a directory by a file, adds a log and a newer os-release.
    let c = &l[1];
    write(c, "etc/replace", "new");
    set_xattr(&c.join("etc/replace"), "trusted.overlay.origin", b"\x00\xfb fake handle");
    set_xattr(&c.join("etc"), "trusted.overlay.impure", b"y");
    set_xattr(&c.join("etc/replace"), "user.kept", b"yes");
    whiteout(&c.join("etc/delete-me"));
    write(c, "opt/app/fresh", "the only thing in /opt/app");
    set_xattr(&c.join("opt/app"), "trusted.overlay.opaque", b"y");
    write(c, "srv/data", "now a file");
    write(c, "var/log/new.log", "new log");
    // Cleanup: removes a directory tree and a log, adds a symlink out of the tree.
    let k = &l[2];
    fs::create_dir_all(k.join("usr/share")).unwrap();
    whiteout(&k.join("usr/share/doc"));
    fs::create_dir_all(k.join("var/log")).unwrap();
    whiteout(&k.join("var/log/old.log"));
    fs::create_dir_all(k.join("etc")).unwrap();
    symlink("/etc/shadow", k.join("etc/evil")).unwrap();
    // Times before the clamp, so that they are kept: an atime that reading the staged view
    // moves would then show (the first assembly below reads it, the second does not).
    let s = Command::new("find")
        .arg(base)
        .args(["-exec", "touch", "-h", "-d", "@1600000000", "{}", "+"])
        .status();
    assert!(s.unwrap().success());
    l
}

fn layout() -> DiskLayout {
    DiskLayout::default().with_partition("/var/log", SizeSpec::mib(16), &["nodev"])
}

fn options(out: &Path) -> AssembleOptions {
    let mut o = AssembleOptions::new(out);
    o.source_date_epoch = Some(EPOCH);
    o.formats = vec![OutputFormat::Raw];
    o
}

fn debugfs(disk: &Path, offset: u64, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", disk.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the merged tree must look like, in the staged view.
fn check_view(staged: &Staged) {
    let v = staged.root_view();
    let read = |rel: &str| fs::read_to_string(v.join(rel)).unwrap();
    assert_eq!(read("etc/replace"), "new");
    assert_eq!(read("etc/keep"), "kept");
    assert_eq!(read("srv/data"), "now a file");
    assert!(!v.join("etc/delete-me").exists());
    assert!(!v.join("usr/share/doc").exists());
    assert!(v.join("usr/share").is_dir());
    let app: Vec<_> = fs::read_dir(v.join("opt/app")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(app, ["fresh"]);
    assert_eq!(fs::read_link(v.join("etc/evil")).unwrap(), Path::new("/etc/shadow"));
    // /var/log merges the base's and the component's, minus the cleanup's whiteout.
    assert_eq!(read("var/log/new.log"), "new log");
    assert!(!v.join("var/log/old.log").exists());
    assert_eq!(staged.path_of("/var/log/new.log"), v.join("var/log/new.log"));
    // kiln's own files are in the view too.
    assert!(read("etc/fstab").contains("/var/log ext4 nodev"));
    assert!(v.join("boot/efi/loader/entries/kiln.conf").is_file());
    // No whiteout device and no overlayfs attribute anywhere; other attributes kept.
    let mut stack = vec![v.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(!m.file_type().is_char_device(), "{} is a device", p.display());
        let names = xattr_names(&p);
        assert!(!names.iter().any(|n| n.starts_with("trusted.overlay.")), "{}: {names:?}", p.display());
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert_eq!(xattr_names(&v.join("etc/replace")), ["user.kept"]);
}

#[test]
fn a_layer_stack_is_merged_like_overlayfs_and_assembled_reproducibly() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let source = TreeSource::Layers(three_layers(dir.path()));

    let staged = stage(&source, &layout(), &options(&dir.path().join("a"))).unwrap();
    check_view(&staged);
    let view = staged.root_view().to_path_buf();
    let planned = staged.partitions().to_vec();
    let a = staged.assemble().unwrap();
    assert!(!view.exists(), "the staging copy outlived the assembly");
    assert_eq!(a.partitions, planned);
    assert!(a.timings.iter().any(|t| t.stage == "split"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = stage(&source, &layout(), &options(&dir.path().join("b"))).unwrap().assemble().unwrap();
    let raw = |d: &kiln_image::AssembledDisk| d.artifact(OutputFormat::Raw).unwrap().clone();
    assert_eq!(raw(&a).sha256, raw(&b).sha256, "the same layers gave different disks");

    let disk = raw(&a).path;
    let part = |mp: &str| a.partitions.iter().find(|p| p.mount_point == mp).unwrap().clone();
    let root = part("/").offset;
    for p in a.partitions.iter().filter(|p| p.fs_type == "ext4") {
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(format!("{}?offset={}", disk.display(), p.offset))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck of {}: {}",
            p.mount_point,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(debugfs(&disk, root, "cat /etc/replace"), "new");
    assert_eq!(debugfs(&disk, root, "cat /srv/data"), "now a file");
    let etc = debugfs(&disk, root, "ls -l /etc");
    assert!(etc.contains("keep") && etc.contains("evil"), "{etc}");
    assert!(!etc.contains("delete-me"), "{etc}");
    let app = debugfs(&disk, root, "ls -l /opt/app");
    assert!(app.contains("fresh") && !app.contains(" a ") && !app.contains(" b "), "{app}");
    assert!(!app.contains("one"), "{app}");
    let share = debugfs(&disk, root, "ls -l /usr/share");
    assert!(!share.contains("doc"), "{share}");
    let evil = debugfs(&disk, root, "stat /etc/evil");
    assert!(evil.contains("Type: symlink") && evil.contains("/etc/shadow"), "{evil}");
    let srv = debugfs(&disk, root, "stat /srv/data");
    assert!(srv.contains("Type: regular"), "{srv}");
    // /var/log's partition: the merged logs, no whiteout device.
    let logs = debugfs(&disk, part("/var/log").offset, "ls -l /");
    assert!(logs.contains("new.log") && !logs.contains("old.log"), "{logs}");
    assert!(!debugfs(&disk, root, "ls -l /var/log").contains("new.log"));
    // No character device in the directories that had whiteouts (debugfs prints the mode in
    // octal, such as 20600 for a character device, in the second column).
    let is_chr = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .is_some_and(|m| m & 0o170000 == 0o020000)
    };
    assert!(is_chr("     14   20600 (3)      0      0       0 14-Nov-2023 22:13 wh"));
    for (offset, d) in [(root, "/etc"), (root, "/usr/share"), (part("/var/log").offset, "/")] {
        let listing = debugfs(&disk, offset, &format!("ls -l {d}"));
        assert!(listing.lines().count() > 2, "{listing}");
        assert!(!listing.lines().any(is_chr), "{listing}");
    }
    // Extended attributes: overlayfs's gone, the rest kept.
    for p in ["/etc", "/etc/replace", "/opt/app"] {
        let ea = debugfs(&disk, root, &format!("ea_list {p}"));
        assert!(!ea.contains("overlay"), "{p}: {ea}");
    }
    assert!(debugfs(&disk, root, "ea_list /etc/replace").contains("user.kept"));
}

#[test]
fn the_seed_covers_the_merged_tree_unless_given() {
    let dir = tempfile::tempdir().unwrap();
    let layers = three_layers(dir.path());
    let out = dir.path().join("out");
    let seed = |layers: &[PathBuf], given: Option<&str>| {
        let mut o = options(&out);
        o.seed = given.map(str::to_owned);
        stage(&TreeSource::Layers(layers.to_vec()), &layout(), &o).unwrap().seed()
    };
    // Without the cleanup layer the merged tree differs, and so does the derived seed.
    assert_ne!(seed(&layers, None), seed(&layers[..2], None));
    assert_eq!(seed(&layers, None), seed(&layers, None));
    // A given seed wins.
    assert_eq!(seed(&layers, Some("layer digest")), seed(&layers[..2], Some("layer digest")));
    // A single plain directory is a one-layer stack with the same merged tree.
    let one = stage(&TreeSource::Dir(layers[0].clone()), &layout(), &options(&out)).unwrap().seed();
    assert_eq!(one, seed(&layers[..1], None));
}

#[test]
fn hostile_layers_are_copied_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = three_layers(dir.path());
    // A fourth layer with symlinks out of the tree, and a directory over a lower symlink
    // (which must not be read through).
    let h = dir.path().join("hostile");
    fs::create_dir(&h).unwrap();
    symlink("/etc", h.join("data")).unwrap();
    symlink("/", h.join("root-link")).unwrap();
    symlink("../../../../../../etc/passwd", h.join("up")).unwrap();
    l.push(h.clone());
    let top = dir.path().join("top");
    fs::create_dir_all(top.join("data")).unwrap();
    fs::write(top.join("data/injected"), "mine").unwrap();
    l.push(top);

    let staged = stage(&TreeSource::Layers(l.clone()), &layout(), &options(&dir.path().join("out"))).unwrap();
    let v = staged.root_view();
    assert_eq!(fs::read_link(v.join("root-link")).unwrap(), Path::new("/"));
    assert_eq!(fs::read_link(v.join("up")).unwrap(), Path::new("../../../../../../etc/passwd"));
    // /data: the top layer's directory only; the symlink below ends the merge.
    let data: Vec<_> = fs::read_dir(v.join("data")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(data, ["injected"]);
    let work = v.parent().unwrap().to_path_buf();
    drop(staged);
    assert!(!work.exists(), "dropping Staged left {} behind", work.display());

    // A layer turning a mount point's parent into a symlink is refused, not followed.
    let var = dir.path().join("var-link");
    fs::create_dir(&var).unwrap();
    symlink("/etc", var.join("var")).unwrap();
    l.push(var);
    let e = stage(&TreeSource::Layers(l), &layout(), &options(&dir.path().join("out"))).unwrap_err();
    assert!(matches!(e, ImageError::MountPointNotDirectory { .. }), "{e}");
}
