//! The namespace sandbox: runs component steps chrooted into an image root, in fresh
//! namespaces, behind the [`kiln_host::Host`] trait. It owns the namespaces, the mounts, the
//! agent process and its wire protocol; it must not know about component documents, recipes or
//! images — it is handed a root ([`RootSpec`]) and serves `exec` and file operations on it.
//!
//! # How a session works
//!
//! [`Sandbox::start`] re-executes a *helper* binary ([`SandboxConfig::helper`], by default the
//! running executable) with the hidden first argument [`INIT_ARG`] and one end of a Unix
//! socketpair. Every binary used as a helper calls [`init_main_if_requested`] first thing in
//! `main`, while it is still single-threaded; this crate's `kiln-sandbox-init` binary does only
//! that. The helper reads the start-up parameters from the socket, `unshare`s a new mount, PID,
//! UTS, IPC and (unless [`Network::Host`]) network namespace, plus a cgroup namespace where the
//! kernel allows, and forks. The child is PID 1 of the new PID namespace and becomes the
//! *agent*; the helper only waits for it (and turns SIGTERM into a SIGKILL of the agent, so
//! ending a session is synchronous). The agent:
//!
//! 1. arms `PR_SET_PDEATHSIG(SIGKILL)` and makes every mount `MS_REC|MS_PRIVATE`, so nothing it
//!    mounts propagates to the host;
//! 2. mounts the root: a recursive bind of [`RootSpec::Dir`] onto itself, or an overlayfs of
//!    [`RootSpec::Overlay`] mounted over its top lower layer (the usual `lowerdir=/usr ... /usr`
//!    pattern; it needs no staging directory);
//! 3. `pivot_root(".", ".")` into it and detaches the old root. Host resources it still needs
//!    (device nodes, `/sys` for the fallback) were opened as `O_PATH` descriptors beforehand and
//!    are bind-mounted from `/proc/self/fd/N`, so after this point no path is ever resolved
//!    against the host root — a symlink planted in the image cannot redirect a mount;
//! 4. mounts a fresh `/proc` (with `/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq`, `/proc/bus`
//!    and `/proc/fs` read-only), `/sys` as a read-only sysfs (falling back to a read-only bind of
//!    the host's), a minimal `/dev` on tmpfs (`null zero full random urandom tty` bound from the
//!    host, a private `devpts` instance with `ptmx`, `/dev/shm`, and the `fd stdin stdout
//!    stderr` links), and a private tmpfs on `/tmp`. **The image's own `/tmp` content is hidden
//!    while the sandbox runs** (and what steps write to `/tmp` is gone afterwards, as after a
//!    reboot). Mount points the image lacks (`/proc`, `/sys`, `/dev`, `/tmp`) are created in it;
//! 5. sets the hostname and drops from the bounding and inheritable sets every capability
//!    outside [`KEPT_CAPABILITIES`] (Docker's default set: no `SYS_ADMIN`, `SYS_MODULE`,
//!    `SYS_RAWIO`, `SYS_PTRACE`, `SYS_BOOT`, `SYS_TIME`, `NET_ADMIN`, `MAC_ADMIN`, ...). The agent
//!    keeps its own capabilities (it needs `SYS_ADMIN` for each step's namespaces), a step's
//!    process gets only the kept ones at `execve`. `no_new_privs` is deliberately **not** set:
//!    `sudo` refuses to run under it and real components use `sudo`;
//! 6. answers requests over the socket (framing: 4-byte big-endian length + JSON, byte
//!    payloads base64; one response per request) until the socket closes.
//!
//! Syscalls go through `nix`; `rustix` supplies what nix 0.32 lacks (`open_tree`/`move_mount`
//! to carry host device nodes across `pivot_root`, `pidfd_open` to wait for a step in `poll`);
//! `caps` handles the capability sets. Only bringing up `lo` is hand-written (two `ioctl`s).
//!
//! Because the agent runs inside the pivoted root, file operations resolve every path, `..`
//! and symlink (absolute or relative) inside the image: `/etc -> /host/etc` planted in the image
//! means the image's `/host/etc`, never the host's. Relative paths are refused with
//! [`HostErrorKind::InvalidPath`]. Files the agent creates get exactly the requested mode (its
//! umask is 0); defaults are 0644 for files, 0755 for directories. `set_permissions` on a
//! symlink is a no-op (Linux symlinks have no mode). `rename` across the sandbox's mounts (from
//! the private `/tmp` into the root, say) falls back to copy-and-remove for files and symlinks.
//! `lookup_user`/`lookup_group` parse the image's own `/etc/passwd` and `/etc/group`; a numeric
//! id is accepted as is.
//!
//! # Exec
//!
//! For each [`Host::exec`] the agent `clone`s the step with `CLONE_NEWPID|CLONE_NEWNS`, so the
//! step's process is PID 1 of a nested PID namespace (one clone instead of unshare-and-fork-again:
//! same result, one process fewer). Before `execve` it mounts that namespace's own `/proc` (so
//! the step sees only its own processes), calls `setsid` (no controlling terminal), connects
//! stdin (the request's bytes, or `/dev/null`), stdout and stderr pipes, changes to the working
//! directory, resets the umask to 022 and SIGPIPE to its default, and `execve`s with exactly the
//! session's base environment ([`SandboxConfig::env`]) overlaid with the request's. `argv[0]`
//! without a `/` is looked up in that environment's `PATH`, inside the image. The agent polls
//! both output pipes, the stdin pipe and a pidfd of the step, so output of any size streams
//! without deadlock. When the step's PID 1 exits, the kernel kills everything else in its PID
//! namespace: a `sleep 1000 &` left behind by a step is gone when `exec` returns. On timeout the
//! agent SIGKILLs the step's PID 1, which takes the whole tree with it, and answers
//! [`ExitStatus::TimedOut`]. A program that cannot be started (not found, not executable, bad
//! working directory) is an `Err` ([`HostErrorKind::NotFound`], ...), not an exit code. Being
//! PID 1, a step does not die of signals it does not handle sent from inside its own namespace
//! (`kill $$` in a shell step is ignored), as in a container.
//!
//! # Ending, reboot, and a killed kiln
//!
//! [`Session::shutdown`] asks the agent to exit; dropping a [`Session`] SIGTERMs the helper,
//! which SIGKILLs the agent; either way the call returns once the helper has reaped the agent,
//! by which time every process of the sandbox is dead and its mount namespace — the only place
//! its mounts ever existed — is gone. If kiln itself is killed, the agent sees the socket close
//! (it watches it even while a step runs), kills the step and exits; if the helper is killed,
//! `PR_SET_PDEATHSIG` kills the agent. No mount is left behind on the host in any case.
//!
//! [`Session::interrupt`] (or an [`Interrupter`] taken from the session, for a cancellation
//! hook in another thread) ends a session from outside while a request is running: it SIGTERMs
//! the helper without taking the session's lock, which the running request holds. The helper
//! SIGKILLs the agent, every step process dies with the agent's PID namespace, the running
//! request fails, and every later one fails at once without reaching for an agent; the session
//! does not restart after that (a reboot is refused).
//!
//! [`Host::reboot`] is kiln's answer to a step asking for a reboot (the `Reboot` action, exit
//! code 194): the session ends (every process dies) and a fresh one starts over the same root
//! with the same configuration. Files written to the root persist; `/tmp` and `/dev/shm` start
//! empty, as after a real reboot.
//!
//! # Limits
//!
//! The sandbox isolates a build from the host; it is not a boundary against a hostile
//! component: steps run as real root (no user namespace), without seccomp, with the Docker
//! default capabilities. With [`Network::None`] the sandbox has only a loopback interface (brought up, so steps can
//! use 127.0.0.1).
//! With [`Network::Host`] it shares the host's network namespace and uses the image's own
//! `/etc/resolv.conf`. The sandbox has no cgroup file system mounted. Overlay layer paths may
//! not contain `,`, `:` or `\`, and the overlay mount options must fit in one page.

mod agent;
mod guest;
mod proto;
#[cfg(feature = "test-support")]
pub mod testroot;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_host::{
    DirEntry, ExecOutput, ExecRequest, Host, HostError, HostErrorKind, HostResult, Metadata, WriteMode,
};
use serde::{Deserialize, Serialize};

pub use agent::KEPT_CAPABILITIES;
pub use caps::Capability;
pub use guest::{GUEST_AGENT_ARG, GuestError, GuestOptions, GuestSession, Watchdog};
pub use kiln_host::ExitStatus;

use proto::{Init, Ready, Reply, Request};

/// The hidden first argument that turns a binary into the sandbox helper.
pub const INIT_ARG: &str = "__kiln-sandbox-init";

/// Run the sandbox helper if this process was started as one, and never return in that case.
///
/// Call it first thing in `main`, before any thread is started (the helper forks without
/// exec'ing, which is only sound in a single-threaded process) and before any logging set-up.
/// In any other process it returns at once.
pub fn init_main_if_requested() {
    let mut args = std::env::args_os();
    let first = args.nth(1);
    if first.as_deref() == Some(std::ffi::OsStr::new(INIT_ARG)) {
        let fd = args.next().and_then(|a| a.into_string().ok()).unwrap_or_default();
        agent::helper_main(&fd);
    }
    if first.as_deref() == Some(std::ffi::OsStr::new(GUEST_AGENT_ARG)) {
        let port = args.next().and_then(|a| a.into_string().ok()).unwrap_or_default();
        agent::guest_main(&port);
    }
}

/// The file system a session runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootSpec {
    /// An unpacked root directory, used in place (writes land in it).
    Dir(PathBuf),
    /// An overlayfs: `lower` layers, top first, read-only; writes land in `upper`. `work` is
    /// overlayfs's scratch directory: empty, on the same file system as `upper`. `upper` and
    /// `work` are created when missing.
    Overlay { lower: Vec<PathBuf>, upper: PathBuf, work: PathBuf },
}

/// Whether steps reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A private network namespace with only a loopback interface (up).
    None,
    /// The host's network namespace.
    Host,
}

/// Everything a session needs; reused unchanged by [`Host::reboot`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub root: RootSpec,
    pub network: Network,
    /// The sandbox's hostname (its own UTS namespace).
    pub hostname: String,
    /// The executable re-executed as the helper; it must call [`init_main_if_requested`].
    /// Default `/proc/self/exe` (the running executable, even if its file was replaced since).
    pub helper: PathBuf,
    /// The base environment of every step; an [`ExecRequest`]'s `env` is laid over it.
    pub env: Vec<(String, String)>,
    /// How long the agent may take to set the sandbox up.
    pub start_timeout: Duration,
}

impl SandboxConfig {
    /// A configuration with the defaults: no network, hostname `kiln`, the running executable
    /// as helper, and [`SandboxConfig::default_env`].
    pub fn new(root: RootSpec) -> Self {
        SandboxConfig {
            root,
            network: Network::None,
            hostname: "kiln".to_string(),
            helper: PathBuf::from("/proc/self/exe"),
            env: Self::default_env(),
            start_timeout: Duration::from_secs(30),
        }
    }

    /// `PATH` (the Debian root default), `HOME=/root`, `LANG=C.UTF-8`,
    /// `DEBIAN_FRONTEND=noninteractive`. No `TERM`: steps have no terminal.
    pub fn default_env() -> Vec<(String, String)> {
        [
            ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("DEBIAN_FRONTEND", "noninteractive"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// Why a session could not be started or ended.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    #[error(
        "could not start the sandbox helper {}: {source}; hint: the helper must be an executable that calls kiln_sandbox::init_main_if_requested()",
        helper.display()
    )]
    Spawn { helper: PathBuf, source: io::Error },
    /// The helper or agent reported a failed set-up step (syscall, path, errno and a hint).
    #[error("sandbox set-up failed: {0}")]
    Setup(String),
    /// The helper or agent died or broke the protocol.
    #[error("sandbox agent: {0}")]
    Agent(String),
    /// The session was ended by [`Session::interrupt`].
    #[error("the sandbox session was interrupted")]
    Interrupted,
}

/// Starts sessions.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox;

impl Sandbox {
    /// Start a session: mount the root in fresh namespaces and wait until the agent serves.
    pub fn start(config: SandboxConfig) -> Result<Session, SandboxError> {
        let config = validate(config)?;
        let agent = spawn(&config)?;
        tracing::debug!(helper = agent.helper.id(), root = ?config.root, "sandbox session started");
        let control = Arc::new(Control::default());
        control.helper_pid.store(agent.helper.id(), Ordering::SeqCst);
        Ok(Session { config, agent: Mutex::new(Some(agent)), control })
    }
}

/// What [`Session::interrupt`] needs, shared with [`Interrupter`]s: readable and writable
/// while a request holds the session's lock.
#[derive(Debug, Default)]
struct Control {
    /// The current helper's PID (0 when none). Set to 0 *before* the helper is reaped, so a
    /// PID read here is still our unreaped child (a zombie at worst), never a recycled PID,
    /// unless the reap happens between an interrupt's read and its kill(2) — a window of a
    /// few instructions against the kernel cycling through the whole PID space.
    helper_pid: AtomicU32,
    interrupted: AtomicBool,
}

impl Control {
    fn interrupt(&self) {
        // The flag first: a restart that stores a new helper PID after our read below sees
        // the flag and ends that helper itself.
        self.interrupted.store(true, Ordering::SeqCst);
        let pid = self.helper_pid.load(Ordering::SeqCst);
        if pid != 0 {
            tracing::debug!(helper = pid, "interrupting sandbox session");
            // SIGTERM, not SIGKILL: the helper then SIGKILLs the agent and waits for it, so
            // once the helper is reaped the whole sandbox is gone.
            // SAFETY: kill(2) of our own child (see `helper_pid`); no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

/// Interrupts one [`Session`] from anywhere (a cancellation hook); see
/// [`Session::interrupt`]. Cheap to clone; does nothing once the session has ended.
#[derive(Debug, Clone)]
pub struct Interrupter {
    control: Arc<Control>,
}

impl Interrupter {
    pub fn interrupt(&self) {
        self.control.interrupt();
    }
}

/// A running sandbox: a [`Host`] whose target is the configured root.
#[derive(Debug)]
pub struct Session {
    config: SandboxConfig,
    agent: Mutex<Option<Agent>>,
    control: Arc<Control>,
}

#[derive(Debug)]
struct Agent {
    helper: Child,
    sock: UnixStream,
}

impl Agent {
    /// Kill the whole sandbox and wait until it is gone.
    fn kill(mut self) {
        tracing::debug!(helper = self.helper.id(), "ending sandbox session");
        if let Ok(None) = self.helper.try_wait() {
            // SIGTERM makes the helper SIGKILL the agent and exit once it has reaped it.
            // SAFETY: plain kill(2) on our own unreaped child; no memory is involved.
            unsafe { libc::kill(self.helper.id() as libc::pid_t, libc::SIGTERM) };
        }
        let _ = self.helper.wait();
    }
}

/// Overlayfs mount options for the layers, checked for what the option syntax cannot carry.
pub(crate) fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> Result<String, SandboxError> {
    let text = |p: &Path| -> Result<String, SandboxError> {
        let s = p
            .to_str()
            .ok_or_else(|| SandboxError::Config(format!("overlay path {} is not UTF-8", p.display())))?;
        if s.contains([',', ':', '\\']) {
            return Err(SandboxError::Config(format!(
                "overlay path {s} contains ',', ':' or '\\', which overlayfs mount options cannot carry"
            )));
        }
        Ok(s.to_string())
    };
    if lower.is_empty() {
        return Err(SandboxError::Config("an overlay root needs at least one lower layer".into()));
    }
    let lowers = lower.iter().map(|p| text(p)).collect::<Result<Vec<_>, _>>()?;
    let data = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), text(upper)?, text(work)?);
    if data.len() > 4000 {
        return Err(SandboxError::Config(format!(
            "overlay mount options are {} bytes, over the one-page limit; use shorter layer paths or fewer layers",
            data.len()
        )));
    }
    Ok(data)
}

fn validate(mut config: SandboxConfig) -> Result<SandboxConfig, SandboxError> {
    let canon = |p: &Path, what: &str| -> Result<PathBuf, SandboxError> {
        let c = p.canonicalize().map_err(|e| SandboxError::Config(format!("{what} {}: {e}", p.display())))?;
        if !c.is_dir() {
            return Err(SandboxError::Config(format!("{what} {} is not a directory", p.display())));
        }
        Ok(c)
    };
    config.root = match &config.root {
        RootSpec::Dir(d) => {
            let d = canon(d, "root")?;
            if d == Path::new("/") {
                return Err(SandboxError::Config("the root may not be the host's /".into()));
            }
            d.to_str().ok_or_else(|| SandboxError::Config(format!("root {} is not UTF-8", d.display())))?;
            RootSpec::Dir(d)
        }
        RootSpec::Overlay { lower, upper, work } => {
            for dir in [upper, work] {
                std::fs::create_dir_all(dir).map_err(|e| {
                    SandboxError::Config(format!("create overlay directory {}: {e}", dir.display()))
                })?;
            }
            let lower =
                lower.iter().map(|l| canon(l, "overlay lower layer")).collect::<Result<Vec<_>, _>>()?;
            let upper = canon(upper, "overlay upper directory")?;
            let work = canon(work, "overlay work directory")?;
            overlay_options(&lower, &upper, &work)?;
            RootSpec::Overlay { lower, upper, work }
        }
    };
    if config.hostname.is_empty() || config.hostname.len() > 64 {
        return Err(SandboxError::Config(format!("hostname {:?} must be 1 to 64 bytes", config.hostname)));
    }
    Ok(config)
}

fn spawn(config: &SandboxConfig) -> Result<Agent, SandboxError> {
    let (mut sock, theirs) =
        UnixStream::pair().map_err(|e| SandboxError::Agent(format!("socketpair: {e}")))?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&config.helper);
    cmd.arg(INIT_ARG)
        .arg(their_fd.to_string())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs between fork and exec and only calls fcntl(2), which is
    // async-signal-safe; it makes the helper's end of the socket survive the exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut helper =
        cmd.spawn().map_err(|source| SandboxError::Spawn { helper: config.helper.clone(), source })?;
    drop(theirs);

    let init = Init { root: config.root.clone(), network: config.network, hostname: config.hostname.clone() };
    let answer = sock
        .set_read_timeout(Some(config.start_timeout))
        .and_then(|()| proto::send(&mut sock, &init))
        .and_then(|()| proto::recv::<Ready, _>(&mut sock));
    let agent = Agent { helper, sock };
    match answer {
        Ok(Ok(())) => {
            agent.sock.set_read_timeout(None).map_err(|e| SandboxError::Agent(format!("socket: {e}")))?;
            Ok(agent)
        }
        Ok(Err(msg)) => {
            agent.kill();
            Err(SandboxError::Setup(msg))
        }
        Err(e) => {
            let timed_out = matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
            helper = agent.helper;
            if timed_out {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(helper.id() as libc::pid_t, libc::SIGTERM) };
            }
            let status = helper.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Err(SandboxError::Agent(if timed_out {
                format!("no answer within {:?} while setting up", config.start_timeout)
            } else {
                format!(
                    "the helper {} ended during start-up ({status}): {e}; hint: it must call \
                     kiln_sandbox::init_main_if_requested() first thing in main",
                    config.helper.display()
                )
            }))
        }
    }
}

impl Session {
    /// The configuration this session runs with (paths canonicalized).
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The helper's process id on the host, while the session runs (for diagnostics; it does
    /// not wait for a running request).
    pub fn helper_pid(&self) -> Option<u32> {
        Some(self.control.helper_pid.load(Ordering::SeqCst)).filter(|&p| p != 0)
    }

    /// Kill the session now, from any thread, without waiting for a running request: its
    /// helper is signalled (lock-free), every process of the sandbox dies, the running request
    /// returns a [`HostErrorKind::Target`] error, and so does every later one. The session is
    /// reaped as usual by [`Session::shutdown`] or its drop.
    pub fn interrupt(&self) {
        self.control.interrupt();
    }

    /// A handle that interrupts this session, for a hook that must own what it uses.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter { control: Arc::clone(&self.control) }
    }

    /// Whether [`Session::interrupt`] was called.
    pub fn is_interrupted(&self) -> bool {
        self.control.interrupted()
    }

    /// End the session in order: the agent exits, the helper reaps it.
    /// [`SandboxError::Interrupted`] after an interrupt (the session is gone either way).
    pub fn shutdown(self) -> Result<(), SandboxError> {
        let Some(mut agent) = self.lock().take() else {
            return if self.control.interrupted() { Err(SandboxError::Interrupted) } else { Ok(()) };
        };
        self.control.helper_pid.store(0, Ordering::SeqCst);
        if self.control.interrupted() {
            agent.kill();
            return Err(SandboxError::Interrupted);
        }
        let asked = proto::send(&mut agent.sock, &Request::Shutdown)
            .and_then(|()| proto::recv::<proto::Response, _>(&mut agent.sock));
        if let Err(e) = asked {
            agent.kill();
            return Err(SandboxError::Agent(format!("shutdown request: {e}")));
        }
        drop(agent.sock);
        match agent.helper.wait() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(SandboxError::Agent(format!("the sandbox ended with {s}"))),
            Err(e) => Err(SandboxError::Agent(format!("waiting for the helper: {e}"))),
        }
    }

    /// End the session (killing every process in it) and start a fresh one over the same root.
    pub fn restart(&self) -> Result<(), SandboxError> {
        if self.control.interrupted() {
            return Err(SandboxError::Interrupted);
        }
        let mut guard = self.lock();
        if let Some(agent) = guard.take() {
            self.control.helper_pid.store(0, Ordering::SeqCst);
            agent.kill();
        }
        let agent = spawn(&self.config)?;
        self.control.helper_pid.store(agent.helper.id(), Ordering::SeqCst);
        // An interrupt that read the PID before the store above missed this helper; it set
        // the flag first, so it is seen here.
        if self.control.interrupted() {
            self.control.helper_pid.store(0, Ordering::SeqCst);
            agent.kill();
            return Err(SandboxError::Interrupted);
        }
        *guard = Some(agent);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Option<Agent>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call(&self, req: &Request) -> HostResult<Reply> {
        let interrupted = || HostError::new(HostErrorKind::Target, "the sandbox session was interrupted");
        if self.control.interrupted() {
            return Err(interrupted());
        }
        let mut guard = self.lock();
        let agent = guard
            .as_mut()
            .ok_or_else(|| HostError::new(HostErrorKind::Target, "the sandbox session has ended"))?;
        let answer = proto::send(&mut agent.sock, req)
            .and_then(|()| proto::recv::<proto::Response, _>(&mut agent.sock));
        answer.map_err(|e| {
            // The agent's socket closing is how an interrupt reaches a running request.
            if self.control.interrupted() {
                interrupted()
            } else {
                HostError::new(HostErrorKind::Target, format!("sandbox agent unreachable: {e}"))
            }
        })?
    }

    fn unit(&self, req: Request) -> HostResult<()> {
        match self.call(&req)? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// The [`Host`] file and account operations of a client that sends [`Request`]s to an agent:
/// shared by the sandbox [`Session`] and the [`GuestSession`]. The implementing type has
/// `call(&self, &Request) -> HostResult<Reply>` and `unit(&self, Request) -> HostResult<()>`.
macro_rules! remote_file_ops {
    () => {
        fn read_file(&self, path: &str) -> HostResult<Vec<u8>> {
            match self.call(&$crate::proto::Request::ReadFile { path: path.into() })? {
                $crate::proto::Reply::Bytes(b) => Ok(b),
                other => Err($crate::unexpected(other)),
            }
        }

        fn write_file(&self, path: &str, data: &[u8], how: WriteMode, mode: Option<u32>) -> HostResult<()> {
            self.unit($crate::proto::Request::WriteFile { path: path.into(), data: data.to_vec(), how, mode })
        }

        fn create_dir_all(&self, path: &str, mode: Option<u32>) -> HostResult<()> {
            self.unit($crate::proto::Request::CreateDirAll { path: path.into(), mode })
        }

        fn metadata(&self, path: &str) -> HostResult<Metadata> {
            match self.call(&$crate::proto::Request::Metadata { path: path.into() })? {
                $crate::proto::Reply::Metadata(m) => Ok(m),
                other => Err($crate::unexpected(other)),
            }
        }

        fn list_dir(&self, path: &str) -> HostResult<Vec<DirEntry>> {
            match self.call(&$crate::proto::Request::ListDir { path: path.into() })? {
                $crate::proto::Reply::Entries(e) => Ok(e),
                other => Err($crate::unexpected(other)),
            }
        }

        fn remove_file(&self, path: &str) -> HostResult<()> {
            self.unit($crate::proto::Request::RemoveFile { path: path.into() })
        }

        fn remove_dir(&self, path: &str, recursive: bool) -> HostResult<()> {
            self.unit($crate::proto::Request::RemoveDir { path: path.into(), recursive })
        }

        fn rename(&self, from: &str, to: &str) -> HostResult<()> {
            self.unit($crate::proto::Request::Rename { from: from.into(), to: to.into() })
        }

        fn copy_file(&self, from: &str, to: &str) -> HostResult<()> {
            self.unit($crate::proto::Request::CopyFile { from: from.into(), to: to.into() })
        }

        fn symlink(&self, target: &str, link: &str) -> HostResult<()> {
            self.unit($crate::proto::Request::Symlink { target: target.into(), link: link.into() })
        }

        fn read_link(&self, path: &str) -> HostResult<String> {
            match self.call(&$crate::proto::Request::ReadLink { path: path.into() })? {
                $crate::proto::Reply::Link(l) => Ok(l),
                other => Err($crate::unexpected(other)),
            }
        }

        fn set_permissions(&self, path: &str, mode: u32) -> HostResult<()> {
            self.unit($crate::proto::Request::SetPermissions { path: path.into(), mode })
        }

        fn set_owner(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> HostResult<()> {
            self.unit($crate::proto::Request::SetOwner { path: path.into(), uid, gid })
        }

        fn lookup_user(&self, name: &str) -> HostResult<u32> {
            $crate::lookup_account(self, name, "/etc/passwd", "user")
        }

        fn lookup_group(&self, name: &str) -> HostResult<u32> {
            $crate::lookup_account(self, name, "/etc/group", "group")
        }
    };
}
pub(crate) use remote_file_ops;

/// `name`'s id in the target's `file` (`/etc/passwd` or `/etc/group`); a number is an id.
pub(crate) fn lookup_account(host: &dyn Host, name: &str, file: &str, what: &str) -> HostResult<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let data = host.read_file(file).map_err(|e| {
        HostError::new(
            HostErrorKind::UnknownAccount,
            format!("{what} {name:?}: cannot read the image's {file}: {e}"),
        )
    })?;
    parse_account_db(&String::from_utf8_lossy(&data), name).ok_or_else(|| {
        HostError::new(
            HostErrorKind::UnknownAccount,
            format!("unknown {what} {name:?} (not in the image's {file})"),
        )
    })
}

/// The wire request for `req`: the session's base environment with the request's laid over.
pub(crate) fn exec_request(base: &[(String, String)], req: &ExecRequest) -> Request {
    let mut env = base.to_vec();
    for (k, v) in &req.env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    Request::Exec {
        argv: req.argv.clone(),
        env,
        cwd: req.cwd.clone(),
        stdin: req.stdin.clone(),
        timeout_ms: req.timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64),
    }
}

/// An agent's answer to an exec request.
pub(crate) fn exec_output(reply: Reply) -> HostResult<ExecOutput> {
    match reply {
        Reply::Exec { status, stdout, stderr, duration_us } => {
            Ok(ExecOutput { status, stdout, stderr, duration: Duration::from_micros(duration_us) })
        }
        other => Err(unexpected(other)),
    }
}

/// The id (third field) of `name` in an `/etc/passwd` or `/etc/group` text.
fn parse_account_db(text: &str, name: &str) -> Option<u32> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut fields = l.split(':');
        (fields.next()? == name).then(|| fields.nth(1)?.trim().parse().ok())?
    })
}

pub(crate) fn unexpected(reply: Reply) -> HostError {
    HostError::new(HostErrorKind::Target, format!("the agent sent an unexpected reply: {reply:?}"))
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(agent) = self.lock().take() {
            self.control.helper_pid.store(0, Ordering::SeqCst);
            agent.kill();
        }
    }
}

impl Host for Session {
    fn describe(&self) -> String {
        match &self.config.root {
            RootSpec::Dir(d) => format!("namespace sandbox over {}", d.display()),
            RootSpec::Overlay { lower, upper, .. } => format!(
                "namespace sandbox over an overlay of {} (writes to {})",
                lower.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(", "),
                upper.display()
            ),
        }
    }

    fn network_allowed(&self) -> bool {
        self.config.network == Network::Host
    }

    fn exec(&self, req: &ExecRequest) -> HostResult<ExecOutput> {
        exec_output(self.call(&exec_request(&self.config.env, req))?)
    }

    remote_file_ops!();

    fn reboot(&self) -> HostResult<()> {
        self.restart()
            .map_err(|e| HostError::new(HostErrorKind::Target, format!("restarting the sandbox: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_db_parsing() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/bash\nbuilder:x:4242:4343::/home/b:/bin/sh\n";
        assert_eq!(parse_account_db(passwd, "root"), Some(0));
        assert_eq!(parse_account_db(passwd, "builder"), Some(4242));
        assert_eq!(parse_account_db(passwd, "nobody"), None);
        assert_eq!(parse_account_db("g:x:12:a,b\n", "g"), Some(12));
        assert_eq!(parse_account_db("broken\n", "broken"), None);
    }

    #[test]
    fn overlay_options_refuse_separators() {
        let ok =
            overlay_options(&[PathBuf::from("/a"), PathBuf::from("/b")], Path::new("/u"), Path::new("/w"));
        assert_eq!(ok.unwrap(), "lowerdir=/a:/b,upperdir=/u,workdir=/w");
        assert!(overlay_options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err());
        assert!(overlay_options(&[], Path::new("/u"), Path::new("/w")).is_err());
    }

    #[test]
    fn session_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Session>();
    }
}
