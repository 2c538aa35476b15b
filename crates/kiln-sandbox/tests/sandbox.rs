//! End-to-end tests of the namespace sandbox. They need root (as kiln does), and build a tiny
//! root file system from the host's binaries for each session.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_host::{ExecOutput, ExecRequest, ExitStatus, FileKind, Host, HostErrorKind, WriteMode};
use kiln_sandbox::{
    KEPT_CAPABILITIES, Network, RootSpec, Sandbox, SandboxConfig, SandboxError, Session, testroot,
};
use tempfile::TempDir;

const HELPER: &str = env!("CARGO_BIN_EXE_kiln-sandbox-init");

fn config(root: RootSpec) -> SandboxConfig {
    let mut c = SandboxConfig::new(root);
    c.helper = HELPER.into();
    c.hostname = "kiln-test".into();
    c
}

/// A fresh test root and a session over it.
fn start() -> (TempDir, Session) {
    let dir = tempfile::tempdir().unwrap();
    testroot::build(dir.path()).unwrap();
    let session = Sandbox::start(config(RootSpec::Dir(dir.path().into()))).unwrap();
    (dir, session)
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn sh(host: &dyn Host, script: &str) -> ExecOutput {
    host.exec(&req(&["sh", "-c", script])).unwrap()
}

fn stdout(out: &ExecOutput) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mountinfo() -> Vec<String> {
    let mut lines: Vec<String> =
        fs::read_to_string("/proc/self/mountinfo").unwrap().lines().map(|l| l.to_string()).collect();
    lines.sort();
    lines
}

/// Host mounts added since `before` that touch `root`. (Only those: another project's test
/// running at the same time on a shared machine may mount something unrelated.)
fn leaked(before: &[String], root: &Path) -> Vec<String> {
    let root = root.to_str().unwrap();
    mountinfo().into_iter().filter(|l| !before.contains(l) && l.contains(root)).collect()
}

#[test]
fn exec_captures_stdout_stderr_and_exit_code() {
    let (_dir, s) = start();
    let out = sh(&s, "echo out; echo err >&2; exit 3");
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let ok = s.exec(&req(&["true"])).unwrap();
    assert!(ok.status.success());
    assert!(ok.stdout.is_empty() && ok.stderr.is_empty());

    // Megabytes on both pipes at once must not deadlock.
    let big = sh(&s, "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2; echo done >&2");
    assert!(big.status.success());
    assert_eq!(big.stdout.len(), 3_000_000);
    assert_eq!(big.stderr.len(), 2_000_005);
}

#[test]
fn exec_env_and_cwd() {
    let (_dir, s) = start();
    let out = sh(&s, "env | sort");
    let env = stdout(&out);
    assert!(env.contains("HOME=/root\n"), "{env}");
    assert!(env.contains("LANG=C.UTF-8\n"), "{env}");
    assert!(env.contains("DEBIAN_FRONTEND=noninteractive\n"), "{env}");
    assert!(env.contains("PATH=/usr/local/sbin:"), "{env}");
    assert!(!env.contains("CARGO"), "the host environment leaked in: {env}");

    let mut r = req(&["sh", "-c", "echo $HOME $FOO; pwd"]);
    r.env = vec![("HOME".into(), "/home/builder".into()), ("FOO".into(), "bar".into())];
    r.cwd = Some("/var/tmp".into());
    let out = s.exec(&r).unwrap();
    assert_eq!(stdout(&out), "/home/builder bar\n/var/tmp\n");

    let out = sh(&s, "pwd");
    assert_eq!(stdout(&out), "/\n");
    let out = sh(&s, "umask");
    assert_eq!(stdout(&out), "0022\n");
}

#[test]
fn exec_stdin() {
    let (_dir, s) = start();
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let mut r = req(&["cat"]);
    r.stdin = Some(data.clone());
    let out = s.exec(&r).unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, data);

    // No stdin: /dev/null.
    let out = s.exec(&req(&["cat"])).unwrap();
    assert!(out.status.success() && out.stdout.is_empty());

    // A step that ignores its stdin is fine too.
    let mut r = req(&["true"]);
    r.stdin = Some(vec![b'x'; 1_000_000]);
    assert!(s.exec(&r).unwrap().status.success());
}

#[test]
fn exec_errors() {
    let (_dir, s) = start();
    let e = s.exec(&req(&["no-such-program"])).unwrap_err();
    assert_eq!(e.kind, HostErrorKind::NotFound, "{e}");
    let e = s.exec(&req(&["/bin/nope"])).unwrap_err();
    assert_eq!(e.kind, HostErrorKind::NotFound, "{e}");
    let mut r = req(&["true"]);
    r.cwd = Some("/does/not/exist".into());
    let e = s.exec(&r).unwrap_err();
    assert_eq!(e.kind, HostErrorKind::NotFound, "{e}");
    assert!(e.message.contains("/does/not/exist"), "{e}");
    r.cwd = Some("relative".into());
    assert_eq!(s.exec(&r).unwrap_err().kind, HostErrorKind::InvalidPath);
    s.write_file("/noexec", b"#!/bin/sh\n", WriteMode::CreateNew, Some(0o644)).unwrap();
    assert_eq!(s.exec(&req(&["/noexec"])).unwrap_err().kind, HostErrorKind::PermissionDenied);
    // The session still works after errors.
    assert!(s.exec(&req(&["true"])).unwrap().status.success());
}

#[test]
fn namespaces_are_new() {
    let (_dir, s) = start();
    assert_eq!(stdout(&s.exec(&req(&["hostname"])).unwrap()), "kiln-test\n");
    // PID 1 of its own PID namespace, and /proc shows only that namespace.
    let out =
        s.exec(&req(&["bash", "-c", "echo $$; for p in /proc/[0-9]*; do echo ${p#/proc/}; done"])).unwrap();
    assert_eq!(stdout(&out), "1\n1\n");
    let out = sh(&s, "readlink /proc/1/exe");
    assert_eq!(stdout(&out), "/usr/bin/sh\n");
    // No network but loopback.
    let out = sh(&s, "ls /sys/class/net");
    assert_eq!(stdout(&out), "lo\n");
    let out = sh(&s, "cat /proc/net/dev");
    let ifaces: Vec<String> =
        stdout(&out).lines().skip(2).map(|l| l.split(':').next().unwrap().trim().to_string()).collect();
    assert_eq!(ifaces, vec!["lo".to_string()]);
    // ... and it is up (IFF_UP is bit 0 of the flags).
    let flags = stdout(&sh(&s, "cat /sys/class/net/lo/flags"));
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down");
    // Different namespaces from ours.
    for ns in ["mnt", "pid", "uts", "ipc", "net"] {
        let out = s.exec(&req(&["readlink", &format!("/proc/self/ns/{ns}")])).unwrap();
        let inside = stdout(&out).trim().to_string();
        let outside = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert!(!inside.is_empty());
        assert_ne!(inside, outside.to_string_lossy(), "{ns} namespace is shared with the host");
    }
    // The root is the image.
    assert_eq!(stdout(&sh(&s, "cat /etc/hostname")), "testroot\n");
    assert!(!s.network_allowed());
    assert!(s.describe().starts_with("namespace sandbox over /"));
}

#[test]
fn host_network_shares_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    testroot::build(dir.path()).unwrap();
    let mut c = config(RootSpec::Dir(dir.path().into()));
    c.network = Network::Host;
    let s = Sandbox::start(c).unwrap();
    assert!(s.network_allowed());
    let inside = stdout(&s.exec(&req(&["readlink", "/proc/self/ns/net"])).unwrap());
    assert_eq!(inside.trim(), fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy());
    s.shutdown().unwrap();
}

#[test]
fn host_network_brings_the_host_resolver_without_changing_the_image() {
    let host_resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
    // systemd-resolved's stub symlink (bookworm's default), and a plain file.
    for stub in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        testroot::build(dir.path()).unwrap();
        let etc = dir.path().join("etc/resolv.conf");
        let _ = fs::remove_file(&etc);
        if stub {
            std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &etc).unwrap();
        } else {
            fs::write(&etc, "nameserver 192.0.2.1\n").unwrap();
        }
        let mut c = config(RootSpec::Dir(dir.path().into()));
        c.network = Network::Host;
        let s = Sandbox::start(c).unwrap();
        assert_eq!(s.read_file("/etc/resolv.conf").unwrap(), host_resolv, "stub={stub}");
        // /run is the sandbox's own tmpfs: nothing written there reaches the image.
        assert!(sh(&s, "touch /run/marker").status.success());
        s.shutdown().unwrap();
        assert!(!dir.path().join("run/marker").exists() && !dir.path().join("run/systemd").exists());
        if !stub {
            assert_eq!(fs::read(&etc).unwrap(), b"nameserver 192.0.2.1\n", "the image's file is untouched");
        }
    }
}

#[test]
fn sys_and_proc_sys_are_read_only() {
    let (_dir, s) = start();
    let out = sh(&s, "{ touch /sys/kiln; echo 1 > /proc/sys/vm/drop_caches; } 2>&1");
    assert!(!out.status.success());
    let text = stdout(&out);
    assert_eq!(text.matches("Read-only file system").count(), 2, "{text}");
    let out = sh(&s, "cat /proc/self/mountinfo");
    let sys = stdout(&out).lines().find(|l| l.split(' ').nth(4) == Some("/sys")).unwrap().to_string();
    assert!(sys.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "{sys}");
    // /dev works.
    let out =
        sh(&s, "echo x > /dev/null && head -c 4 /dev/urandom | wc -c && ls /dev/pts/ptmx /dev/shm /dev/fd/");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn timeout_kills_the_whole_tree() {
    let (dir, s) = start();
    let mut r = req(&["sh", "-c", "(sleep 2; touch /late-marker) & sleep 1000"]);
    r.timeout = Some(Duration::from_millis(300));
    let t = Instant::now();
    let out = s.exec(&r).unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    assert_eq!(out.status.code(), 124);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A step that leaves a background child behind: the child dies with the step.
    let t = Instant::now();
    let out = sh(&s, "(sleep 2; touch /orphan-marker) > /dev/null 2>&1 & echo started");
    assert!(out.status.success());
    assert_eq!(stdout(&out), "started\n");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The background child kept stdout open: exec must still return promptly.
    let t = Instant::now();
    let out = sh(&s, "sleep 1000 & echo bg");
    assert_eq!(stdout(&out), "bg\n");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    std::thread::sleep(Duration::from_millis(2500));
    assert!(!dir.path().join("late-marker").exists());
    assert!(!dir.path().join("orphan-marker").exists());
    assert!(sh(&s, "ls /late-marker /orphan-marker").status.code() != 0);
}

/// Everything under `dir`: relative path -> (kind, mode, uid, gid, content).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            fs::read(&p).unwrap()
        } else if m.file_type().is_symlink() {
            fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
        } else {
            Vec::new()
        };
        out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), (m.mode(), m.uid(), m.gid(), content));
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

#[test]
fn symlinks_and_dotdot_never_leave_the_root() {
    let (dir, s) = start();
    // The host directory the planted links point at; not under /tmp, so it is a plain path
    // in the image too, not hidden by the sandbox's private /tmp.
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    let out = outside.path().to_str().unwrap().to_string();
    fs::write(outside.path().join("sentinel"), b"host").unwrap();
    fs::set_permissions(outside.path().join("sentinel"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(outside.path().join("sub")).unwrap();
    let before = snapshot(outside.path());

    let root = dir.path();
    std::os::unix::fs::symlink(&out, root.join("abs")).unwrap();
    let ups = "../".repeat(12);
    std::os::unix::fs::symlink(format!("{ups}{}", out.trim_start_matches('/')), root.join("rel")).unwrap();
    // /etc itself redirected to the host directory (as the brief's `/etc -> /host-escape-dir`).
    fs::rename(root.join("etc"), root.join("etc.real")).unwrap();
    std::os::unix::fs::symlink(&out, root.join("etc")).unwrap();
    fs::create_dir(root.join("home/builder/deep")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../{ups}{}", out.trim_start_matches('/')),
        root.join("home/builder/deep/up"),
    )
    .unwrap();

    let dotdot = format!("/../../../../..{out}");
    for base in ["/abs", "/rel", "/etc", "/home/builder/deep/up", dotdot.as_str()] {
        let _ = s.write_file(&format!("{base}/sentinel"), b"pwned", WriteMode::Truncate, None);
        let _ = s.write_file(&format!("{base}/new-file"), b"pwned", WriteMode::CreateNew, None);
        let _ = s.write_file(&format!("{base}/sentinel"), b"more", WriteMode::Append, None);
        let _ = s.create_dir_all(&format!("{base}/sub/created/deeper"), None);
        let _ = s.copy_file("/etc.real/passwd", &format!("{base}/copied"));
        let _ = s.copy_file(&format!("{base}/sentinel"), "/stolen");
        let _ = s.write_file("/to-move", b"x", WriteMode::Truncate, None);
        let _ = s.rename("/to-move", &format!("{base}/moved"));
        let _ = s.rename(&format!("{base}/sentinel"), "/taken");
        let _ = s.symlink("/etc.real/passwd", &format!("{base}/link"));
        let _ = s.set_permissions(&format!("{base}/sentinel"), 0o4777);
        let _ = s.set_permissions(&format!("{base}/sub"), 0o777);
        let _ = s.set_owner(&format!("{base}/sentinel"), Some(4242), Some(4343));
        let _ = s.set_owner(&format!("{base}/sub"), Some(4242), Some(4343));
        let _ = s.remove_file(&format!("{base}/sentinel"));
        let _ = s.remove_dir(&format!("{base}/sub"), true);
        let _ = sh(&s, &format!("echo pwned > {base}/sentinel; touch {base}/by-exec; rm -f {base}/sentinel"));
    }
    // Reading through the links reads the image, never the host.
    assert!(s.read_file("/abs/sentinel").map(|d| d != b"host").unwrap_or(true));
    assert_eq!(snapshot(outside.path()), before, "a write escaped the root");
    // What the links resolved to was created inside the image.
    assert!(root.join(out.trim_start_matches('/')).join("by-exec").is_file());
    s.shutdown().unwrap();
    assert_eq!(snapshot(outside.path()), before, "a write escaped the root");
}

#[test]
fn relative_paths_are_invalid() {
    let (_dir, s) = start();
    assert_eq!(s.read_file("etc/passwd").unwrap_err().kind, HostErrorKind::InvalidPath);
    assert_eq!(
        s.write_file("x", b"", WriteMode::Truncate, None).unwrap_err().kind,
        HostErrorKind::InvalidPath
    );
    assert_eq!(s.rename("/etc/passwd", "x").unwrap_err().kind, HostErrorKind::InvalidPath);
    assert_eq!(s.metadata("").unwrap_err().kind, HostErrorKind::InvalidPath);
    // `..` resolves inside the root.
    assert_eq!(s.read_file("/../../etc/../etc/hostname").unwrap(), b"testroot\n");
}

#[test]
fn file_operations() {
    let (dir, s) = start();
    let root = dir.path();

    // write_file / read_file
    s.write_file("/f", b"one", WriteMode::CreateNew, Some(0o640)).unwrap();
    assert_eq!(s.read_file("/f").unwrap(), b"one");
    assert_eq!(fs::metadata(root.join("f")).unwrap().mode() & 0o7777, 0o640);
    let e = s.write_file("/f", b"x", WriteMode::CreateNew, None).unwrap_err();
    assert_eq!(e.kind, HostErrorKind::AlreadyExists);
    s.write_file("/f", b"+two", WriteMode::Append, None).unwrap();
    assert_eq!(s.read_file("/f").unwrap(), b"one+two");
    s.write_file("/f", b"three", WriteMode::Truncate, Some(0o600)).unwrap();
    assert_eq!(s.read_file("/f").unwrap(), b"three");
    assert_eq!(s.metadata("/f").unwrap().mode, 0o640, "mode applies only to a file the call creates");
    s.write_file("/dflt", b"", WriteMode::Truncate, None).unwrap();
    assert_eq!(s.metadata("/dflt").unwrap().mode, 0o644);
    assert_eq!(s.read_file("/nope").unwrap_err().kind, HostErrorKind::NotFound);
    assert_eq!(s.read_file("/etc").unwrap_err().kind, HostErrorKind::IsADirectory);
    assert_eq!(
        s.write_file("/nodir/f", b"", WriteMode::Truncate, None).unwrap_err().kind,
        HostErrorKind::NotFound
    );
    assert_eq!(
        s.write_file("/f/g", b"", WriteMode::Truncate, None).unwrap_err().kind,
        HostErrorKind::NotADirectory
    );

    // create_dir_all
    s.create_dir_all("/a/b/c", Some(0o700)).unwrap();
    s.create_dir_all("/a/b/c", None).unwrap();
    assert_eq!(s.metadata("/a/b/c").unwrap().mode, 0o700);
    assert_eq!(s.metadata("/a/b/c").unwrap().kind, FileKind::Dir);
    s.create_dir_all("/d", None).unwrap();
    assert_eq!(s.metadata("/d").unwrap().mode, 0o755);
    assert_eq!(s.create_dir_all("/f", None).unwrap_err().kind, HostErrorKind::AlreadyExists);

    // metadata
    let m = s.metadata("/f").unwrap();
    assert_eq!((m.kind, m.size, m.uid, m.gid), (FileKind::File, 5, 0, 0));
    s.symlink("/f", "/link").unwrap();
    assert_eq!(s.metadata("/link").unwrap().kind, FileKind::Symlink);
    assert_eq!(s.metadata("/dev/null").unwrap().kind, FileKind::Other);
    assert_eq!(s.metadata("/missing").unwrap_err().kind, HostErrorKind::NotFound);

    // list_dir
    s.write_file("/a/file", b"", WriteMode::Truncate, None).unwrap();
    s.symlink("b", "/a/sl").unwrap();
    let names: Vec<(String, FileKind)> =
        s.list_dir("/a").unwrap().into_iter().map(|e| (e.name, e.kind)).collect();
    assert_eq!(
        names,
        vec![("b".into(), FileKind::Dir), ("file".into(), FileKind::File), ("sl".into(), FileKind::Symlink)]
    );
    assert_eq!(s.list_dir("/f").unwrap_err().kind, HostErrorKind::NotADirectory);
    assert_eq!(s.list_dir("/zz").unwrap_err().kind, HostErrorKind::NotFound);

    // symlink / read_link
    s.symlink("../relative/target", "/rl").unwrap();
    assert_eq!(s.read_link("/rl").unwrap(), "../relative/target");
    assert_eq!(fs::read_link(root.join("rl")).unwrap(), Path::new("../relative/target"));
    assert_eq!(s.symlink("/x", "/rl").unwrap_err().kind, HostErrorKind::AlreadyExists);
    assert_eq!(s.read_link("/f").unwrap_err().kind, HostErrorKind::Other);
    assert_eq!(s.read_link("/none").unwrap_err().kind, HostErrorKind::NotFound);

    // copy_file
    s.set_permissions("/f", 0o751).unwrap();
    s.copy_file("/f", "/a/copy").unwrap();
    assert_eq!(s.read_file("/a/copy").unwrap(), b"three");
    assert_eq!(s.metadata("/a/copy").unwrap().mode, 0o751);
    assert_eq!(s.copy_file("/none", "/x").unwrap_err().kind, HostErrorKind::NotFound);

    // rename (replaces a file at `to`), including out of the sandbox's private /tmp
    s.write_file("/r1", b"r1", WriteMode::Truncate, None).unwrap();
    s.rename("/r1", "/a/copy").unwrap();
    assert_eq!(s.read_file("/a/copy").unwrap(), b"r1");
    assert_eq!(s.metadata("/r1").unwrap_err().kind, HostErrorKind::NotFound);
    assert_eq!(s.rename("/r1", "/r2").unwrap_err().kind, HostErrorKind::NotFound);
    s.write_file("/tmp/dl", b"downloaded", WriteMode::Truncate, Some(0o755)).unwrap();
    s.rename("/tmp/dl", "/usr/bin/dl").unwrap();
    assert_eq!(fs::read(root.join("usr/bin/dl")).unwrap(), b"downloaded");
    assert_eq!(fs::metadata(root.join("usr/bin/dl")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(s.metadata("/tmp/dl").unwrap_err().kind, HostErrorKind::NotFound);

    // set_permissions / set_owner (never following a symlink)
    s.set_permissions("/f", 0o4755).unwrap();
    assert_eq!(s.metadata("/f").unwrap().mode, 0o4755);
    s.set_permissions("/link", 0o600).unwrap();
    assert_eq!(s.metadata("/f").unwrap().mode, 0o4755, "followed the symlink");
    s.set_owner("/link", Some(4242), Some(4343)).unwrap();
    let (l, f) = (s.metadata("/link").unwrap(), s.metadata("/f").unwrap());
    assert_eq!((l.uid, l.gid, f.uid, f.gid), (4242, 4343, 0, 0));
    s.set_owner("/f", None, Some(5)).unwrap();
    assert_eq!((s.metadata("/f").unwrap().uid, s.metadata("/f").unwrap().gid), (0, 5));
    assert_eq!(fs::metadata(root.join("f")).unwrap().gid(), 5);
    assert_eq!(s.set_permissions("/none", 0o600).unwrap_err().kind, HostErrorKind::NotFound);
    assert_eq!(s.set_owner("/none", Some(1), None).unwrap_err().kind, HostErrorKind::NotFound);

    // remove_file / remove_dir
    assert_eq!(s.remove_file("/a").unwrap_err().kind, HostErrorKind::IsADirectory);
    s.remove_file("/link").unwrap();
    assert_eq!(s.remove_file("/link").unwrap_err().kind, HostErrorKind::NotFound);
    assert_eq!(s.remove_dir("/a", false).unwrap_err().kind, HostErrorKind::DirectoryNotEmpty);
    s.remove_dir("/d", false).unwrap();
    s.remove_dir("/a", true).unwrap();
    assert!(!root.join("a").exists());
    assert_eq!(s.remove_dir("/a", true).unwrap_err().kind, HostErrorKind::NotFound);
}

#[test]
fn accounts_come_from_the_image() {
    let (_dir, s) = start();
    assert_eq!(s.lookup_user("root").unwrap(), 0);
    assert_eq!(s.lookup_user("builder").unwrap(), testroot::BUILDER_UID);
    assert_eq!(s.lookup_group("builders").unwrap(), testroot::BUILDER_GID);
    assert_eq!(s.lookup_group("tty").unwrap(), 5);
    assert_eq!(s.lookup_user("1234").unwrap(), 1234);
    assert_eq!(s.lookup_group("77").unwrap(), 77);
    // A user the host has but the image does not.
    assert!(fs::read_to_string("/etc/passwd").unwrap().lines().any(|l| l.starts_with("bin:")));
    assert_eq!(s.lookup_user("bin").unwrap_err().kind, HostErrorKind::UnknownAccount);
    assert_eq!(s.lookup_group("no-such-group").unwrap_err().kind, HostErrorKind::UnknownAccount);
    s.remove_file("/etc/group").unwrap();
    assert_eq!(s.lookup_group("builders").unwrap_err().kind, HostErrorKind::UnknownAccount);
}

#[test]
fn overlay_writes_land_in_upper() {
    let base = tempfile::tempdir().unwrap();
    testroot::build(base.path()).unwrap();
    let mid = tempfile::tempdir().unwrap();
    fs::create_dir(mid.path().join("etc")).unwrap();
    fs::write(mid.path().join("etc/layer"), b"middle").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (upper, work) = (scratch.path().join("upper"), scratch.path().join("work"));
    let before = snapshot(base.path());
    let before_mid = snapshot(mid.path());

    let c = config(RootSpec::Overlay {
        lower: vec![mid.path().into(), base.path().into()],
        upper: upper.clone(),
        work: work.clone(),
    });
    let s = Sandbox::start(c).unwrap();
    assert_eq!(s.read_file("/etc/layer").unwrap(), b"middle");
    s.write_file("/etc/layer", b"top", WriteMode::Truncate, None).unwrap();
    s.write_file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n", WriteMode::Append, None).unwrap();
    s.write_file("/new", b"new", WriteMode::CreateNew, None).unwrap();
    s.remove_file("/etc/hostname").unwrap();
    let out = sh(&s, "echo from-step > /usr/step-output && cat /etc/layer");
    assert_eq!(stdout(&out), "top");
    assert!(s.describe().contains("overlay"));
    s.shutdown().unwrap();

    assert_eq!(snapshot(base.path()), before, "a lower layer changed");
    assert_eq!(snapshot(mid.path()), before_mid, "a lower layer changed");
    assert_eq!(fs::read(upper.join("etc/layer")).unwrap(), b"top");
    assert_eq!(fs::read(upper.join("new")).unwrap(), b"new");
    assert_eq!(fs::read(upper.join("usr/step-output")).unwrap(), b"from-step\n");
    assert!(fs::read_to_string(upper.join("etc/passwd")).unwrap().contains("builder"));
    // A deletion is a whiteout (a 0:0 character device) in the upper layer.
    let wh = fs::symlink_metadata(upper.join("etc/hostname")).unwrap();
    assert_eq!(wh.rdev(), 0);
    assert!(!upper.join("tmp").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false));
}

#[test]
fn reboot_restarts_with_files_kept() {
    let (_dir, s) = start();
    s.write_file("/kept", b"yes", WriteMode::Truncate, None).unwrap();
    s.write_file("/tmp/scratch", b"gone", WriteMode::Truncate, None).unwrap();
    let before = s.helper_pid().unwrap();
    s.reboot().unwrap();
    let after = s.helper_pid().unwrap();
    assert_ne!(before, after);
    assert!(!Path::new(&format!("/proc/{before}")).exists(), "the old helper is still running");
    assert_eq!(s.read_file("/kept").unwrap(), b"yes");
    assert_eq!(s.read_file("/tmp/scratch").unwrap_err().kind, HostErrorKind::NotFound);
    assert!(s.exec(&req(&["true"])).unwrap().status.success());
}

#[test]
fn no_mounts_leak_to_the_host() {
    let before = mountinfo();
    let dir = tempfile::tempdir().unwrap();
    testroot::build(dir.path()).unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    let s = Sandbox::start(config(RootSpec::Dir(dir.path().into()))).unwrap();
    assert!(sh(&s, "true").status.success());
    assert!(!mountinfo().iter().any(|l| l.contains(&root)), "a sandbox mount is visible on the host");
    assert_eq!(leaked(&before, dir.path()), Vec::<String>::new());
    s.reboot().unwrap();
    s.shutdown().unwrap();

    // Ended by drop, while a step runs.
    let s = Arc::new(Sandbox::start(config(RootSpec::Dir(dir.path().into()))).unwrap());
    let s2 = Arc::clone(&s);
    let t = std::thread::spawn(move || {
        let _ = s2.exec(&req(&["sleep", "1000"]));
    });
    std::thread::sleep(Duration::from_millis(200));
    let helper = s.helper_pid().unwrap();
    // SAFETY: plain kill(2) of the helper, as if kiln's process group had been killed.
    unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) };
    t.join().unwrap();
    drop(s);
    assert_eq!(leaked(&before, dir.path()), Vec::<String>::new());
    assert!(!mountinfo().iter().any(|l| l.contains(&root)));
}

fn agent_of(helper: u32) -> u32 {
    let children = fs::read_to_string(format!("/proc/{helper}/task/{helper}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_killed_helper_takes_the_sandbox_with_it() {
    let (dir, s) = start();
    let helper = s.helper_pid().unwrap();
    let agent = agent_of(helper);
    let s = Arc::new(s);
    let s2 = Arc::clone(&s);
    let t = std::thread::spawn(move || s2.exec(&req(&["sh", "-c", "(sleep 1; touch /late) & sleep 1000"])));
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: plain kill(2) of the helper.
    unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) };
    let started = Instant::now();
    while Path::new(&format!("/proc/{agent}")).exists() {
        assert!(started.elapsed() < Duration::from_secs(5), "the agent outlived its helper");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = t.join().unwrap().unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Target, "{err}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!dir.path().join("late").exists());
    assert_eq!(s.read_file("/etc/hostname").unwrap_err().kind, HostErrorKind::Target);
}

#[test]
fn capabilities_are_dropped() {
    let (_dir, s) = start();
    let status = stdout(&sh(&s, "cat /proc/self/status"));
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let kept: u64 = KEPT_CAPABILITIES.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b);
    assert_eq!(field("CapBnd:"), kept, "{status}");
    assert_eq!(field("CapEff:"), kept, "{status}");
    assert_eq!(field("CapPrm:"), kept, "{status}");
    assert_eq!(field("CapInh:"), 0);
    assert_eq!(field("CapAmb:"), 0);
    assert_eq!(field("NoNewPrivs:"), 0, "no_new_privs would break sudo");
    let sys_admin = 1u64 << 21;
    assert_eq!(kept & sys_admin, 0);
}

#[test]
fn concurrent_use_from_threads() {
    let (_dir, s) = start();
    let s = Arc::new(s);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for j in 0..5 {
                    let out = sh(&*s, &format!("echo {i}-{j}"));
                    assert_eq!(stdout(&out), format!("{i}-{j}\n"));
                    s.write_file(&format!("/t{i}"), b"x", WriteMode::Append, None).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..4 {
        assert_eq!(s.read_file(&format!("/t{i}")).unwrap(), b"xxxxx");
    }
}

#[test]
fn start_errors_are_typed() {
    let e = Sandbox::start(config(RootSpec::Dir("/no/such/root".into()))).unwrap_err();
    assert!(matches!(e, SandboxError::Config(_)), "{e}");
    assert!(e.to_string().contains("/no/such/root"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(RootSpec::Dir(dir.path().into()));
    c.helper = "/no/such/helper".into();
    let e = Sandbox::start(c).unwrap_err();
    assert!(matches!(e, SandboxError::Spawn { .. }), "{e}");

    // A helper that does not call init_main_if_requested().
    let mut c = config(RootSpec::Dir(dir.path().into()));
    c.helper = "/bin/true".into();
    let e = Sandbox::start(c).unwrap_err();
    assert!(matches!(e, SandboxError::Agent(_)), "{e}");
    assert!(e.to_string().contains("init_main_if_requested"), "{e}");

    let e = Sandbox::start(config(RootSpec::Overlay {
        lower: vec![],
        upper: dir.path().join("u"),
        work: dir.path().join("w"),
    }))
    .unwrap_err();
    assert!(matches!(e, SandboxError::Config(_)), "{e}");
}

fn is_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for its new parent to reap it has no live process left.
        Ok(stat) => stat.rsplit(')').next().unwrap().trim_start().starts_with('Z'),
    }
}

/// The stand-in for kiln in `a_killed_kiln_leaves_nothing_behind`: that test re-runs this test
/// binary with only this test selected and `KILN_HOLD_ROOT` set. Otherwise it does nothing.
#[test]
fn hold_session_child() {
    let Ok(root) = std::env::var("KILN_HOLD_ROOT") else {
        return;
    };
    let session = Sandbox::start(config(RootSpec::Dir(PathBuf::from(&root)))).unwrap();
    // Outside the root, next to it: the file is written by this process on the host.
    fs::write(format!("{root}.helper-pid"), session.helper_pid().unwrap().to_string()).unwrap();
    let _ = session.exec(&req(&["sh", "-c", "(sleep 1; touch /late-marker) & sleep 1000"]));
    panic!("the step ended although it never ends");
}

#[test]
fn a_killed_kiln_leaves_nothing_behind() {
    let before = mountinfo();
    let dir = tempfile::tempdir().unwrap();
    testroot::build(dir.path()).unwrap();
    let pid_file = PathBuf::from(format!("{}.helper-pid", dir.path().display()));
    let mut kiln = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_session_child", "--test-threads=1"])
        .env("KILN_HOLD_ROOT", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let helper: u32 = loop {
        if let Ok(pid) = fs::read_to_string(&pid_file)
            && let Ok(pid) = pid.trim().parse()
        {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the stand-in kiln did not start a session");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = fs::remove_file(&pid_file);
    let agent = agent_of(helper);
    std::thread::sleep(Duration::from_millis(300));
    kiln.kill().unwrap();
    kiln.wait().unwrap();
    let started = Instant::now();
    while !(is_gone(helper) && is_gone(agent)) {
        assert!(started.elapsed() < Duration::from_secs(5), "the sandbox outlived kiln");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!dir.path().join("late-marker").exists(), "a step process outlived kiln");
    assert_eq!(leaked(&before, dir.path()), Vec::<String>::new());
}

/// Host PIDs of processes whose command line is exactly `argv` (every PID namespace is visible
/// from the host's /proc).
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted) && !is_gone(*pid))
        .collect()
}

#[test]
fn a_cancel_hook_interrupts_a_running_step_and_leaves_no_process() {
    let before = mountinfo();
    let (dir, s) = start();
    let s = Arc::new(s);
    let helper = s.helper_pid().unwrap();
    let agent = agent_of(helper);
    let token = kiln_host::Cancel::new();
    let interrupter = s.interrupter();
    let _guard = token.on_cancel(move || interrupter.interrupt());
    let s2 = Arc::clone(&s);
    // A marker no other test uses, so the process check below cannot see someone else's.
    let step = std::thread::spawn(move || s2.exec(&req(&["sh", "-c", "sleep 3271 & sleep 3271"])));
    let started = Instant::now();
    while processes_running(&["sleep", "3271"]).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "the step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancelled = Instant::now();
    token.cancel();
    let err = step.join().unwrap().unwrap_err();
    let took = cancelled.elapsed();
    assert!(took < Duration::from_secs(3), "exec returned {took:?} after the cancel");
    assert_eq!(err.kind, HostErrorKind::Target, "{err}");
    assert!(err.message.contains("interrupted"), "{err}");
    assert!(s.is_interrupted());
    // Later requests fail at once, and a reboot does not bring the session back.
    assert!(s.read_file("/etc/passwd").unwrap_err().message.contains("interrupted"));
    assert!(s.reboot().is_err());
    let s = Arc::into_inner(s).unwrap();
    assert!(matches!(s.shutdown(), Err(SandboxError::Interrupted)));
    assert!(is_gone(helper) && is_gone(agent), "the helper or the agent outlived the interrupt");
    assert_eq!(processes_running(&["sleep", "3271"]), Vec::<u32>::new(), "a step process outlived it");
    assert_eq!(leaked(&before, dir.path()), Vec::<String>::new());
}
