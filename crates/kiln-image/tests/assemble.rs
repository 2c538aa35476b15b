//! Disk assembly of a small synthetic tree (no real kernel needed): layout, split, file system
//! contents, GPT, fstab, boot files, reproducibility, and that the input tree is untouched.
//! Needs e2fsprogs, dosfstools, mtools and qemu-utils (and fdisk for the GPT read-back).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::{AssembleOptions, DiskLayout, ImageError, OutputFormat, SizeSpec, assemble};

const EPOCH: i64 = 1_700_000_000;

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// The tools are part of kiln's set-up (scripts/install-deps.sh): missing ones fail the test
/// rather than skip it, so a green run always means the assembly really ran.
fn require_tools() {
    let missing: Vec<&str> =
        ["mke2fs", "mkfs.fat", "mcopy", "qemu-img", "debugfs"].into_iter().filter(|t| !have(t)).collect();
    assert!(
        missing.is_empty(),
        "{missing:?} not installed (e2fsprogs, dosfstools, mtools, qemu-utils): run scripts/install-deps.sh"
    );
}

fn touch(p: &Path, t: i64) {
    let s = Command::new("touch").arg("-h").arg("-d").arg(format!("@{t}")).arg(p).status().unwrap();
    assert!(s.success());
}

/// A tree shaped like a tiny Debian: kernel links, systemd-boot, logs, a sticky /tmp, hard
/// links, a fifo, and symlinks that point out of the tree.
fn synthetic_tree(root: &Path) {
    for d in
        ["boot", "etc", "usr/lib/systemd/boot/efi", "var/log/audit", "var/lib", "tmp", "home/user", "proc"]
    {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), vec![0x4d; 300_000]).unwrap();
    fs::write(root.join("boot/initrd.img-6.1.0-9-amd64"), vec![0x1f; 500_000]).unwrap();
    symlink("boot/vmlinuz-6.1.0-9-amd64", root.join("vmlinuz")).unwrap();
    symlink("boot/initrd.img-6.1.0-9-amd64", root.join("initrd.img")).unwrap();
    fs::write(root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"), b"MZ not really a boot loader")
        .unwrap();
    fs::write(root.join("etc/os-release"), "PRETTY_NAME=\"Kiln Test 1\"\nID=kiln\n").unwrap();
    fs::write(root.join("etc/fstab"), "# placeholder the assembly replaces\n").unwrap();
    fs::write(root.join("var/log/syslog"), "a log line\n".repeat(1000)).unwrap();
    fs::write(root.join("var/log/audit/audit.log"), "type=DAEMON_START\n").unwrap();
    fs::write(root.join("var/lib/state"), vec![7u8; 3 * 1024 * 1024]).unwrap();
    // Sparse: 1 TiB long, one block of data in the middle; must stay sparse all the way.
    let sparse = fs::File::create(root.join("var/lib/sparse")).unwrap();
    sparse.set_len(1 << 40).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 1 << 39).unwrap();
    fs::write(root.join("home/user/notes.txt"), b"hello").unwrap();
    fs::hard_link(root.join("home/user/notes.txt"), root.join("home/user/notes-link.txt")).unwrap();
    // Symlinks out of the tree: copied as links, never followed.
    symlink("/etc/shadow", root.join("etc/evil")).unwrap();
    symlink("../../../../../../etc/passwd", root.join("home/user/up")).unwrap();
    let fifo = root.join("var/lib/fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root.join("home/user/notes.txt"), fs::Permissions::from_mode(0o4755)).unwrap();
    // Times: one in the future (must be clamped), the rest in the past (must be kept).
    let walk = Command::new("find").arg(root).arg("-mindepth").arg("1").output().unwrap();
    for line in String::from_utf8(walk.stdout).unwrap().lines() {
        touch(Path::new(line), 1_600_000_000);
    }
    touch(&root.join("var/lib/state"), 2_000_000_000);
    touch(root, 1_600_000_000);
}

/// lstat of every path in the tree, ctime included: any change to the tree shows.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, i64, i64, i64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        out.insert(p.clone(), (m.mode(), m.len(), m.mtime(), m.ctime(), m.ctime_nsec(), m.nlink()));
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// Small fixed sizes keep the disk (and the time spent hashing it) small; /var/log is sized
/// from its content.
fn layout() -> DiskLayout {
    DiskLayout::default()
        .with_partition("/tmp", SizeSpec::mib(16), &["nodev", "nosuid", "noexec"])
        .with_partition("/var/log", SizeSpec::Auto, &["nodev", "nosuid", "noexec"])
        .with_partition("/var/log/audit", SizeSpec::mib(16), &["nodev"])
        .with_partition("/home", SizeSpec::mib(16), &["nodev"])
}

fn options(out: &Path) -> AssembleOptions {
    let mut o = AssembleOptions::new(out);
    o.source_date_epoch = Some(EPOCH);
    o.formats = vec![
        OutputFormat::Raw,
        OutputFormat::Qcow2 { compressed: true },
        OutputFormat::Vmdk,
        OutputFormat::Vhdx,
        OutputFormat::Vhd,
    ];
    o.kernel_cmdline = "quiet".into();
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

#[test]
fn assembles_a_split_tree_reproducibly_without_touching_it() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    synthetic_tree(&tree);
    let before = snapshot(&tree);

    let a = assemble(&tree, &layout(), &options(&dir.path().join("a"))).unwrap();
    // A second run at least a second later, so that staging ctimes differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = assemble(&tree, &layout(), &options(&dir.path().join("b"))).unwrap();

    assert_eq!(before, snapshot(&tree), "the input tree was changed");

    eprintln!("timings: {:?}", a.timings);
    // KILN_TEST_KEEP=DIR keeps both raw disks for `cmp -l` when reproducibility breaks.
    if let Ok(keep) = std::env::var("KILN_TEST_KEEP") {
        fs::create_dir_all(&keep).unwrap();
        fs::copy(&a.artifact(OutputFormat::Raw).unwrap().path, Path::new(&keep).join("a.raw")).unwrap();
        fs::copy(&b.artifact(OutputFormat::Raw).unwrap().path, Path::new(&keep).join("b.raw")).unwrap();
    }
    // Reproducible: raw and qcow2 byte-identical; the rest is explained.
    for f in [OutputFormat::Raw, OutputFormat::Qcow2 { compressed: true }] {
        assert_eq!(
            a.artifact(f).unwrap().sha256,
            b.artifact(f).unwrap().sha256,
            "{f:?} differs between runs"
        );
    }
    for f in [OutputFormat::Vmdk, OutputFormat::Vhdx, OutputFormat::Vhd] {
        let same = a.artifact(f).unwrap().sha256 == b.artifact(f).unwrap().sha256;
        let explained = a.non_reproducible.iter().any(|s| s.starts_with(f.extension()));
        assert!(same || explained, "{f:?} differs and non_reproducible does not say why");
    }
    assert_eq!(a.partitions, b.partitions);
    assert_eq!(a.source_date_epoch, EPOCH);

    // Layout: ESP first, separate partitions by mount point, root last, 1 MiB aligned.
    let mps: Vec<&str> = a.partitions.iter().map(|p| p.mount_point.as_str()).collect();
    assert_eq!(mps, ["/boot/efi", "/home", "/tmp", "/var/log", "/var/log/audit", "/"]);
    assert!(a.partitions.iter().all(|p| p.offset % (1 << 20) == 0 && p.size % (1 << 20) == 0));
    let raw = a.artifact(OutputFormat::Raw).unwrap();
    assert_eq!(raw.size, a.disk_size);
    assert!(raw.allocated < raw.size / 2, "raw disk is not sparse: {} of {}", raw.allocated, raw.size);

    let part = |mp: &str| a.partitions.iter().find(|p| p.mount_point == mp).unwrap().clone();
    let disk = raw.path.clone();

    // Every ext4 file system is clean, checksums included (the inode pass recomputes them).
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

    // The split: /var/log content in its partition, audit in its own, root has empty mount points.
    let root = part("/");
    let varlog = part("/var/log");
    let audit = part("/var/log/audit");
    assert!(debugfs(&disk, varlog.offset, "ls -l /").contains("syslog"));
    assert!(!debugfs(&disk, varlog.offset, "ls -l /audit").contains("audit.log"));
    assert!(debugfs(&disk, audit.offset, "ls -l /").contains("audit.log"));
    let root_varlog = debugfs(&disk, root.offset, "ls /var/log");
    assert!(!root_varlog.contains("syslog"), "{root_varlog}");
    assert!(debugfs(&disk, root.offset, "ls /var/lib").contains("fifo"));
    let sparse = debugfs(&disk, root.offset, "stat /var/lib/sparse");
    assert!(sparse.contains("Size: 1099511627776"), "{sparse}");

    // /tmp's file system root keeps the sticky mode; future times are clamped, past kept.
    let tmp_root = debugfs(&disk, part("/tmp").offset, "stat /");
    assert!(tmp_root.contains("Mode:  01777"), "{tmp_root}");
    let state = debugfs(&disk, root.offset, "stat /var/lib/state");
    assert!(state.contains(&format!("mtime: 0x{EPOCH:08x}")), "{state}");
    assert!(state.contains(&format!("ctime: 0x{EPOCH:08x}")), "{state}");
    let notes = debugfs(&disk, part("/home").offset, "stat /user/notes.txt");
    assert!(notes.contains("mtime: 0x5f5e1000"), "{notes}");
    assert!(notes.contains("Mode:  04755") && notes.contains("Links: 2"), "{notes}");

    // Symlinks out of the tree are kept as links.
    let evil = debugfs(&disk, root.offset, "stat /etc/evil");
    assert!(evil.contains("Type: symlink") && evil.contains("/etc/shadow"), "{evil}");

    // fstab by UUID with the options; loader entry with the root PARTUUID and extra cmdline.
    let fstab = debugfs(&disk, root.offset, "cat /etc/fstab");
    assert!(fstab.contains(&format!("UUID={} / ext4 errors=remount-ro 0 1", root.fs_uuid)), "{fstab}");
    assert!(
        fstab.contains(&format!("UUID={} /var/log ext4 nodev,nosuid,noexec 0 2", varlog.fs_uuid)),
        "{fstab}"
    );
    assert!(fstab.contains("/boot/efi vfat umask=0077,nofail 0 2"), "{fstab}");
    assert_eq!(a.boot.cmdline, format!("root=PARTUUID={} rw console=ttyS0,115200 quiet", root.part_uuid));
    assert_eq!(a.boot.kernel_version, "6.1.0-9-amd64");
    assert_eq!(a.boot.title, "Kiln Test 1");

    let esp = part("/boot/efi");
    let mdir = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-/", "-b", "-i"])
        .arg(format!("{}@@{}", disk.display(), esp.offset))
        .arg("::/")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&mdir.stdout);
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/loader.conf",
        "::/loader/entries/kiln.conf",
        "::/kiln/vmlinuz-6.1.0-9-amd64",
    ] {
        assert!(listing.contains(f), "{f} missing from the ESP:\n{listing}");
    }

    // The GPT as another tool reads it.
    if have("sfdisk") {
        let out = Command::new("sfdisk").arg("--dump").arg(&disk).output().unwrap();
        let dump = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(dump.contains(&format!("label-id: {}", a.disk_guid)), "{dump}");
        assert!(dump.contains(&format!("uuid={}, name=\"root\"", root.part_uuid)), "{dump}");
        assert!(dump.contains("type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b"), "{dump}");
        let verify = Command::new("sfdisk").arg("--verify").arg(&disk).output().unwrap();
        assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    }
}

#[test]
fn a_fixed_partition_too_small_for_its_content_is_refused_before_any_work() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("var/log")).unwrap();
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::write(tree.join("boot/vmlinuz-1"), b"k").unwrap();
    fs::write(tree.join("boot/initrd.img-1"), b"i").unwrap();
    fs::create_dir_all(tree.join("usr/lib/systemd/boot/efi")).unwrap();
    fs::write(tree.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"), b"MZ").unwrap();
    fs::write(tree.join("var/log/big"), vec![1u8; 12 * 1024 * 1024]).unwrap();
    let layout = DiskLayout::default().with_partition("/var/log", SizeSpec::mib(10), &[]);
    let out = dir.path().join("out");
    let e = assemble(&tree, &layout, &AssembleOptions::new(&out)).unwrap_err();
    assert!(
        matches!(e, ImageError::PartitionTooSmall { ref mount_point, .. } if mount_point == "/var/log"),
        "{e}"
    );
    assert!(e.to_string().contains("at least"), "{e}");
    assert!(!out.join("disk.raw").exists(), "a disk was written despite the error");
}
