//! Parent images: this crate owns turning a parent image reference into a root tree on disk,
//! the base layer a build starts from. It parses the references a recipe may give
//! ([`ParentRef`]: the built-in `debian-NN-x86` images, their ARNs, kiln images by name and
//! version, disk images and root tarballs), bootstraps the built-in Debian suites with
//! mmdebstrap through a local package cache ([`bootstrap`]), and imports raw or qcow2 disks and
//! tarballs ([`import_disk`], [`import_tarball`]), reporting what the tree holds (suite,
//! packages, digests, timings). It must not know components, the sandbox, disk assembly or
//! the catalogue: a kiln image reference is returned for the caller to resolve.

mod bootstrap;
mod disk;
mod dpkg;
mod error;
mod import;
mod parent_ref;
mod tool;

pub use bootstrap::{
    BaseInfo, BootstrapSpec, DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR, Timings, bootstrap, bootstrap_key,
    bootstrap_until, default_packages,
};
pub use disk::{FsInfo, GPT_LINUX_FS, GPT_ROOT_X86_64, Partition, TableKind};
pub use dpkg::{Package, installed_packages, package_digest};
pub use error::{ACCEPTED_FORMS, ParentError, Result};
pub use import::{
    ImportInfo, ImportedMount, SourceFormat, disk_format, import_disk, import_tarball, root_partition,
};
pub use parent_ref::{ParentRef, Suite};
