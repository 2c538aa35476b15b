//! The interface of "where a step runs".
//!
//! A component step runs against a *target system*: a root file system being built inside the
//! namespace sandbox today, a booted test or build VM tomorrow. This crate owns the one small
//! trait, [`Host`], through which the component engine and its action modules reach that
//! system: run a process, and do file operations whose paths are absolute paths *inside* the
//! target. It owns nothing else. It must not know about component documents (the engine's
//! business), namespaces or QEMU (the implementors' business): the trait is the seam that lets
//! one step engine drive every kind of target.
//!
//! Guarantees an implementor must give:
//! - every path is interpreted inside the target's root: `..` and symlinks (absolute or
//!   relative) never resolve to anything outside it;
//! - a process started by [`Host::exec`] and everything it spawns is gone when `exec` returns,
//!   including when the timeout fires;
//! - user and group names are resolved against the target's own account databases.
//!
//! It also owns [`Cancel`], the cancellation token every layer that drives a target shares.

use std::time::Duration;

mod cancel;

pub use cancel::{Cancel, CancelGuard};

use serde::{Deserialize, Serialize};

/// A process to run on the target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in the target's `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment variables added to the target's base environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the target (default `/`).
    pub cwd: Option<String>,
    /// Bytes written to the process's standard input, which is then closed.
    pub stdin: Option<Vec<u8>>,
    /// Wall-clock limit; when it passes, the whole process tree is killed.
    pub timeout: Option<Duration>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed by the host because the timeout passed.
    TimedOut,
}

impl ExitStatus {
    /// True for exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The exit code as a shell would report it (128+signal for a signal, 124 for a timeout,
    /// as timeout(1) does).
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
            ExitStatus::TimedOut => 124,
        }
    }
}

/// What a finished process left behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

/// The kind of a directory entry or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Metadata of a path on the target (of the link itself, never of its target).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirEntry {
    /// File name, not a path.
    pub name: String,
    pub kind: FileKind,
}

/// How [`Host::write_file`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteMode {
    /// Create or replace the file's content.
    Truncate,
    /// Create the file or add to its end.
    Append,
    /// Fail with [`HostErrorKind::AlreadyExists`] if the path exists.
    CreateNew,
}

/// What went wrong on the target, in terms callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    /// A path tried to leave the target's root, or is not absolute.
    InvalidPath,
    /// An unknown user or group name.
    UnknownAccount,
    /// The operation needs something the target does not allow (network, reboot, ...).
    Unsupported,
    /// The target itself failed (sandbox died, agent unreachable).
    Target,
    Other,
}

/// An error from the target, naming the path or operation involved.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct HostError {
    pub kind: HostErrorKind,
    pub message: String,
}

impl HostError {
    pub fn new(kind: HostErrorKind, message: impl Into<String>) -> Self {
        HostError { kind, message: message.into() }
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// A target system that component steps act on. See the crate documentation for the
/// guarantees every implementation gives. Paths are absolute paths inside the target.
pub trait Host: Send + Sync {
    /// A short human description for logs and reports ("namespace sandbox over /x").
    fn describe(&self) -> String;

    /// Whether steps may reach the network (the infrastructure configuration decides).
    fn network_allowed(&self) -> bool;

    /// Run a process to completion (or timeout) and collect its output.
    fn exec(&self, req: &ExecRequest) -> HostResult<ExecOutput>;

    fn read_file(&self, path: &str) -> HostResult<Vec<u8>>;
    /// Write `data`; `mode` sets permission bits of a file this call creates.
    fn write_file(&self, path: &str, data: &[u8], how: WriteMode, mode: Option<u32>) -> HostResult<()>;
    /// Create a directory and its missing parents (like `mkdir -p`).
    fn create_dir_all(&self, path: &str, mode: Option<u32>) -> HostResult<()>;
    /// Metadata of the path itself; a symlink is reported as a symlink.
    fn metadata(&self, path: &str) -> HostResult<Metadata>;
    fn list_dir(&self, path: &str) -> HostResult<Vec<DirEntry>>;
    fn remove_file(&self, path: &str) -> HostResult<()>;
    /// Remove an empty directory, or a whole tree when `recursive`.
    fn remove_dir(&self, path: &str, recursive: bool) -> HostResult<()>;
    /// Rename within the target; replaces an existing file at `to`.
    fn rename(&self, from: &str, to: &str) -> HostResult<()>;
    /// Copy one regular file's content and permission bits.
    fn copy_file(&self, from: &str, to: &str) -> HostResult<()>;
    /// Create a symlink at `link` whose content is `target`, stored as given.
    fn symlink(&self, target: &str, link: &str) -> HostResult<()>;
    fn read_link(&self, path: &str) -> HostResult<String>;
    /// Set permission bits; never follows a symlink at `path`.
    fn set_permissions(&self, path: &str, mode: u32) -> HostResult<()>;
    /// Change owner and/or group; never follows a symlink at `path`.
    fn set_owner(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> HostResult<()>;
    /// Resolve a user name (or a numeric id) through the target's own /etc/passwd.
    fn lookup_user(&self, name: &str) -> HostResult<u32>;
    /// Resolve a group name (or a numeric id) through the target's own /etc/group.
    fn lookup_group(&self, name: &str) -> HostResult<u32>;

    /// Restart the target as a reboot would: every process ends, the file system stays.
    /// A VM really reboots; the namespace sandbox ends its session and starts a fresh one
    /// over the same root. Returns once the target accepts requests again.
    fn reboot(&self) -> HostResult<()>;
}
