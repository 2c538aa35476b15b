//! What `kiln scan` and `kiln compliance` read: a root directory, a disk file, or a catalogued
//! image, the last two imported into a temporary root under KILN_HOME/tmp.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln_build::Kiln;

/// The root to read for TARGET, how reports name it, and the temporary folder of an imported
/// disk (removed when dropped).
pub fn root_of(home: &Path, target: &str) -> Result<(PathBuf, String, Option<tempfile::TempDir>)> {
    let path = Path::new(target);
    if path.is_dir() {
        return Ok((path.to_path_buf(), target.to_string(), None));
    }
    let (disk, label, _) = disk_of(home, target, &["raw", "qcow2"])?;
    let (root, scratch) = import_root(home, &disk)?;
    Ok((root, label, Some(scratch)))
}

/// The disk for TARGET (a disk file, or a catalogued image's disk in the first of `formats`
/// it has), how reports name it, and the catalogued image.
pub fn disk_of(
    home: &Path,
    target: &str,
    formats: &[&str],
) -> Result<(PathBuf, String, Option<kiln_store::Image>)> {
    let path = Path::new(target);
    if path.is_file() {
        Ok((path.to_path_buf(), target.to_string(), None))
    } else if path.is_dir() {
        bail!(
            "{target} is a directory: give a raw or qcow2 disk or a catalogued image (NAME/VERSION[/BUILD] or ARN)"
        );
    } else if target.starts_with(['/', '.']) {
        bail!(
            "{target} does not exist: give a root directory, a disk file or a catalogued image (NAME/VERSION[/BUILD] or ARN)"
        );
    } else if target.starts_with("arn:") || target.contains('/') {
        let kiln = Kiln::open(home)?;
        let image = kiln.find_image(target)?;
        Ok((kiln.image_disk(&image, formats)?, image.arn.clone(), Some(image)))
    } else {
        bail!("{target} is not a directory, a disk file or a catalogued image (NAME/VERSION[/BUILD] or ARN)");
    }
}

/// The root file system of a raw or qcow2 disk, imported into a temporary folder under
/// KILN_HOME/tmp (removed when the returned guard is dropped).
pub fn import_root(home: &Path, disk: &Path) -> Result<(PathBuf, tempfile::TempDir)> {
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let scratch = tempfile::Builder::new().prefix("read-").tempdir_in(&tmp)?;
    let root = scratch.path().join("root");
    eprintln!("importing the root file system of {} (needs root)", disk.display());
    kiln_parent::import_disk(disk, &root)
        .with_context(|| format!("cannot read the disk {}", disk.display()))?;
    Ok((root, scratch))
}
