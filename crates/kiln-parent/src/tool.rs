//! Running external tools (mmdebstrap, qemu-img, debugfs, tar, the mount helper) with a fixed
//! environment, and the small file-system helpers every entry point shares.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_host::Cancel;

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
pub(crate) fn run(cmd: Command, package: &'static str, doing: &str) -> Result<Output> {
    run_until(cmd, package, doing, None)
}

/// How long a cancelled tool may take to clean up after SIGTERM before its group is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How often a running tool is checked for a cancel.
const POLL: Duration = Duration::from_millis(100);

/// [`run`], ending early with [`ParentError::Cancelled`] when `cancel` is cancelled: the tool
/// runs as the leader of a process group of its own, which gets SIGTERM (mmdebstrap then
/// removes its temporary files) and, after [`TERM_GRACE`], SIGKILL, so whatever the tool
/// started goes too. The tool's own output is read by threads meanwhile, so a chatty tool
/// never blocks on a full pipe.
pub(crate) fn run_until(
    mut cmd: Command,
    package: &'static str,
    doing: &str,
    cancel: Option<&Cancel>,
) -> Result<Output> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let Some(cancel) = cancel else {
        let out = cmd.output().map_err(|source| ParentError::ToolMissing {
            tool: tool.clone(),
            package,
            source,
        })?;
        return check(tool, doing, out);
    };
    if cancel.is_cancelled() {
        return Err(ParentError::Cancelled);
    }
    // Its own group: signalled as one, and out of the terminal's foreground group, so a
    // Ctrl-C reaches kiln (which cancels in order) rather than the tool directly.
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().map_err(|source| ParentError::ToolMissing { tool: tool.clone(), package, source })?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let group = child.id() as libc::pid_t;
    let mut termed: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if cancel.is_cancelled() {
            match termed {
                None => {
                    // SAFETY: killpg(2) of the group this function made; its leader is our
                    // unreaped child, so the group id cannot have been reused.
                    unsafe { libc::killpg(group, libc::SIGTERM) };
                    termed = Some(Instant::now());
                }
                Some(t) if t.elapsed() >= TERM_GRACE => {
                    // SAFETY: as above.
                    unsafe { libc::killpg(group, libc::SIGKILL) };
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(POLL);
    };
    if termed.is_some() {
        // The leader is gone; what it left in its group goes now, before the caller removes
        // the tree those processes may still be writing to.
        // SAFETY: the group id is still that of our child (reaped just now, but a group id
        // stays unused while any member lives; with none left this signals nobody).
        unsafe { libc::killpg(group, libc::SIGKILL) };
    }
    let status = status.map_err(|source| ParentError::ToolMissing { tool: tool.clone(), package, source })?;
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if cancel.is_cancelled() {
        return Err(ParentError::Cancelled);
    }
    check(tool, doing, out)
}

fn check(tool: String, doing: &str, out: Output) -> Result<Output> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Live processes whose command line is exactly `argv`.
    fn running(argv: &[&str]) -> usize {
        let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
            .filter(|e| {
                // A zombie not yet reaped by its new parent is no running process.
                fs::read_to_string(e.path().join("stat"))
                    .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            })
            .count()
    }

    #[test]
    fn a_cancelled_tool_and_what_it_started_are_killed() {
        let cancel = Cancel::new();
        let mut cmd = command("sh");
        // A background child in the tool's group, and a foreground one: both must go. The
        // marker is used by no other test.
        cmd.args(["-c", "sleep 3219 & sleep 3219; echo not reached"]);
        let c = cancel.clone();
        let canceller = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while running(&["sleep", "3219"]) < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            c.cancel();
            Instant::now()
        });
        let result = run_until(cmd, "dash", "sleeping", Some(&cancel));
        let cancelled_at = canceller.join().unwrap();
        let took = cancelled_at.elapsed();
        assert!(matches!(result, Err(ParentError::Cancelled)), "{result:?}");
        assert!(took < Duration::from_secs(2), "returned {took:?} after the cancel");
        assert_eq!(running(&["sleep", "3219"]), 0, "a process of the cancelled tool is still running");
    }

    #[test]
    fn an_uncancelled_tool_runs_to_its_end_with_its_output() {
        let cancel = Cancel::new();
        let mut cmd = command("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let out = run_until(cmd, "dash", "echoing", Some(&cancel)).unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let mut cmd = command("sh");
        cmd.args(["-c", "echo why >&2; exit 4"]);
        let e = run_until(cmd, "dash", "failing", Some(&cancel)).unwrap_err();
        assert!(matches!(&e, ParentError::ToolFailed { output, .. } if output == "why"), "{e}");
    }
}
