//! The one error type of disk assembly. Every variant names the path or tool involved, what
//! failed, and (in its message) what to do about it, because these errors end up in front of a
//! user as the reason a build FAILED.

use std::path::PathBuf;

/// Why a disk could not be laid out or assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The disk layout is inconsistent before any work is done.
    #[error("invalid disk layout: {reason}\nhint: {hint}")]
    InvalidLayout { reason: String, hint: String },

    /// A partition (fixed size, or the disk size given for the root) cannot hold its content.
    #[error(
        "partition {mount_point} is too small: {size_mib} MiB for {content_mib} MiB of content, \
         {needed_mib} MiB needed with file system overhead\nhint: set its size to at least \
         {needed_mib} MiB, or let kiln size it from its content"
    )]
    PartitionTooSmall { mount_point: String, size_mib: u64, content_mib: u64, needed_mib: u64 },

    /// A mount point inside the tree is not a plain directory (a symlink or a file): kiln
    /// would have to follow it, possibly out of the tree, to split the tree there.
    #[error(
        "mount point {mount_point} is a {found} in the image tree at {path}, not a directory\n\
         hint: make {mount_point} a real directory in the image, or drop that partition"
    )]
    MountPointNotDirectory { mount_point: String, path: PathBuf, found: &'static str },

    /// The root of the tree itself is unusable.
    #[error(
        "image tree {path} is not a directory (or is a symlink)\nhint: pass the root file system directory itself"
    )]
    TreeNotDirectory { path: PathBuf },

    /// A layer stack with no layers.
    #[error("the image's layer stack is empty\nhint: pass at least the base tree")]
    NoLayers,

    /// An overlayfs layer uses a feature kiln does not merge (kiln's overlays are mounted
    /// without redirect_dir and metacopy, so their layers never hold these).
    #[error(
        "overlayfs layer entry {path} cannot be merged: {reason}\nhint: build the layers on \
         overlays mounted with redirect_dir=off and metacopy=off (kiln's defaults)"
    )]
    OverlayUnsupported { path: PathBuf, reason: String },

    /// A file system operation on the tree, the staging area or an output failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The ESP (FAT) cannot hold something found under /boot/efi in the tree.
    #[error(
        "{path} cannot be stored on the EFI system partition (FAT): {reason}\nhint: keep only regular files and directories under /boot/efi"
    )]
    UnsupportedOnEsp { path: PathBuf, reason: String },

    /// No kernel or initramfs was found in the tree.
    #[error(
        "no bootable kernel in the image tree {tree}: {reason}\nhint: install a kernel package (such as linux-image-amd64) and an initramfs generator in a build component"
    )]
    NoKernel { tree: PathBuf, reason: String },

    /// No systemd-boot EFI binary was found in the image or on the build host.
    #[error(
        "no systemd-boot EFI binary: looked in {looked:?}\nhint: install systemd-boot-efi in the image (preferred) or on the build host"
    )]
    NoBootLoader { looked: Vec<PathBuf> },

    /// An external tool could not be started (usually: not installed).
    #[error("cannot run {tool}: {source}\nhint: install the Debian package {package}")]
    ToolMissing {
        tool: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// An external tool ran and failed.
    #[error("{tool} failed ({status}) while {doing}:\n{stderr}")]
    ToolFailed { tool: String, doing: String, status: String, stderr: String },

    /// An ext4 image written by mke2fs did not have the shape kiln expects when it clamps
    /// inode timestamps (a bug or an unexpected mke2fs version).
    #[error(
        "unexpected ext4 layout in {path} while clamping timestamps: {reason}\nhint: report this with `mke2fs -V` output"
    )]
    Ext4Layout { path: PathBuf, reason: String },
}

impl ImageError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io { action, path: path.into(), source }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
