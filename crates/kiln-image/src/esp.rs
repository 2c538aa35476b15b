//! The EFI system partition: a FAT32 file system made by mkfs.fat straight into the disk file
//! (`--offset`), filled with mtools (`-i disk@@offset`), so nothing is mounted.
//!
//! Reproducibility: the volume id comes from us (`-i`); there is no volume label, because
//! mkfs.fat 4.2 stamps the label's directory entry with the current time; mtools honours
//! SOURCE_DATE_EPOCH for the directories it makes and `mcopy -m` keeps the (clamped) file
//! times; and files are copied one directory at a time in sorted order, because `mcopy -s`
//! would follow the host's readdir order and with it the cluster allocation.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, Result};
use crate::tool;

const MIB: u64 = 1024 * 1024;

/// The size (whole MiB) an ESP needs for `bytes` in `files` files: clusters are 512 bytes to
/// 4 KiB, the two FATs about 1.6% of the volume, plus the reserved sectors.
pub(crate) fn min_size(bytes: u64, files: u64) -> u64 {
    let data = bytes + files * 4096;
    (data + data / 25 + 2 * MIB).div_ceil(MIB) * MIB
}

/// Makes the FAT32 file system at `offset` in `disk` and copies `staging` into it.
pub(crate) fn make(
    disk: &Path,
    offset: u64,
    size: u64,
    volume_id: u32,
    staging: &Path,
    epoch: i64,
) -> Result<()> {
    let mut cmd = tool::command("mkfs.fat");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["-F", "32", "-S", "512", "-s"])
        // FAT32 needs at least 65,525 clusters, and mkfs.fat's default of 4 KiB clusters
        // gives fewer below 256 MiB, producing a volume mtools and firmware misread.
        .arg(if size >= 512 * MIB { "8" } else { "1" })
        .arg("-i")
        .arg(format!("{volume_id:08x}"))
        .arg(format!("--offset={}", offset / 512))
        .arg(disk)
        .arg((size / 1024).to_string());
    tool::run(cmd, "dosfstools", "making the FAT32 file system of the EFI system partition")?;

    let image = format!("{}@@{}", disk.display(), offset);
    let mut dirs = Vec::new();
    let mut files: Vec<(String, Vec<PathBuf>)> = Vec::new();
    collect(staging, "", &mut dirs, &mut files)?;
    if !dirs.is_empty() {
        let mut cmd = tool::command("mmd");
        cmd.env("SOURCE_DATE_EPOCH", epoch.to_string()).arg("-i").arg(&image);
        cmd.args(dirs.iter().map(|d| format!("::{d}")));
        tool::run(cmd, "mtools", "making directories on the EFI system partition")?;
    }
    for (dir, list) in files {
        if list.is_empty() {
            continue;
        }
        let mut cmd = tool::command("mcopy");
        cmd.env("SOURCE_DATE_EPOCH", epoch.to_string()).args(["-m", "-Q", "-i"]).arg(&image);
        cmd.args(&list).arg(format!("::{dir}/"));
        tool::run(cmd, "mtools", &format!("copying files to {dir}/ on the EFI system partition"))?;
    }
    Ok(())
}

/// Walks `base/rel` in sorted order: directories (parents first) and, per directory, its files.
fn collect(
    base: &Path,
    rel: &str,
    dirs: &mut Vec<String>,
    files: &mut Vec<(String, Vec<PathBuf>)>,
) -> Result<()> {
    let here = base.join(rel.trim_start_matches('/'));
    let mut names: Vec<_> = fs::read_dir(&here)
        .map_err(|e| ImageError::io("listing", &here, e))?
        .map(|r| r.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| ImageError::io("listing", &here, e))?;
    names.sort();
    let mut mine = Vec::new();
    let mut subdirs = Vec::new();
    for n in names {
        let p = here.join(&n);
        let name = n.to_str().ok_or_else(|| ImageError::UnsupportedOnEsp {
            path: p.clone(),
            reason: "the name is not UTF-8".into(),
        })?;
        let m = fs::symlink_metadata(&p).map_err(|e| ImageError::io("reading", &p, e))?;
        if m.is_dir() {
            subdirs.push(format!("{rel}/{name}"));
        } else if m.is_file() {
            mine.push(p);
        } else {
            return Err(ImageError::UnsupportedOnEsp {
                path: p,
                reason: "only regular files and directories fit".into(),
            });
        }
    }
    files.push((rel.to_owned(), mine));
    for d in subdirs {
        dirs.push(d.clone());
        collect(base, &d, dirs, files)?;
    }
    Ok(())
}
