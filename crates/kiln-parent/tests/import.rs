//! Imports of disks and tarballs the tests build themselves, compared file by file with the
//! tree they were made from; and the faults: no Linux partition, a corrupt qcow2, hostile
//! tarballs. Each test checks that no loop device or mount referring to its files is left.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_parent::{ParentError, SourceFormat, TableKind, import_disk, import_tarball};

const ESP_UUID: &str = "11111111-2222-3333-4444-555555555501";
const ROOT_UUID: &str = "11111111-2222-3333-4444-555555555502";
const VAR_UUID: &str = "11111111-2222-3333-4444-555555555503";
const MIB: u64 = 1 << 20;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {}: {}", path.display(), std::io::Error::last_os_error());
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer of the length passed.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

/// A small root tree: os-release behind a relative symlink, a device node, a FIFO, an xattr,
/// a hard link, odd owners and modes, and an fstab naming a separate /var and an ESP.
fn make_root(dir: &Path) -> PathBuf {
    let root = dir.join("src-root");
    for d in ["etc", "usr/lib", "dev", "var", "home/user", "boot/efi", "bin"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("usr/lib/os-release"), "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Kiln Test\"\n")
        .unwrap();
    symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    fs::write(
        root.join("etc/fstab"),
        format!(
            "# test\nPARTUUID={ROOT_UUID} / ext4 defaults 0 1\nPARTUUID={VAR_UUID} /var ext4 defaults 0 2\n\
             PARTUUID={ESP_UUID} /boot/efi vfat umask=0077 0 1\ntmpfs /tmp tmpfs defaults 0 0\n"
        ),
    )
    .unwrap();
    fs::write(root.join("bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-link")).unwrap();
    setxattr(&root.join("bin/tool"), "user.kiln", b"hello");
    fs::write(root.join("home/user/secret"), "s").unwrap();
    fs::set_permissions(root.join("home/user/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(root.join("home/user/secret"), Some(1000), Some(1001)).unwrap();
    sh(&format!("mknod -m 620 {0}/dev/tty9 c 4 9 && mknod {0}/dev/fifo p", root.display()));
    root
}

fn make_var(dir: &Path) -> PathBuf {
    let var = dir.join("src-var");
    fs::create_dir_all(var.join("lib/dpkg")).unwrap();
    fs::write(
        var.join("lib/dpkg/status"),
        "Package: kiln-test\nStatus: install ok installed\nVersion: 1.0-1\nArchitecture: all\n",
    )
    .unwrap();
    fs::create_dir_all(var.join("log")).unwrap();
    symlink("/run/lock", var.join("lock")).unwrap();
    var
}

/// A GPT (or MBR) disk: a 2 MiB ESP-typed partition holding nothing, the root, and /var.
fn make_disk(dir: &Path, root: &Path, var: Option<&Path>, root_type: &str, label: &str) -> PathBuf {
    let disk = dir.join(format!("disk-{label}-{}.raw", root_type.len()));
    let _ = fs::remove_file(&disk);
    sh(&format!("truncate -s 40M {}", disk.display()));
    let script = if label == "gpt" {
        format!(
            "label: gpt\nstart=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_UUID}\n\
             start=6144, size=32768, type={root_type}, uuid={ROOT_UUID}\n\
             start=38912, size=38912, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={VAR_UUID}\n"
        )
    } else {
        "label: dos\nstart=2048, size=4096, type=ef\nstart=6144, size=32768, type=83\n".into()
    };
    let out = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(out.success());
    sh(&format!("mkfs.ext4 -q -F -E offset={} -d {} {} 16M", 6144 * 512, root.display(), disk.display()));
    if let Some(var) = var {
        sh(&format!("mkfs.ext4 -q -F -E offset={} -d {} {} 19M", 38912 * 512, var.display(), disk.display()));
    }
    disk
}

/// Everything `cp -a` must keep, per path: kind, mode, owner, size, link target, device,
/// xattr, content, and the inode group (hard links).
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if rel == "lost+found" || rel.ends_with("/lost+found") {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mut desc = format!("mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid());
        if ft.is_symlink() {
            desc += &format!(" -> {}", fs::read_link(&p).unwrap().display());
        } else if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if ft.is_file() {
            desc += &format!(" content={:?}", fs::read_to_string(&p).unwrap());
            if m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                desc += &format!(" nlink={} group={}", m.nlink(), first);
            }
        } else {
            desc += &format!(" rdev={:x}", m.rdev());
        }
        if let Some(x) = getxattr(&p, "user.kiln") {
            desc += &format!(" xattr={}", String::from_utf8_lossy(&x));
        }
        if !rel.is_empty() {
            out.insert(rel, desc);
        }
    }
    out
}

/// Loop devices and mounts that mention `dir`: there must be none after an import.
fn leaks(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    let mut out: Vec<String> =
        sh("losetup -a").lines().filter(|l| l.contains(&d)).map(String::from).collect();
    out.extend(
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&d))
            .map(String::from),
    );
    out
}

fn check_no_leaks(dir: &Path) {
    // Autoclear loop devices are released asynchronously after their namespace goes.
    for _ in 0..60 {
        if leaks(dir).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("left behind: {:?}", leaks(dir));
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("kiln-parent-test").tempdir().unwrap()
}

fn assert_same_tree(src_root: &Path, src_var: Option<&Path>, dest: &Path) {
    let mut want = snapshot(src_root);
    if let Some(var) = src_var {
        for (k, v) in snapshot(var) {
            want.insert(format!("var/{k}"), v);
        }
        // The mount point takes the mounted file system's root directory attributes.
        let m = fs::symlink_metadata(var).unwrap();
        want.insert("var".into(), format!("mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid()));
    }
    let got = snapshot(dest);
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "{k}");
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
}

#[test]
fn gpt_raw_disk_with_separate_var() {
    let t = tmp();
    let (root, var) = (make_root(t.path()), make_var(t.path()));
    let disk = make_disk(t.path(), &root, Some(&var), "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "gpt");
    let before = leaks(t.path());
    assert!(before.is_empty());
    let dest = t.path().join("out");
    let info = import_disk(&disk, &dest).unwrap();
    check_no_leaks(t.path());
    assert_eq!(info.format, SourceFormat::Raw);
    assert_eq!(info.partition_table, Some(TableKind::Gpt));
    let r = info.root.as_ref().unwrap();
    assert_eq!((r.number, r.offset, r.size), (2, 6144 * 512, 16 * MIB));
    assert_eq!(r.part_uuid, ROOT_UUID);
    assert_eq!(info.mounts.len(), 1);
    assert_eq!((info.mounts[0].target.as_str(), info.mounts[0].partition), ("/var", 3));
    assert!(info.skipped_mounts.iter().any(|s| s.starts_with("/boot/efi:")), "{:?}", info.skipped_mounts);
    assert_eq!(info.os_release["PRETTY_NAME"], "Kiln Test");
    assert_eq!(info.packages.len(), 1);
    assert_eq!(info.packages[0].name, "kiln-test");
    assert_eq!(info.source_sha256.len(), 64);
    assert_same_tree(&root, Some(&var), &dest);
    // Nothing else beside the destination: no staging or work directory.
    let mut names: Vec<String> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [disk.file_name().unwrap().to_str().unwrap(), "out", "src-root", "src-var"]);
    eprintln!("raw import: {:?}", info.timings);

    // A second import into the non-empty destination is refused.
    assert!(matches!(import_disk(&disk, &dest), Err(ParentError::DestinationNotEmpty(_))));
}

#[test]
fn qcow2_disk_with_linux_fs_type_root() {
    let t = tmp();
    let (root, var) = (make_root(t.path()), make_var(t.path()));
    // No DPS root type: the root is the Linux file system partition whose ext4 holds
    // /etc/os-release (/var has the same partition type).
    let raw = make_disk(t.path(), &root, Some(&var), "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "gpt");
    let qcow = t.path().join("disk.qcow2");
    sh(&format!("qemu-img convert -f raw -O qcow2 {} {}", raw.display(), qcow.display()));
    fs::remove_file(&raw).unwrap();
    let dest = t.path().join("out");
    let info = import_disk(&qcow, &dest).unwrap();
    check_no_leaks(t.path());
    assert_eq!(info.format, SourceFormat::Qcow2);
    assert_eq!(info.root.as_ref().unwrap().number, 2);
    assert_eq!(info.mounts.len(), 1);
    assert_same_tree(&root, Some(&var), &dest);
    eprintln!("qcow2 import: {:?}", info.timings);
}

#[test]
fn mbr_disk() {
    let t = tmp();
    let root = make_root(t.path());
    let disk = make_disk(t.path(), &root, None, "", "dos");
    let dest = t.path().join("out");
    let info = import_disk(&disk, &dest).unwrap();
    check_no_leaks(t.path());
    assert_eq!(info.partition_table, Some(TableKind::Mbr));
    assert_eq!(info.root.as_ref().unwrap().type_id, "0x83");
    // /var's PARTUUID is not on this disk: recorded, not fatal.
    assert!(info.skipped_mounts.iter().any(|s| s.starts_with("/var:")), "{:?}", info.skipped_mounts);
    let mut want = snapshot(&root);
    want.retain(|k, _| !k.starts_with("var/"));
    assert_eq!(snapshot(&dest), want);
}

#[test]
fn disk_without_linux_partition() {
    let t = tmp();
    let disk = t.path().join("esp-only.raw");
    sh(&format!(
        "truncate -s 8M {0} && printf 'label: gpt\\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\\n' | sfdisk -q --no-reread --no-tell-kernel {0} >/dev/null",
        disk.display()
    ));
    let dest = t.path().join("out");
    let e = import_disk(&disk, &dest).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ParentError::NoRootFs { .. }), "{e:?}");
    assert!(msg.contains("no partition has the x86-64 root or a Linux file system type"), "{msg}");
    assert!(msg.contains("partition 1 (EFI system"), "{msg}");
    assert!(!dest.exists());
    check_no_leaks(t.path());

    // A Linux partition whose ext4 is not a root tree.
    let t2 = tmp();
    let var = make_var(t2.path());
    let disk = make_disk(t2.path(), &var, None, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "gpt");
    let msg = import_disk(&disk, &t2.path().join("out")).unwrap_err().to_string();
    assert!(msg.contains("no Linux ext4 file system holds /etc/os-release"), "{msg}");

    // No partition table and no file system at all.
    let blank = t.path().join("blank.img");
    sh(&format!("truncate -s 4M {}", blank.display()));
    let e = import_disk(&blank, &dest).unwrap_err();
    assert!(matches!(e, ParentError::BadDisk { .. }) && e.to_string().contains("no GPT or MBR"), "{e}");
    // A GPT whose checksum is broken.
    let broken = t2.path().join("disk-gpt-36.raw");
    sh(&format!("printf 'X' | dd of={} bs=1 seek=600 conv=notrunc status=none", broken.display()));
    let e = import_disk(&broken, &dest).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    check_no_leaks(t2.path());
}

#[test]
fn corrupt_qcow2() {
    let t = tmp();
    let bad = t.path().join("bad.qcow2");
    let mut bytes = b"QFI\xfb".to_vec();
    bytes.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
    fs::write(&bad, bytes).unwrap();
    let dest = t.path().join("out");
    let e = import_disk(&bad, &dest).unwrap_err();
    assert!(matches!(e, ParentError::BadDisk { .. }), "{e:?}");
    assert!(e.to_string().contains("not a readable qcow2 image"), "{e}");
    assert!(!dest.exists());
    // A truncated qcow2: the header is fine, the data is gone.
    let root = make_root(t.path());
    let raw = make_disk(t.path(), &root, None, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "gpt");
    let q = t.path().join("trunc.qcow2");
    sh(&format!(
        "qemu-img convert -f raw -O qcow2 {} {} && truncate -s 300K {}",
        raw.display(),
        q.display(),
        q.display()
    ));
    let e = import_disk(&q, &dest).unwrap_err();
    assert!(matches!(e, ParentError::BadDisk { .. }), "{e:?}");
    // A tarball given as a disk.
    let tgz = t.path().join("root.tar.gz");
    sh(&format!("tar -C {} -czf {} .", root.display(), tgz.display()));
    assert!(import_disk(&tgz, &dest).unwrap_err().to_string().contains("compressed file"));
    assert!(!dest.exists());
    let names: Vec<String> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("kiln-")), "{names:?}");
    check_no_leaks(t.path());
}

#[test]
fn tarballs() {
    let t = tmp();
    let root = make_root(t.path());
    for (name, flag) in
        [("root.tar", ""), ("root.tar.gz", "-z"), ("root.tar.zst", "--zstd"), ("root.tar.xz", "-J")]
    {
        let tar = t.path().join(name);
        sh(&format!(
            "tar -C {} --numeric-owner --xattrs --xattrs-include='*' {flag} -cf {} .",
            root.display(),
            tar.display()
        ));
        let dest = t.path().join(format!("out-{name}"));
        let info = import_tarball(&tar, &dest).unwrap();
        assert_eq!(info.format, SourceFormat::Tarball);
        assert_eq!(info.os_release["ID"], "debian");
        assert_eq!(snapshot(&dest), snapshot(&root), "{name}");
        if name == "root.tar" {
            eprintln!("tar import: {:?}", info.timings);
        }
    }

    // Not a root tree.
    let notroot = t.path().join("notroot.tar");
    sh(&format!("tar -C {} -cf {} bin", root.display(), notroot.display()));
    let e = import_tarball(&notroot, &t.path().join("nr")).unwrap_err();
    assert!(
        matches!(e, ParentError::BadTarball { .. }) && e.to_string().contains("no /etc/os-release"),
        "{e}"
    );
    assert!(!t.path().join("nr").exists());
    // Not a tarball.
    let junk = t.path().join("junk.tar");
    fs::write(&junk, vec![7u8; 3000]).unwrap();
    assert!(matches!(import_tarball(&junk, &t.path().join("j")), Err(ParentError::BadTarball { .. })));
    check_no_leaks(t.path());
}

#[test]
fn hostile_tarballs_write_nothing_outside() {
    let t = tmp();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir_all(a.join("usr/lib")).unwrap();
    fs::write(a.join("usr/lib/os-release"), "ID=debian\n").unwrap();
    fs::create_dir_all(b.join("etc")).unwrap();
    fs::write(b.join("etc/os-release"), "ID=evil\n").unwrap();
    symlink(&outside, a.join("etc")).unwrap();

    // A symlink to outside, then a member written through it.
    let evil = t.path().join("evil.tar");
    sh(&format!(
        "tar -C {} -cf {} usr etc && tar -C {} -rf {} etc/os-release",
        a.display(),
        evil.display(),
        b.display(),
        evil.display()
    ));
    let e = import_tarball(&evil, &t.path().join("d1")).unwrap_err();
    assert!(matches!(e, ParentError::BadTarball { .. }), "{e:?}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // A `..` member.
    let dotdot = t.path().join("dotdot.tar");
    sh(&format!("cd {} && tar -cPf {} usr ../b/etc/os-release", a.display(), dotdot.display()));
    let e = import_tarball(&dotdot, &t.path().join("d2")).unwrap_err();
    assert!(e.to_string().contains("Member name contains '..'"), "{e}");
    assert!(!t.path().join("d2").exists());

    // Absolute members land inside the destination.
    let abs = t.path().join("abs.tar");
    sh(&format!("tar -cPf {} {}/etc/os-release", abs.display(), b.display()));
    let d3 = t.path().join("d3");
    let e = import_tarball(&abs, &d3);
    // Its only os-release is deep below the destination, so it is not a root tree either way.
    assert!(e.is_err());
    assert_eq!(fs::read_to_string(b.join("etc/os-release")).unwrap(), "ID=evil\n");
}

/// Not a test of its own: the body of the child process `killed_import_leaves_nothing` kills.
#[test]
fn import_child() {
    if let (Some(disk), Some(dest)) =
        (std::env::var_os("KILN_TEST_IMPORT_DISK"), std::env::var_os("KILN_TEST_IMPORT_DEST"))
    {
        import_disk(Path::new(&disk), Path::new(&dest)).unwrap();
    }
}

#[test]
fn killed_import_leaves_nothing() {
    let t = tmp();
    let (root, var) = (make_root(t.path()), make_var(t.path()));
    let raw = make_disk(t.path(), &root, Some(&var), "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "gpt");
    let qcow = t.path().join("disk.qcow2");
    sh(&format!("qemu-img convert -f raw -O qcow2 {} {}", raw.display(), qcow.display()));
    let dest = t.path().join("out");
    // Kill at several points: during conversion, while mounted and copying, after.
    let mut interrupted = 0;
    for delay_ms in [10u64, 20, 30, 45, 60, 80, 120, 200] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "import_child", "--test-threads=1"])
            .env("KILN_TEST_IMPORT_DISK", &qcow)
            .env("KILN_TEST_IMPORT_DEST", &dest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        check_no_leaks(t.path());
        if t.path().join(".out.kiln-partial").exists() {
            interrupted += 1;
        }
        let _ = fs::remove_dir_all(&dest);
    }
    eprintln!("{interrupted} of 8 kills landed inside an import");
    assert!(interrupted > 0, "no kill landed inside an import");
    // Whatever the killed runs left beside the destination, the next import cleans it up.
    import_disk(&qcow, &dest).unwrap();
    check_no_leaks(t.path());
    assert_same_tree(&root, Some(&var), &dest);
    let left: Vec<String> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("kiln-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
