//! The one error type of the crate.

use std::path::PathBuf;

/// The forms [`crate::ParentRef::parse`] accepts, listed in every unknown-parent error.
pub const ACCEPTED_FORMS: &str = "\
  debian-11-x86 | debian-12-x86 | debian-13-x86            built-in Debian bootstrap (bullseye, bookworm, trixie)
  arn:aws:imagebuilder:REGION:kiln:image/debian-12-x86/x.x.x  the same in ARN form (or an exact version)
  NAME/1.2.3  or  arn:aws:imagebuilder:REGION:ACCOUNT:image/NAME/1.2.3   an image kiln built before
  file:///path/disk.qcow2 | /path/disk.raw | disk.img       a disk image (qcow2 or raw)
  /path/root.tar | .tar.gz | .tgz | .tar.zst | .tar.xz      a root file system tarball";

/// Results of this crate.
pub type Result<T, E = ParentError> = std::result::Result<T, E>;

/// What can go wrong turning a parent reference into a root tree.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The reference is none of the accepted forms.
    #[error("unknown parent image `{input}`: {reason}\naccepted forms:\n{ACCEPTED_FORMS}")]
    UnknownParent { input: String, reason: String },

    /// A bootstrap specification that cannot be turned into a safe mmdebstrap call.
    #[error("invalid bootstrap specification: {0}")]
    InvalidSpec(String),

    /// An external tool could not be started.
    #[error("cannot run `{tool}` (install the Debian package `{package}`): {source}")]
    ToolMissing { tool: String, package: &'static str, source: std::io::Error },

    /// An external tool exited with an error.
    #[error("`{tool}` failed while {doing} ({status}):\n{output}")]
    ToolFailed { tool: String, doing: String, status: String, output: String },

    /// A file operation failed.
    #[error("{doing} `{}`: {source}", path.display())]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },

    /// The destination of a root tree already holds something.
    #[error("destination `{}` exists and is not an empty directory", .0.display())]
    DestinationNotEmpty(PathBuf),

    /// A disk image that cannot be read: corrupt, truncated, unsupported format or layout.
    #[error("cannot import disk image `{}`: {reason}", path.display())]
    BadDisk { path: PathBuf, reason: String },

    /// A disk image without a Linux root file system kiln can read.
    #[error("no Linux root file system found in disk image `{}`: {reason}", path.display())]
    NoRootFs { path: PathBuf, reason: String },

    /// The work was cancelled; the tool was killed and nothing it made was kept.
    #[error("cancelled")]
    Cancelled,

    /// A tarball that could not be extracted, or whose content is not a root tree.
    #[error("cannot import root tarball `{}`: {reason}", path.display())]
    BadTarball { path: PathBuf, reason: String },
}

impl ParentError {
    pub(crate) fn io(doing: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ParentError::Io { doing, path, source }
    }
}
