//! Running the external tools (mke2fs, mkfs.fat, mtools, qemu-img) with a fixed environment,
//! so that the host's locale, time zone or mtools configuration cannot change their output.

use std::process::{Command, Output};

use crate::error::{ImageError, Result};

/// A command for `tool` from Debian package `package`, with a scrubbed environment.
pub(crate) fn command(tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        // mke2fs sorts directory entries with alphasort(), which follows LC_COLLATE.
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        // mtools refuses images whose FAT geometry it finds odd unless told not to check;
        // the images are ours, and its per-user configuration must not apply.
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null");
    c
}

/// Runs `cmd` to completion; a start failure names the package to install, a non-zero exit
/// carries stderr.
pub(crate) fn run(mut cmd: Command, package: &'static str, doing: &str) -> Result<Output> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out =
        cmd.output().map_err(|source| ImageError::ToolMissing { tool: tool.clone(), package, source })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.trim().is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        return Err(ImageError::ToolFailed {
            tool,
            doing: doing.to_owned(),
            status: out.status.to_string(),
            stderr: stderr.trim_end().to_owned(),
        });
    }
    Ok(out)
}
