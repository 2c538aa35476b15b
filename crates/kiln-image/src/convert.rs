//! Output formats: the raw disk converted with `qemu-img convert`, and sha256 digests.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};
use crate::tool;

/// A disk image format kiln writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutputFormat {
    Raw,
    Qcow2 {
        /// zlib-compressed clusters: smaller, slower to write, read-only in practice.
        #[serde(default)]
        compressed: bool,
    },
    /// VMware, monolithic sparse.
    Vmdk,
    /// Hyper-V, dynamic.
    Vhdx,
    /// Virtual PC / Azure (qemu-img's `vpc`), dynamic, exact virtual size.
    Vhd,
}

impl OutputFormat {
    /// File extension, which is also the format's name in manifests.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 { .. } => "qcow2",
            OutputFormat::Vmdk => "vmdk",
            OutputFormat::Vhdx => "vhdx",
            OutputFormat::Vhd => "vhd",
        }
    }

    /// Why this format's bytes differ between two runs over the same raw disk, if they do
    /// (qemu-img 7.2 behaviour; the raw disk and qcow2 are identical).
    pub fn non_reproducible(self) -> Option<&'static str> {
        match self {
            OutputFormat::Raw | OutputFormat::Qcow2 { .. } => None,
            OutputFormat::Vmdk => Some("vmdk: qemu-img writes a random content id (CID) into the descriptor"),
            OutputFormat::Vhdx => {
                Some("vhdx: qemu-img writes random file, data and log GUIDs into the headers")
            }
            OutputFormat::Vhd => {
                Some("vhd: qemu-img writes the creation time and a random unique id into the footer")
            }
        }
    }
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub format: OutputFormat,
    pub path: PathBuf,
    /// Length of the file in bytes.
    pub size: u64,
    /// Bytes the file actually occupies (it is sparse where the format allows).
    pub allocated: u64,
    /// sha256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// Writes `raw` as `format` to `out` (the raw disk itself is `raw`).
pub(crate) fn convert(raw: &Path, out: &Path, format: OutputFormat) -> Result<()> {
    let mut cmd = tool::command("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O"]);
    match format {
        OutputFormat::Raw => return Ok(()),
        OutputFormat::Qcow2 { compressed } => {
            cmd.arg("qcow2");
            if compressed {
                cmd.args(["-c", "-o", "compression_type=zlib"]);
            }
        }
        OutputFormat::Vmdk => {
            cmd.args(["vmdk", "-o", "subformat=monolithicSparse"]);
        }
        OutputFormat::Vhdx => {
            cmd.args(["vhdx", "-o", "subformat=dynamic"]);
        }
        OutputFormat::Vhd => {
            cmd.args(["vpc", "-o", "subformat=dynamic,force_size=on"]);
        }
    }
    cmd.arg(raw).arg(out);
    tool::run(cmd, "qemu-utils", &format!("converting the disk to {}", format.extension()))?;
    Ok(())
}

/// A sha256 being computed in the background, so that hashing one artifact overlaps writing
/// the next.
///
/// The digest comes from coreutils' sha256sum (always installed on Debian): it hashes at
/// full speed however kiln was built, where the sha2 crate in a debug build manages about
/// 15 MB/s, two minutes for a typical disk.
#[derive(Debug)]
pub(crate) struct PendingDigest {
    child: Option<Child>,
    path: PathBuf,
    format: OutputFormat,
}

impl PendingDigest {
    pub(crate) fn start(path: &Path, format: OutputFormat) -> Result<PendingDigest> {
        let mut cmd = tool::command("sha256sum");
        cmd.arg("--binary").arg("--").arg(path).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| ImageError::ToolMissing {
            tool: "sha256sum".into(),
            package: "coreutils",
            source,
        })?;
        Ok(PendingDigest { child: Some(child), path: path.to_owned(), format })
    }

    /// Waits for the digest and describes the file.
    pub(crate) fn finish(mut self) -> Result<Artifact> {
        let child = self.child.take().expect("finish is called once");
        let doing = format!("hashing {}", self.path.display());
        let out = child.wait_with_output().map_err(|source| ImageError::ToolMissing {
            tool: "sha256sum".into(),
            package: "coreutils",
            source,
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let digest =
            text.get(..64).filter(|d| out.status.success() && d.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(digest) = digest else {
            return Err(ImageError::ToolFailed {
                tool: "sha256sum".into(),
                doing,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
            });
        };
        let meta = std::fs::metadata(&self.path).map_err(|e| ImageError::io("reading", &self.path, e))?;
        Ok(Artifact {
            format: self.format,
            path: self.path.clone(),
            size: meta.len(),
            allocated: meta.blocks() * 512,
            sha256: digest.to_owned(),
        })
    }
}

impl Drop for PendingDigest {
    fn drop(&mut self) {
        // Only reached with a child when assembly failed part way: stop hashing.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
