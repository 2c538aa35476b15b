//! Running component phases on a stack of layers in the sandbox.

use std::path::{Path, PathBuf};

use kiln_component::document::{Document, PhaseName};
use kiln_component::engine::{Engine, Observer, RunOptions};
use kiln_component::report::{DocumentReport, RunReport};
use kiln_host::{Cancel, CancelGuard, ExecRequest, Host};
use kiln_sandbox::{Network, RootSpec, Sandbox, SandboxConfig, Session};

use crate::BuildError;

/// One component as the build runs it: its validated document and parameter values.
#[derive(Debug, Clone)]
pub struct ResolvedComponent {
    pub name: String,
    pub version: String,
    /// sha256 of the document text.
    pub digest: String,
    pub document: Document,
    pub parameters: Vec<(String, String)>,
}

/// Where steps run: the layers (bottom first) and where writes land.
#[derive(Debug)]
pub struct Target<'a> {
    pub layers: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    pub network: Network,
    /// Added to every step's environment (`SOURCE_DATE_EPOCH`).
    pub env: &'a [(String, String)],
    /// The build's token: a cancel kills the session under the running step.
    pub cancel: Option<&'a Cancel>,
}

impl<'a> Target<'a> {
    /// Steps over `layers` (bottom first), writing into `scratch`'s upper directory.
    pub fn over(
        layers: &'a [PathBuf],
        scratch: &'a crate::layers::Scratch,
        network: Network,
        env: &'a [(String, String)],
    ) -> Self {
        Target { layers, upper: &scratch.upper, work: &scratch.work, network, env, cancel: None }
    }

    /// The same target, stopped by `cancel`.
    pub fn cancelled_by(self, cancel: Option<&'a Cancel>) -> Self {
        Target { cancel, ..self }
    }

    /// A session over the target, with the hook that interrupts it on a cancel (keep the
    /// guard while the session is used; drop it before the session ends).
    fn start(&self) -> Result<(Session, Option<CancelGuard>), BuildError> {
        check_cancel(self.cancel)?;
        let session = Sandbox::start(self.config()).map_err(|e| BuildError::Sandbox(e.to_string()))?;
        let guard = self.cancel.map(|c| {
            let interrupter = session.interrupter();
            c.on_cancel(move || interrupter.interrupt())
        });
        Ok((session, guard))
    }

    /// Ends a session started by [`Target::start`]: [`BuildError::Cancelled`] when the build
    /// was cancelled meanwhile, whatever the session's own end says.
    fn finish(&self, session: Session, guard: Option<CancelGuard>) -> Result<(), BuildError> {
        drop(guard);
        let ended = session.shutdown();
        check_cancel(self.cancel)?;
        ended.map_err(|e| BuildError::Sandbox(e.to_string()))
    }

    fn config(&self) -> SandboxConfig {
        // overlayfs wants the top layer first.
        let lower: Vec<PathBuf> = self.layers.iter().rev().cloned().collect();
        let mut config = SandboxConfig::new(RootSpec::Overlay {
            lower,
            upper: self.upper.to_path_buf(),
            work: self.work.to_path_buf(),
        });
        config.network = self.network;
        config.env.extend(self.env.iter().cloned());
        config
    }
}

pub(crate) fn is_cancelled(cancel: Option<&Cancel>) -> bool {
    cancel.is_some_and(Cancel::is_cancelled)
}

/// [`BuildError::Cancelled`] once `cancel` is cancelled.
pub(crate) fn check_cancel(cancel: Option<&Cancel>) -> Result<(), BuildError> {
    if is_cancelled(cancel) { Err(BuildError::Cancelled) } else { Ok(()) }
}

/// `e`, or [`BuildError::Cancelled`] when `cancel` was cancelled: whatever failed then failed
/// because its process or instance was killed.
pub(crate) fn or_cancelled(cancel: Option<&Cancel>, e: BuildError) -> BuildError {
    if is_cancelled(cancel) { BuildError::Cancelled } else { e }
}

/// Run `phase` of each component in order on `target`; the report covers them all.
/// [`BuildError::Cancelled`] when the target's token was cancelled, even if the phase got to
/// its end: the caller must not publish what it made.
pub fn run_phase(
    target: &Target<'_>,
    components: &[&ResolvedComponent],
    phase: PhaseName,
    working_dir: &str,
    log_dir: &Path,
    earlier: &[DocumentReport],
    observer: &dyn Observer,
) -> Result<RunReport, BuildError> {
    let (session, guard) = target.start()?;
    let report =
        run_phase_on(&session, components, phase, working_dir, log_dir, earlier, observer, target.cancel);
    target.finish(session, guard)?;
    Ok(report)
}

/// Run `phase` of each component in order on `host` (a sandbox or a booted VM), stopping at
/// the first failure or at a cancel of `cancel`; the report covers them all.
#[allow(clippy::too_many_arguments)] // one call's whole context; a struct would only rename it
pub fn run_phase_on(
    host: &dyn Host,
    components: &[&ResolvedComponent],
    phase: PhaseName,
    working_dir: &str,
    log_dir: &Path,
    earlier: &[DocumentReport],
    observer: &dyn Observer,
    cancel: Option<&Cancel>,
) -> RunReport {
    let mut reports: Option<RunReport> = None;
    for c in components {
        if !c.document.phases.iter().any(|p| p.name == phase) {
            continue;
        }
        let options = RunOptions {
            phases: vec![phase],
            parameters: c.parameters.clone(),
            working_dir: working_dir.to_string(),
            log_dir: Some(log_dir.to_path_buf()),
            earlier: earlier.to_vec(),
            cancel: cancel.cloned(),
            ..RunOptions::default()
        };
        let report = Engine::new(host, options, observer).run(std::slice::from_ref(&c.document));
        let failed = !report.success();
        match &mut reports {
            None => reports = Some(report),
            Some(all) => {
                all.documents.extend(report.documents);
                if failed {
                    all.status = report.status;
                    all.failure_message = report.failure_message;
                }
            }
        }
        if failed {
            break;
        }
    }
    reports.unwrap_or_else(|| empty_report(phase))
}

/// Run a shell script in the sandbox over `target` (the cleanup layer).
pub fn run_script(target: &Target<'_>, script: &str) -> Result<(), BuildError> {
    let (session, guard) = target.start()?;
    let out = session.exec(&ExecRequest {
        argv: vec!["sh".into(), "-eu".into(), "-c".into(), script.to_string()],
        timeout: Some(std::time::Duration::from_secs(600)),
        ..ExecRequest::default()
    });
    target.finish(session, guard)?;
    let out = out.map_err(|e| BuildError::Sandbox(e.to_string()))?;
    if !out.status.success() {
        return Err(BuildError::Cleanup(format!(
            "the cleanup script failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

pub(crate) fn empty_report(phase: PhaseName) -> RunReport {
    let now = time::OffsetDateTime::now_utc();
    RunReport {
        execution_id: format!("none-{}", phase.as_str()),
        status: kiln_component::report::Status::Success,
        timing: kiln_component::report::Timing::since(now),
        failure_message: None,
        target: "no component has this phase".into(),
        documents: Vec::new(),
    }
}

/// Open an interactive shell (the caller's terminal) chrooted into the overlay of `layers`
/// (bottom first), for `--on-error shell`. Writes go to a throw-away upper directory. The
/// mounts live in a private mount namespace made by util-linux `unshare`, so they vanish with
/// the shell. Unlike build steps, this debugging shell sees the host's /dev and network.
pub fn interactive_shell(layers: &[PathBuf], scratch: &Path, step: &str) -> Result<(), BuildError> {
    let upper = scratch.join("shell-upper");
    let work = scratch.join("shell-work");
    let mnt = scratch.join("shell-root");
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir_all(d).map_err(|e| BuildError::io("preparing the debug shell", d, e))?;
    }
    let lower: Vec<String> = layers.iter().rev().map(|p| p.display().to_string()).collect();
    let script = format!(
        "set -e; mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m}; \
         mount -t proc proc {m}/proc; mount --rbind /dev {m}/dev; mount -t tmpfs tmpfs {m}/tmp; \
         cd {m}; exec chroot {m} /bin/sh -c 'cd /root 2>/dev/null; exec /bin/bash -l || exec /bin/sh'",
        lower.join(":"),
        upper.display(),
        work.display(),
        m = mnt.display()
    );
    eprintln!(
        "kiln: step {step} failed; opening a shell in the image as it was then (exit to end the build)."
    );
    eprintln!("kiln: changes made in this shell are discarded.");
    let status = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--uts",
            "--ipc",
            "sh",
            "-c",
            &script,
        ])
        .status()
        .map_err(|e| {
            BuildError::Sandbox(format!("cannot start the debug shell with unshare (util-linux): {e}"))
        })?;
    let _ = crate::layers::remove_tree(&upper);
    let _ = crate::layers::remove_tree(&work);
    let _ = std::fs::remove_dir(&mnt);
    if !status.success() && status.code() != Some(130) {
        tracing::warn!("the debug shell ended with {status}");
    }
    Ok(())
}
