//! The helper and the agent: the code that runs inside the re-executed helper process.
//!
//! Process tree of one session (host PID namespace on the left):
//!
//! ```text
//! kiln ── helper (unshares namespaces, forks, waits)
//!           └── agent  (PID 1 of the sandbox PID namespace, pivoted into the root)
//!                 └── step (PID 1 of a nested PID namespace, one per exec)
//!                       └── whatever the step spawns
//! ```
//!
//! Everything here runs in a single-threaded process, which is what makes `fork`/`clone`
//! without `exec` sound.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability};
use kiln_host::{DirEntry, ExitStatus, FileKind, HostError, HostErrorKind, Metadata, WriteMode};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, clone, unshare};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal, kill};
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, fchdir, fork, pivot_root, sethostname, setsid};

use crate::proto::{self, Init, Ready, Reply, Request, Response};
use crate::{Network, RootSpec};

/// Capabilities a build step keeps in its bounding set: Docker's default set. Everything else
/// (SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_PTRACE, SYS_BOOT, SYS_TIME, NET_ADMIN, MAC_ADMIN, ...)
/// is dropped before the agent serves its first request.
pub const KEPT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Host device nodes bind-mounted into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Parts of `/proc` a step could use to reach the host kernel; remounted read-only.
const PROC_READONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"];

/// Stack of the cloned step process; it only runs a few syscalls before `execve`.
const CLONE_STACK: usize = 256 * 1024;

/// The agent's PID as the helper sees it, for the helper's SIGTERM handler.
static AGENT_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_term(_: libc::c_int) {
    let pid = AGENT_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // kill(2) is async-signal-safe; the agent is our unreaped child, so the PID is its.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn errno_msg(what: &str, e: Errno) -> String {
    let hint = match e {
        Errno::EPERM => {
            "; hint: the sandbox needs root (CAP_SYS_ADMIN in the initial user namespace): run kiln as root, \
             or in a container started with --privileged"
        }
        Errno::ENOSPC => "; hint: a namespace limit was reached (see /proc/sys/user/max_*_namespaces)",
        _ => "",
    };
    format!("{what}: {} ({}){hint}", e.desc(), e)
}

/// Entry point of the helper process; never returns.
pub(crate) fn helper_main(fd: &str) -> ! {
    let Ok(raw) = fd.parse::<RawFd>() else {
        eprintln!("kiln-sandbox helper: bad socket fd argument {fd:?}");
        std::process::exit(2);
    };
    if fcntl(
        // SAFETY: `raw` is only borrowed for this call; ownership is taken just below.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
        FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
    )
    .is_err()
    {
        eprintln!(
            "kiln-sandbox helper: fd {raw} is not open; start the helper through kiln_sandbox::Sandbox"
        );
        std::process::exit(2);
    }
    // SAFETY: the parent passed us this socket as our only copy of it; we own it from here on.
    let mut sock = unsafe { UnixStream::from_raw_fd(raw) };
    let init: Init = match proto::recv(&mut sock) {
        Ok(init) => init,
        Err(e) => {
            eprintln!("kiln-sandbox helper: reading the start-up frame: {e}");
            std::process::exit(2);
        }
    };
    let fail = |sock: &mut UnixStream, msg: String| -> ! {
        let _ = proto::send(sock, &Ready::Err(msg));
        std::process::exit(1);
    };

    let threads = fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    if threads != 1 {
        fail(
            &mut sock,
            format!(
                "the sandbox helper has {threads} threads, so forking is unsafe; \
                 call kiln_sandbox::init_main_if_requested() first thing in main, before any thread starts"
            ),
        );
    }

    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if init.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        fail(&mut sock, errno_msg(&format!("unshare({flags:?})"), e));
    }
    // A private cgroup namespace only hides the host's cgroup paths; not having one is fine.
    let _ = unshare(CloneFlags::CLONE_NEWCGROUP);

    // SIGTERM, SIGINT and SIGHUP wait until the helper's handler is in place.
    let mut term = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        term.add(sig);
    }
    let _ = signal::sigprocmask(signal::SigmaskHow::SIG_BLOCK, Some(&term), None);
    // SAFETY: this process is single-threaded (checked above), so the child may run any code.
    match unsafe { fork() } {
        Err(e) => fail(&mut sock, errno_msg("fork() of the sandbox agent", e)),
        Ok(ForkResult::Child) => agent_main(sock, &init),
        Ok(ForkResult::Parent { child }) => {
            drop(sock);
            AGENT_PID.store(child.as_raw(), Ordering::SeqCst);
            let action =
                SigAction::new(SigHandler::Handler(forward_term), SaFlags::SA_RESTART, SigSet::empty());
            for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
                // SAFETY: the handler only calls kill(2), which is async-signal-safe.
                let _ = unsafe { signal::sigaction(sig, &action) };
            }
            let _ = signal::sigprocmask(signal::SigmaskHow::SIG_UNBLOCK, Some(&term), None);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(_) => std::process::exit(1),
                }
            }
        }
    }
}

fn agent_main(mut sock: UnixStream, init: &Init) -> ! {
    // (getppid() cannot tell whether the helper died before this: our parent lives outside our
    // PID namespace, so it always reads 0. The socket is the backstop: kiln still holds it.)
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = signal::sigprocmask(signal::SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Err(msg) = setup(init) {
        let _ = proto::send(&mut sock, &Ready::Err(msg));
        std::process::exit(1);
    }
    if proto::send(&mut sock, &Ready::Ok(())).is_err() {
        std::process::exit(1);
    }
    serve(sock)
}

// ---------------------------------------------------------------------------------------------
// Setup: mounts, pivot_root, hostname, capabilities.

fn sys<T>(what: impl FnOnce() -> String, r: nix::Result<T>) -> Result<T, String> {
    r.map_err(|e| errno_msg(&what(), e))
}

/// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`), attachable with
/// [`attach`] after the host root is gone. (A plain bind mount cannot do this: its source must
/// be reachable in the caller's mount tree.)
fn clone_tree(path: &str, recursive: bool) -> Result<OwnedFd, String> {
    use rustix::mount::OpenTreeFlags as F;
    let mut flags = F::OPEN_TREE_CLONE | F::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= F::AT_RECURSIVE;
    }
    rustix::mount::open_tree(rustix::fs::CWD, path, flags).map_err(|e| {
        errno_msg(&format!("open_tree({path}, OPEN_TREE_CLONE)"), Errno::from_raw(e.raw_os_error()))
    })
}

fn attach(tree: &OwnedFd, target: &str) -> Result<(), String> {
    rustix::mount::move_mount(
        tree,
        "",
        rustix::fs::CWD,
        target,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| errno_msg(&format!("move_mount onto {target}"), Errno::from_raw(e.raw_os_error())))
}

fn ensure_dir(path: &str, mode: u32) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(()),
        Err(_) => fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(|e| format!("mkdir {path} in the root: {e}")),
    }
}

fn do_mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    sys(
        || {
            format!(
                "mount {} on {target} (type {}, {flags:?})",
                source.unwrap_or("none"),
                fstype.unwrap_or("none")
            )
        },
        mount(source, target, fstype, flags, data),
    )
}

/// Mount a fresh procfs of the caller's PID namespace on /proc, with the parts that reach the
/// host kernel read-only. Returns what failed and its errno (the step's child reports the errno).
fn mount_proc() -> Result<(), (String, Errno)> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>)
        .map_err(|e| ("mount proc on /proc".into(), e))?;
    for p in PROC_READONLY {
        if fs::symlink_metadata(p).is_ok() {
            mount(Some(*p), *p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| (format!("bind {p}"), e))?;
            let ro = MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV;
            mount(None::<&str>, *p, None::<&str>, ro, None::<&str>)
                .map_err(|e| (format!("remount {p} read-only"), e))?;
        }
    }
    Ok(())
}

fn setup(init: &Init) -> Result<(), String> {
    // Nothing mounted from here on may propagate to the host.
    do_mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;

    // Host resources, cloned as detached mounts before the host root goes away and attached
    // after pivot_root, so no path inside the image is ever resolved against the host root.
    let mut devices = Vec::new();
    for name in DEVICES {
        match clone_tree(&format!("/dev/{name}"), false) {
            Ok(fd) => devices.push((*name, fd)),
            Err(_) if *name == "tty" => {} // a host without a tty device: the sandbox has none
            Err(e) => return Err(e),
        }
    }
    let host_sys = clone_tree("/sys", true)?;
    // With the host's network, steps need its resolver; read it while the host root is still
    // visible.
    let host_resolv = if init.network == Network::Host { fs::read("/etc/resolv.conf").ok() } else { None };

    let newroot = match &init.root {
        RootSpec::Dir(dir) => {
            let dir = dir.to_str().ok_or("root path is not UTF-8")?;
            do_mount(Some(dir), dir, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            dir.to_string()
        }
        RootSpec::Overlay { lower, upper, work } => {
            let data = crate::overlay_options(lower, upper, work).map_err(|e| e.to_string())?;
            let target = lower[0].to_str().ok_or("lower path is not UTF-8")?;
            do_mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(&data))?;
            target.to_string()
        }
    };

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves only
    // the image. (The same sequence runc uses; it needs no put_old directory inside the image.)
    let oldroot = sys(
        || "open /".into(),
        nix::fcntl::open("/", OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()),
    )?;
    sys(|| format!("chdir {newroot}"), chdir(newroot.as_str()))?;
    sys(|| format!("pivot_root into {newroot}"), pivot_root(".", "."))?;
    sys(|| "fchdir to the old root".into(), fchdir(oldroot.as_fd()))?;
    sys(|| "detach the old root".into(), umount2(".", MntFlags::MNT_DETACH))?;
    drop(oldroot);
    sys(|| "chdir /".into(), chdir("/"))?;

    // From here on every path resolves inside the image.
    ensure_dir("/proc", 0o555)?;
    mount_proc().map_err(|(what, e)| errno_msg(&what, e))?;

    ensure_dir("/sys", 0o555)?;
    let sys_flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if mount(Some("sysfs"), "/sys", Some("sysfs"), sys_flags, None::<&str>).is_err() {
        // Fall back to the host's /sys, read-only at its top level.
        attach(&host_sys, "/sys")?;
        do_mount(None, "/sys", None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | sys_flags, None)?;
    }
    drop(host_sys);

    ensure_dir("/dev", 0o755)?;
    do_mount(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, fd) in &devices {
        let target = format!("/dev/{name}");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&target)
            .map_err(|e| format!("create {target}: {e}"))?;
        attach(fd, &target)?;
    }
    drop(devices);
    ensure_dir("/dev/pts", 0o755)?;
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    if mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        pts_flags,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .is_err()
    {
        do_mount(
            Some("devpts"),
            "/dev/pts",
            Some("devpts"),
            pts_flags,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?;
    }
    let links = [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    for (target, link) in links {
        std::os::unix::fs::symlink(target, link).map_err(|e| format!("symlink {link}: {e}"))?;
    }
    ensure_dir("/dev/shm", 0o1777)?;
    do_mount(
        Some("shm"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777"),
    )?;

    ensure_dir("/tmp", 0o1777)?;
    do_mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;

    // /run is a tmpfs on a booted system; what steps put there must not reach the image.
    ensure_dir("/run", 0o755)?;
    do_mount(Some("tmpfs"), "/run", Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=755"))?;
    if let Some(resolv) = host_resolv {
        provide_resolver(&resolv)?;
    }

    sys(|| format!("sethostname {:?}", init.hostname), sethostname(&init.hostname))?;
    if init.network == Network::None {
        loopback_up()?;
    }
    drop_capabilities()?;
    umask(Mode::empty());
    Ok(())
}

/// Make the host's resolver configuration what the image's /etc/resolv.conf shows, without
/// changing the image: a symlink into /run (systemd-resolved's stub) gets its target created in
/// the sandbox's /run tmpfs; a regular file is covered by a bind mount. Runs after pivot_root,
/// so every path here is inside the image.
fn provide_resolver(content: &[u8]) -> Result<(), String> {
    let ours = "/run/kiln-resolv.conf";
    fs::write(ours, content).map_err(|e| format!("write {ours}: {e}"))?;
    match fs::symlink_metadata("/etc/resolv.conf") {
        Ok(m) if m.file_type().is_symlink() => {
            let target =
                fs::read_link("/etc/resolv.conf").map_err(|e| format!("readlink /etc/resolv.conf: {e}"))?;
            let target = std::path::Path::new("/etc").join(target);
            // Only a target under /run can be provided without writing to the image.
            let mut normal = std::path::PathBuf::from("/");
            for c in target.components() {
                match c {
                    std::path::Component::ParentDir => {
                        normal.pop();
                    }
                    std::path::Component::Normal(n) => normal.push(n),
                    _ => {}
                }
            }
            if normal.starts_with("/run") {
                if let Some(parent) = normal.parent() {
                    fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
                }
                fs::write(&normal, content).map_err(|e| format!("write {}: {e}", normal.display()))?;
            }
            Ok(())
        }
        Ok(m) if m.is_file() => do_mount(Some(ours), "/etc/resolv.conf", None, MsFlags::MS_BIND, None),
        _ => Ok(()),
    }
}

/// Bring up `lo` in the sandbox's fresh network namespace (it starts down), so steps can talk
/// to servers they start on 127.0.0.1. Hand-written: two `ioctl`s on a datagram socket; no
/// crate among our dependencies wraps SIOCSIFFLAGS, and a netlink crate would be far heavier.
fn loopback_up() -> Result<(), String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = sys(
        || "socket(AF_INET, SOCK_DGRAM) for the loopback interface".into(),
        socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None),
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(errno_msg("ioctl(SIOCGIFFLAGS, lo)", Errno::last()));
    }
    // SAFETY: the union member written by SIOCGIFFLAGS just above.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(errno_msg("ioctl(SIOCSIFFLAGS, lo up)", Errno::last()));
    }
    Ok(())
}

fn drop_capabilities() -> Result<(), String> {
    let keep: HashSet<Capability> = KEPT_CAPABILITIES.iter().copied().collect();
    for cap in caps::runtime::thread_all_supported() {
        if keep.contains(&cap) {
            continue;
        }
        caps::drop(None, CapSet::Bounding, cap)
            .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        caps::drop(None, CapSet::Inheritable, cap)
            .map_err(|e| format!("drop {cap} from the inheritable set: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear the ambient capabilities: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Serving requests.

fn serve(mut sock: UnixStream) -> ! {
    loop {
        let req: Request = match proto::recv(&mut sock) {
            Ok(req) => req,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => std::process::exit(0),
            Err(e) => {
                eprintln!("kiln-sandbox agent: bad request: {e}");
                std::process::exit(2);
            }
        };
        let shutdown = matches!(req, Request::Shutdown);
        let resp = handle(req, Serving::Sandbox(&sock));
        if proto::send(&mut sock, &resp).is_err() || shutdown {
            std::process::exit(0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The guest agent: the same requests, served inside a booted test instance.

/// How long the guest agent waits for its port to appear (udev creates the link during boot).
const PORT_WAIT: Duration = Duration::from_secs(300);

/// Serves requests on the virtio-serial port `port` of a booted guest, forever.
///
/// The port is a byte stream that survives neither a reboot of the guest nor kiln reconnecting,
/// so framing is one JSON line per message with an id ([`proto::Envelope`]): a reader skips
/// whatever does not parse (a line cut by a reboot) and answers what does. `Ping` answers the
/// boot id, which is how kiln sees that the guest is up (again).
pub(crate) fn guest_main(port: &str) -> ! {
    umask(Mode::empty());
    let started = Instant::now();
    let file = loop {
        match OpenOptions::new().read(true).write(true).open(port) {
            Ok(f) => break f,
            Err(e) if started.elapsed() < PORT_WAIT => {
                if started.elapsed() < Duration::from_millis(300) {
                    eprintln!("kiln guest agent: waiting for {port}: {e}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                eprintln!("kiln guest agent: cannot open {port}: {e}");
                std::process::exit(2);
            }
        }
    };
    let boot_id =
        fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string();
    eprintln!("kiln guest agent: serving on {port} (boot {boot_id})");
    let mut reader = io::BufReader::new(match file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kiln guest agent: dup {port}: {e}");
            std::process::exit(2);
        }
    });
    let mut writer = file;
    let mut line = Vec::new();
    loop {
        line.clear();
        match proto::read_line(&mut reader, &mut line) {
            Ok(true) => {}
            // Nobody on the host side (yet): the port reads as end of file until kiln connects.
            Ok(false) | Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let Ok(envelope) = serde_json::from_slice::<proto::Envelope<Request>>(&line) else {
            continue;
        };
        let id = envelope.id;
        let (resp, then_reboot) = match envelope.msg {
            Request::Ping => (Ok(Reply::Pong { boot_id: boot_id.clone() }), false),
            Request::Reboot => (Ok(Reply::Unit), true),
            req => (handle(req, Serving::Guest), false),
        };
        if proto::send_line(&mut writer, &proto::Envelope { id, msg: resp }).is_err() {
            continue;
        }
        if then_reboot {
            // systemd stops this service on the way down; kiln waits for a new boot id.
            let _ = std::process::Command::new("systemctl").arg("reboot").status();
        }
    }
}

fn check_path(path: &str) -> Result<(), HostError> {
    if !path.starts_with('/') {
        return Err(HostError::new(
            HostErrorKind::InvalidPath,
            format!("{path:?} is not an absolute path inside the target"),
        ));
    }
    if path.contains('\0') {
        return Err(HostError::new(HostErrorKind::InvalidPath, format!("{path:?} contains a NUL byte")));
    }
    Ok(())
}

pub(crate) fn io_kind(e: &io::Error) -> HostErrorKind {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => HostErrorKind::NotFound,
        Some(Errno::EEXIST) => HostErrorKind::AlreadyExists,
        Some(Errno::EACCES | Errno::EPERM | Errno::EROFS) => HostErrorKind::PermissionDenied,
        Some(Errno::ENOTDIR) => HostErrorKind::NotADirectory,
        Some(Errno::EISDIR) => HostErrorKind::IsADirectory,
        Some(Errno::ENOTEMPTY) => HostErrorKind::DirectoryNotEmpty,
        Some(Errno::ELOOP | Errno::ENAMETOOLONG) => HostErrorKind::InvalidPath,
        _ => HostErrorKind::Other,
    }
}

fn io_err(op: &str, path: &str, e: io::Error) -> HostError {
    HostError::new(io_kind(&e), format!("{op} {path}: {e}"))
}

fn kind_of(ft: fs::FileType) -> FileKind {
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// Where the agent serves: which decides how a step is started and watched.
#[derive(Clone, Copy)]
enum Serving<'a> {
    /// Inside the namespace sandbox: each step is PID 1 of a nested PID namespace, and the
    /// session's socket is watched so a vanished kiln ends the step.
    Sandbox(&'a UnixStream),
    /// Inside a booted guest: a step sees the real system (its processes, its `/proc`), runs in
    /// a session and process group of its own, and that group is killed when the step ends.
    Guest,
}

fn handle(req: Request, mode: Serving<'_>) -> Response {
    use Reply::Unit;
    match req {
        // Ping and Reboot only mean something to a guest agent, which answers them itself.
        Request::Shutdown | Request::Ping | Request::Reboot => Ok(Unit),
        Request::Exec { argv, env, cwd, stdin, timeout_ms } => {
            exec(&argv, &env, cwd.as_deref(), stdin.as_deref(), timeout_ms.map(Duration::from_millis), mode)
        }
        Request::ReadFile { path } => {
            check_path(&path)?;
            fs::read(&path).map(Reply::Bytes).map_err(|e| io_err("read", &path, e))
        }
        Request::WriteFile { path, data, how, mode } => {
            check_path(&path)?;
            let mut opts = OpenOptions::new();
            opts.write(true).mode(mode.unwrap_or(0o644) & 0o7777);
            match how {
                WriteMode::Truncate => opts.create(true).truncate(true),
                WriteMode::Append => opts.create(true).append(true),
                WriteMode::CreateNew => opts.create_new(true),
            };
            let mut f = opts.open(&path).map_err(|e| io_err("open for writing", &path, e))?;
            io::Write::write_all(&mut f, &data).map_err(|e| io_err("write", &path, e))?;
            Ok(Unit)
        }
        Request::CreateDirAll { path, mode } => {
            check_path(&path)?;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode.unwrap_or(0o755) & 0o7777)
                .create(&path)
                .map_err(|e| io_err("create directory", &path, e))?;
            // DirBuilder succeeds when a non-directory exists at `path`'s place only if it is a
            // symlink to a directory; anything else is an error the caller should see.
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => Ok(Unit),
                Ok(_) => Err(HostError::new(
                    HostErrorKind::AlreadyExists,
                    format!("create directory {path}: a non-directory exists there"),
                )),
                Err(e) => Err(io_err("create directory", &path, e)),
            }
        }
        Request::Metadata { path } => {
            check_path(&path)?;
            let m = fs::symlink_metadata(&path).map_err(|e| io_err("stat", &path, e))?;
            Ok(Reply::Metadata(Metadata {
                kind: kind_of(m.file_type()),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: m.size(),
            }))
        }
        Request::ListDir { path } => {
            check_path(&path)?;
            let mut out = Vec::new();
            for entry in fs::read_dir(&path).map_err(|e| io_err("list", &path, e))? {
                let entry = entry.map_err(|e| io_err("list", &path, e))?;
                let kind = entry.file_type().map(kind_of).map_err(|e| io_err("list", &path, e))?;
                out.push(DirEntry { name: entry.file_name().to_string_lossy().into_owned(), kind });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Reply::Entries(out))
        }
        Request::RemoveFile { path } => {
            check_path(&path)?;
            fs::remove_file(&path).map(|_| Unit).map_err(|e| io_err("remove", &path, e))
        }
        Request::RemoveDir { path, recursive } => {
            check_path(&path)?;
            let r = if recursive { fs::remove_dir_all(&path) } else { fs::remove_dir(&path) };
            r.map(|_| Unit).map_err(|e| io_err("remove directory", &path, e))
        }
        Request::Rename { from, to } => {
            check_path(&from)?;
            check_path(&to)?;
            match fs::rename(&from, &to) {
                Ok(()) => Ok(Unit),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    move_across_mounts(&from, &to).map(|_| Unit)
                }
                Err(e) => Err(io_err("rename", &format!("{from} to {to}"), e)),
            }
        }
        Request::CopyFile { from, to } => {
            check_path(&from)?;
            check_path(&to)?;
            fs::copy(&from, &to).map(|_| Unit).map_err(|e| io_err("copy", &format!("{from} to {to}"), e))
        }
        Request::Symlink { target, link } => {
            check_path(&link)?;
            if target.is_empty() || target.contains('\0') {
                return Err(HostError::new(
                    HostErrorKind::InvalidPath,
                    format!("bad symlink target {target:?}"),
                ));
            }
            std::os::unix::fs::symlink(&target, &link)
                .map(|_| Unit)
                .map_err(|e| io_err("symlink", &format!("{link} -> {target}"), e))
        }
        Request::ReadLink { path } => {
            check_path(&path)?;
            fs::read_link(&path)
                .map(|t| Reply::Link(t.to_string_lossy().into_owned()))
                .map_err(|e| io_err("readlink", &path, e))
        }
        Request::SetPermissions { path, mode } => {
            check_path(&path)?;
            let m = fs::symlink_metadata(&path).map_err(|e| io_err("chmod", &path, e))?;
            if m.file_type().is_symlink() {
                // Linux symlinks have no permission bits of their own; never follow one.
                return Ok(Unit);
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map(|_| Unit)
                .map_err(|e| io_err("chmod", &path, e))
        }
        Request::SetOwner { path, uid, gid } => {
            check_path(&path)?;
            std::os::unix::fs::lchown(&path, uid, gid).map(|_| Unit).map_err(|e| io_err("chown", &path, e))
        }
    }
}

/// `rename` between two mounts of the sandbox (the private /tmp and the root, say), which a
/// target with one file system would allow: copy, then remove the source. Files and symlinks only.
fn move_across_mounts(from: &str, to: &str) -> Result<(), HostError> {
    let what = format!("{from} to {to}");
    let m = fs::symlink_metadata(from).map_err(|e| io_err("rename", &what, e))?;
    if m.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(|e| io_err("rename", &what, e))?;
        match fs::symlink_metadata(to) {
            Ok(t) if t.is_dir() => {
                return Err(HostError::new(
                    HostErrorKind::IsADirectory,
                    format!("rename {what}: target is a directory"),
                ));
            }
            Ok(_) => fs::remove_file(to).map_err(|e| io_err("rename", &what, e))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, to).map_err(|e| io_err("rename", &what, e))?;
    } else if m.is_file() {
        fs::copy(from, to).map_err(|e| io_err("rename", &what, e))?;
    } else {
        return Err(HostError::new(
            HostErrorKind::Unsupported,
            format!(
                "rename {what}: moving a directory between mounts (such as the sandbox's private /tmp) is not supported"
            ),
        ));
    }
    let _ = std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid()));
    if m.is_file() {
        let _ = fs::set_permissions(to, fs::Permissions::from_mode(m.mode() & 0o7777));
    }
    fs::remove_file(from).map_err(|e| io_err("rename", &what, e))
}

// ---------------------------------------------------------------------------------------------
// Exec.

/// Where the step's setup failed before `execve`, as reported through the error pipe.
const STAGES: &[&str] = &["mount /proc", "setsid", "set up stdio", "chdir", "execve"];

fn find_program(argv0: &str, env: &[(String, String)]) -> Result<String, HostError> {
    if argv0.contains('/') {
        return Ok(argv0.to_string());
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{argv0}");
        if let Ok(m) = fs::metadata(&candidate)
            && m.is_file()
            && m.mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(HostError::new(HostErrorKind::NotFound, format!("exec {argv0}: command not found in PATH={path}")))
}

fn cstring(what: &str, s: &[u8]) -> Result<CString, HostError> {
    CString::new(s).map_err(|_| HostError::new(HostErrorKind::Other, format!("{what} contains a NUL byte")))
}

fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = fcntl(fd.as_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags));
    }
}

/// Read what is available; `Ok(false)` at end of file.
fn pump(fd: &OwnedFd, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) => return false,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

fn exec(
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    stdin: Option<&[u8]>,
    timeout: Option<Duration>,
    mode: Serving<'_>,
) -> Response {
    let isolate = matches!(mode, Serving::Sandbox(_));
    let started = Instant::now();
    let Some(argv0) = argv.first() else {
        return Err(HostError::new(HostErrorKind::Other, "exec: empty argv"));
    };
    let cwd = cwd.unwrap_or("/");
    check_path(cwd)?;
    let program = find_program(argv0, env)?;
    let c_program = cstring("program path", program.as_bytes())?;
    let c_argv = argv.iter().map(|a| cstring("argument", a.as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let c_env = env
        .iter()
        .map(|(k, v)| cstring("environment variable", format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let c_cwd = cstring("cwd", cwd.as_bytes())?;

    let target = |e: Errno, what: &str| HostError::new(HostErrorKind::Target, errno_msg(what, e));
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| target(e, "pipe2"));
    let (stdin_r, stdin_w) = match stdin {
        Some(_) => {
            let (r, w) = pipe()?;
            (r, Some(w))
        }
        None => {
            let null = File::open("/dev/null").map_err(|e| io_err("open", "/dev/null", e))?;
            (OwnedFd::from(null), None)
        }
    };
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    let fds = [stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()];
    let err_fd = err_w.as_raw_fd();
    let child_main = Box::new(|| -> isize {
        let report = |stage: usize, e: Errno| -> isize {
            let mut msg = [0u8; 5];
            msg[0] = stage as u8;
            msg[1..].copy_from_slice(&(e as i32).to_ne_bytes());
            // SAFETY: `err_fd` is the open write end of the error pipe in this process.
            let _ = nix::unistd::write(unsafe { std::os::fd::BorrowedFd::borrow_raw(err_fd) }, &msg);
            127
        };
        if isolate && let Err((_, e)) = mount_proc() {
            return report(0, e);
        }
        if let Err(e) = setsid() {
            return report(1, e);
        }
        for (i, fd) in fds.iter().enumerate() {
            // SAFETY: dup2 onto 0/1/2 in the child; `fd` is open (the parent holds it until
            // after the clone) and the targets are the standard streams we mean to replace.
            if unsafe { libc::dup2(*fd, i as libc::c_int) } < 0 {
                return report(2, Errno::last());
            }
        }
        if let Err(e) = nix::unistd::chdir(c_cwd.as_c_str()) {
            return report(3, e);
        }
        umask(Mode::from_bits_truncate(0o022));
        // Rust ignores SIGPIPE in its own processes; a step gets the default disposition back.
        // SAFETY: resetting to the default disposition installs no handler.
        let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
        let _ = signal::sigprocmask(signal::SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        let e = nix::unistd::execve(&c_program, &c_argv, &c_env).unwrap_err();
        report(4, e)
    });
    let mut stack = vec![0u8; CLONE_STACK];
    let flags =
        if isolate { CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS } else { CloneFlags::empty() };
    // SAFETY: the agent (in the sandbox or in a guest) is single-threaded and the clone shares
    // no memory with it (no CLONE_VM), so the child runs on its own copy like after fork(); the
    // callback needs a few KiB of the 256 KiB stack.
    let child = unsafe { clone(child_main, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| target(e, "clone for the step"))?;
    // Outside a PID namespace the step's tree is its process group (setsid made it the leader).
    let kill_step = |sig: Signal| {
        let _ = kill(if isolate { child } else { Pid::from_raw(-child.as_raw()) }, sig);
    };
    drop((stdin_r, stdout_w, stderr_w, err_w, stack));

    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(child.as_raw()).expect("clone returned a positive pid"),
        rustix::process::PidfdFlags::empty(),
    );
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Err(HostError::new(HostErrorKind::Target, format!("pidfd_open of the step: {e}")));
        }
    };

    set_nonblocking(&stdout_r);
    set_nonblocking(&stderr_r);
    if let Some(w) = &stdin_w {
        set_nonblocking(w);
    }
    let mut stdin_w = stdin_w;
    let stdin_data = stdin.unwrap_or_default();
    let mut stdin_off = 0;
    if stdin_w.is_some() && stdin_data.is_empty() {
        stdin_w = None;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let sock = match mode {
        Serving::Sandbox(sock) => Some(sock),
        Serving::Guest => None,
    };
    let mut watch_sock = sock.is_some();
    let deadline = timeout.map(|t| started + t);
    let mut timed_out = false;

    loop {
        let mut fds: Vec<PollFd> = Vec::with_capacity(5);
        let mut tags = Vec::with_capacity(5);
        fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        tags.push(0);
        if out_open {
            fds.push(PollFd::new(stdout_r.as_fd(), PollFlags::POLLIN));
            tags.push(1);
        }
        if err_open {
            fds.push(PollFd::new(stderr_r.as_fd(), PollFlags::POLLIN));
            tags.push(2);
        }
        if let Some(w) = &stdin_w {
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLOUT));
            tags.push(3);
        }
        if let Some(sock) = sock.filter(|_| watch_sock) {
            fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
            tags.push(4);
        }
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as u32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, wait) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                kill_step(Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(target(e, "poll"));
            }
        }
        let ready: Vec<(i32, bool)> =
            fds.iter().zip(&tags).map(|(f, t)| (*t, f.revents().is_some_and(|r| !r.is_empty()))).collect();
        drop(fds);
        let mut exited = false;
        for (tag, is_ready) in ready {
            if !is_ready {
                continue;
            }
            match tag {
                0 => exited = true,
                1 => out_open = pump(&stdout_r, &mut out),
                2 => err_open = pump(&stderr_r, &mut err),
                3 => {
                    let w = stdin_w.as_ref().expect("polled only when open");
                    match nix::unistd::write(w.as_fd(), &stdin_data[stdin_off..]) {
                        Ok(n) => stdin_off += n,
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        Err(_) => stdin_off = stdin_data.len(), // EPIPE: the step closed stdin
                    }
                    if stdin_off >= stdin_data.len() {
                        stdin_w = None;
                    }
                }
                _ => {
                    let Some(sock) = sock else { continue };
                    let mut b = [0u8; 1];
                    match nix::sys::socket::recv(
                        sock.as_raw_fd(),
                        &mut b,
                        nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                    ) {
                        Ok(0) | Err(Errno::ECONNRESET) => {
                            // kiln is gone: end the step, then ourselves (which ends the sandbox).
                            let _ = kill(child, Signal::SIGKILL);
                            let _ = waitpid(child, None);
                            std::process::exit(0);
                        }
                        _ => watch_sock = false,
                    }
                }
            }
        }
        if exited {
            break;
        }
        if let Some(d) = deadline
            && Instant::now() >= d
        {
            timed_out = true;
            kill_step(Signal::SIGKILL);
            break;
        }
    }

    // In the sandbox the step is PID 1 of its PID namespace: once it is gone the kernel has
    // killed every other process in it. In a guest its process group goes the same way; a
    // daemon that left the group may still hold the pipes, so the reads below never block.
    let status = loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(_, code)) => break ExitStatus::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break ExitStatus::Signal(sig as i32),
            Ok(_) => continue,
            Err(e) => return Err(target(e, "waitpid of the step")),
        }
    };
    if !isolate {
        kill_step(Signal::SIGKILL);
    }
    drop(stdin_w);
    for (fd, buf) in [(&stdout_r, &mut out), (&stderr_r, &mut err)] {
        pump(fd, buf);
    }
    let mut report = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut report);
    if report.len() == 5 {
        let stage = STAGES.get(report[0] as usize).copied().unwrap_or("setup");
        let errno = Errno::from_raw(i32::from_ne_bytes(report[1..5].try_into().expect("4 bytes")));
        let e = io::Error::from_raw_os_error(errno as i32);
        let what = match stage {
            "execve" => program.clone(),
            "chdir" => cwd.to_string(),
            _ => argv0.clone(),
        };
        return Err(HostError::new(io_kind(&e), format!("exec {argv0}: {stage} {what}: {e}")));
    }
    let status = if timed_out { ExitStatus::TimedOut } else { status };
    Ok(Reply::Exec { status, stdout: out, stderr: err, duration_us: started.elapsed().as_micros() as u64 })
}
