//! Running external tools (mmdebstrap, qemu-img, debugfs, tar, the mount helper) with a fixed
//! environment, and the small file-system helpers every entry point shares.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{ParentError, Result};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command with a scrubbed environment (C locale, UTC, a fixed PATH; proxy settings kept so
/// apt can reach a mirror behind one).
pub(crate) fn command(tool: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(tool);
    c.env_clear().env("PATH", PATH).env("LC_ALL", "C").env("TZ", "UTC");
    for (k, v) in std::env::vars_os() {
        let key = k.to_string_lossy().to_ascii_lowercase();
        if matches!(key.as_str(), "http_proxy" | "https_proxy" | "no_proxy" | "ftp_proxy") {
            c.env(k, v);
        }
    }
    c
}

/// Makes the child receive SIGKILL when the thread that spawned it dies, so a killed kiln
/// takes its helpers (and with them their private mount namespaces) along.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe prctl(2) and getppid(2).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

/// Runs `cmd` to completion; a start failure names the package to install, a non-zero exit
/// carries the tail of its output.
pub(crate) fn run(mut cmd: Command, package: &'static str, doing: &str) -> Result<Output> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out =
        cmd.output().map_err(|source| ParentError::ToolMissing { tool: tool.clone(), package, source })?;
    if !out.status.success() {
        return Err(ParentError::ToolFailed {
            tool,
            doing: doing.to_owned(),
            status: out.status.to_string(),
            output: tail(&out, 40),
        });
    }
    Ok(out)
}

/// The last `lines` lines of stderr, or of stdout when stderr is empty.
pub(crate) fn tail(out: &Output, lines: usize) -> String {
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `tool` is an executable on the fixed PATH.
pub(crate) fn have(tool: &str) -> bool {
    PATH.split(':').any(|d| Path::new(d).join(tool).is_file())
}

/// A tree being built next to its final place: created empty, renamed onto the destination by
/// [`Staging::commit`], removed with everything in it when dropped uncommitted (an error, a
/// panic). A leftover from a killed run has a fixed name and is removed by the next run.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Staging {
    /// Checks that `dest` is absent or an empty directory and creates the staging directory
    /// beside it.
    pub(crate) fn new(dest: &Path) -> Result<Staging> {
        match fs::read_dir(dest) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(ParentError::DestinationNotEmpty(dest.to_owned()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(ParentError::DestinationNotEmpty(dest.to_owned()));
            }
            Err(e) => return Err(ParentError::io("cannot read", dest)(e)),
        }
        let name = dest
            .file_name()
            .ok_or_else(|| ParentError::DestinationNotEmpty(dest.to_owned()))?
            .to_string_lossy();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(ParentError::io("cannot create", &parent))?;
        let path = parent.join(format!(".{name}.kiln-partial"));
        remove_tree(&path)?;
        fs::create_dir(&path).map_err(ParentError::io("cannot create", &path))?;
        Ok(Staging { path, dest: dest.to_owned(), done: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished tree onto the destination.
    pub(crate) fn commit(mut self) -> Result<()> {
        if self.dest.is_dir() {
            fs::remove_dir(&self.dest).map_err(ParentError::io("cannot replace", &self.dest))?;
        }
        fs::rename(&self.path, &self.dest).map_err(ParentError::io("cannot move tree to", &self.dest))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes `path` and everything below it; absence is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ParentError::io("cannot inspect", path)(e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(ParentError::io("cannot remove", path)),
        Ok(_) => fs::remove_file(path).map_err(ParentError::io("cannot remove", path)),
    }
}

/// Quotes `s` for a POSIX shell (and for mmdebstrap's shellwords parsing of special hooks).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
