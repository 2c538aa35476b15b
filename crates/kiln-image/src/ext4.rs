//! ext4 file systems made from a staging directory with `mke2fs -d`, written straight into the
//! disk file at the partition's offset (`-E offset=`), then made reproducible by one pass over
//! the inode tables.
//!
//! mke2fs takes the UUID, directory hash seed and creation times from us (`-U`,
//! `-E hash_seed=`, `E2FSPROGS_FAKE_TIME`), its defaults from our own mke2fs.conf (so the
//! host's /etc/mke2fs.conf cannot change the features), and sorts directories itself. Two
//! things it still takes from the host: each inode's ctime (copied from the staging file,
//! whose ctime is the time of staging and cannot be set) and the root directory's mode
//! (always 0755, wrong for /tmp). [`fix_inodes`] rewrites both, sets every atime to the
//! mtime (a caller reading the staged tree before assembly moves atimes), and recomputes the
//! inode checksums, which `e2fsck -fn` checks in the tests.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{ImageError, Result};
use crate::gpt::{Guid, crc32c_raw};
use crate::tool;
use crate::tree::{BLOCK, DirMeta, Usage};

const MIB: u64 = 1024 * 1024;

/// The mke2fs configuration kiln uses instead of the host's: Debian bookworm's ext4 defaults
/// without the newer features (orphan_file, metadata_csum_seed) older guest kernels refuse.
pub(crate) const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// Reserved blocks for root, in percent. Images are usually grown at first boot, so Debian's
/// 5% would mostly be wasted; 1% still lets root log when users fill the disk.
pub(crate) const RESERVED_PERCENT: u64 = 1;

/// What one ext4 file system is made of.
#[derive(Debug, Clone)]
pub(crate) struct Ext4Params {
    pub label: String,
    pub uuid: Guid,
    pub hash_seed: Guid,
    pub offset: u64,
    pub size: u64,
    pub inodes: u64,
    pub root: DirMeta,
    pub epoch: i64,
}

/// The journal mke2fs 1.47 makes for a file system of `blocks` 4 KiB blocks
/// (ext2fs_default_journal_size), so size estimates match what it does.
fn journal_bytes(blocks: u64) -> u64 {
    let j = match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    };
    j * BLOCK
}

/// Inodes for a file system of `size` bytes holding `used` inodes: the usual one per 16 KiB,
/// but never fewer than the content needs plus half again.
pub(crate) fn inode_count(size: u64, used: u64) -> u64 {
    (size / 16384).max(used + used / 2 + 256)
}

/// Bytes a file system of `size` loses to metadata: inode tables, journal, bitmaps, group
/// descriptors and their reserve, backup superblocks (about 2%), and the reserved blocks.
fn overhead(size: u64, used_inodes: u64) -> u64 {
    inode_count(size, used_inodes) * 256
        + journal_bytes(size / BLOCK)
        + size / 50
        + size * RESERVED_PERCENT / 100
        + 2 * MIB
}

/// The smallest size (whole MiB) that holds `usage` with no free space left.
pub(crate) fn min_size(usage: Usage) -> u64 {
    size_for(usage.blocks * BLOCK, usage.inodes)
}

/// The size (whole MiB) holding `usage` with `headroom_percent` more data and inodes.
pub(crate) fn auto_size(usage: Usage, headroom_percent: u32) -> u64 {
    let h = headroom_percent as u64;
    let data = usage.blocks * BLOCK * (100 + h) / 100;
    let inodes = usage.inodes * (100 + h) / 100;
    // At least 64 MiB, so that a mostly empty /tmp or /var/log/audit is usable.
    size_for(data, inodes).max(64 * MIB)
}

fn size_for(data: u64, inodes: u64) -> u64 {
    // Overhead grows with size (journal steps, inode tables), so iterate to a fixed point.
    let mut size = data + overhead(data, inodes);
    for _ in 0..8 {
        let next = data + overhead(size, inodes);
        if next <= size {
            break;
        }
        size = next;
    }
    size.div_ceil(MIB) * MIB
}

/// Makes the file system inside `disk` at `p.offset` from `staging`, then fixes its inodes.
pub(crate) fn make(disk: &Path, staging: &Path, conf: &Path, p: &Ext4Params) -> Result<()> {
    let mut cmd = tool::command("mke2fs");
    cmd.env("MKE2FS_CONFIG", conf)
        .env("E2FSPROGS_FAKE_TIME", p.epoch.to_string())
        .env("SOURCE_DATE_EPOCH", p.epoch.to_string())
        .args(["-t", "ext4", "-F", "-q", "-b", "4096", "-I", "256"])
        .arg("-N")
        .arg(p.inodes.to_string())
        .arg("-m")
        .arg(RESERVED_PERCENT.to_string())
        .arg("-L")
        .arg(&p.label)
        .arg("-U")
        .arg(p.uuid.to_string())
        .arg("-E")
        // nodiscard: on a file, discard punches holes, and must not touch the rest of the disk.
        .arg(format!(
            "offset={},nodiscard,hash_seed={},root_owner={}:{}",
            p.offset, p.hash_seed, p.root.uid, p.root.gid
        ))
        .arg("-d")
        .arg(staging)
        .arg(disk)
        .arg((p.size / BLOCK).to_string());
    tool::run(
        cmd,
        "e2fsprogs",
        &format!("making the ext4 file system {} from {}", p.label, staging.display()),
    )?;
    fix_inodes(disk, p.offset, p.epoch, p.root)
}

fn le16(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn le32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}

/// Clamps every in-use inode's times to `epoch`, sets atimes to mtimes, sets the root
/// directory's mode and times from `root`, and recomputes inode checksums.
pub(crate) fn fix_inodes(disk: &Path, offset: u64, epoch: i64, root: DirMeta) -> Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| ImageError::io("opening", disk, e))?;
    let bad = |reason: &str| ImageError::Ext4Layout { path: disk.to_owned(), reason: reason.to_owned() };
    let read = |f: &File, len: usize, at: u64| -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, offset + at)
            .map_err(|e| ImageError::io("reading the ext4 image in", disk, e))?;
        Ok(b)
    };
    let sb = read(&f, 1024, 1024)?;
    if le16(&sb, 0x38) != 0xEF53 {
        return Err(bad("no ext4 superblock magic"));
    }
    let block = 1024u64 << le32(&sb, 0x18);
    let blocks = le32(&sb, 0x04) | (le32(&sb, 0x150) << 32);
    let first_data = le32(&sb, 0x14);
    let bpg = le32(&sb, 0x20);
    let ipg = le32(&sb, 0x28);
    let isize = le16(&sb, 0x58) as usize;
    let incompat = le32(&sb, 0x60);
    let ro_compat = le32(&sb, 0x64);
    let is64 = incompat & 0x80 != 0;
    let desc_size = if is64 { le16(&sb, 0xFE) as usize } else { 32 };
    let csum = ro_compat & 0x400 != 0;
    if isize < 160 || bpg == 0 || ipg == 0 || desc_size < 32 {
        return Err(bad("inode or descriptor sizes kiln does not handle (need 256-byte inodes)"));
    }
    let seed = if incompat & 0x2000 != 0 { le32(&sb, 0x270) as u32 } else { crc32c_raw(!0, &sb[0x68..0x78]) };
    let groups = (blocks - first_data).div_ceil(bpg);
    let gdt = read(&f, groups as usize * desc_size, (first_data + 1) * block)?;
    let (lo_time, extra_epoch) = encode_time(epoch);

    for g in 0..groups as usize {
        let d = &gdt[g * desc_size..(g + 1) * desc_size];
        let hi = |o: usize| if is64 && desc_size >= 64 { le32(d, o) << 32 } else { 0 };
        // INODE_UNINIT groups have no inodes in use.
        if le16(d, 0x12) & 0x1 != 0 {
            continue;
        }
        let bitmap_block = le32(d, 0x04) | hi(0x24);
        let table_block = le32(d, 0x08) | hi(0x28);
        let bitmap = read(&f, block as usize, bitmap_block * block)?;
        let Some(last_used) = (0..ipg as usize).rev().find(|i| bitmap[i / 8] & (1 << (i % 8)) != 0) else {
            continue;
        };
        let mut table = read(&f, (last_used + 1) * isize, table_block * block)?;
        for i in 0..=last_used {
            if bitmap[i / 8] & (1 << (i % 8)) == 0 {
                continue;
            }
            let ino = (g as u64 * ipg + i as u64 + 1) as u32;
            let inode = &mut table[i * isize..(i + 1) * isize];
            let extra = le16(inode, 0x80) as usize;
            // (seconds offset, extra offset) of ctime, atime, mtime, crtime; extra fields
            // exist only as far as i_extra_isize reaches.
            let mut fields = vec![(0x0C, 0x84), (0x08, 0x8C), (0x10, 0x88), (0x90, 0x94)];
            if ino == 2 {
                let mode = le16(inode, 0) as u16;
                let mode = (mode & 0o170000) | (root.mode as u16 & 0o7777);
                inode[0..2].copy_from_slice(&mode.to_le_bytes());
                let (t, e) = encode_time(root.mtime.min(epoch));
                for (s, x) in [(0x08usize, 0x8Cusize), (0x10, 0x88)] {
                    inode[s..s + 4].copy_from_slice(&t.to_le_bytes());
                    if 128 + extra >= x + 4 {
                        inode[x..x + 4].copy_from_slice(&e.to_le_bytes());
                    }
                }
                fields.retain(|(s, _)| *s == 0x0C || *s == 0x90);
            }
            for (s, x) in fields {
                let has_extra = 128 + extra >= x + 4;
                if s >= 128 && 128 + extra < s + 4 {
                    continue;
                }
                let secs = le32(inode, s) as u32 as i32 as i64
                    + if has_extra { ((le32(inode, x) & 3) as i64) << 32 } else { 0 };
                if secs > epoch {
                    inode[s..s + 4].copy_from_slice(&lo_time.to_le_bytes());
                    if has_extra {
                        inode[x..x + 4].copy_from_slice(&extra_epoch.to_le_bytes());
                    }
                }
            }
            // atime := mtime (already clamped): reading the staged tree, as a caller
            // inspecting it does, moves atimes, and must not change the disk.
            inode.copy_within(0x10..0x14, 0x08);
            if 128 + extra >= 0x90 {
                inode.copy_within(0x88..0x8C, 0x8C);
            }
            if csum {
                let has_hi = extra >= 4;
                inode[0x7C..0x7E].fill(0);
                if has_hi {
                    inode[0x82..0x84].fill(0);
                }
                let generation = &inode[0x64..0x68];
                let mut c = crc32c_raw(seed, &ino.to_le_bytes());
                c = crc32c_raw(c, generation);
                c = crc32c_raw(c, inode);
                inode[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
                if has_hi {
                    inode[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
                }
            }
        }
        f.write_all_at(&table, offset + table_block * block)
            .map_err(|e| ImageError::io("writing the ext4 image in", disk, e))?;
    }
    Ok(())
}

/// ext4's time encoding: low 32 bits signed in the base field, two epoch bits in the extra
/// field (nanoseconds above them, zero here).
fn encode_time(t: i64) -> (u32, u32) {
    let lo = t as u32;
    let epoch_bits = ((t - (lo as i32 as i64)) >> 32) as u32 & 3;
    (lo, epoch_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_with_content_and_fit_it() {
        let u = Usage { blocks: 100_000, inodes: 20_000, files: 15_000 };
        let min = min_size(u);
        assert!(min > 100_000 * BLOCK, "{min}");
        assert!(auto_size(u, 30) > min);
        assert_eq!(auto_size(Usage::default(), 30), 64 * MIB);
        assert_eq!(min % MIB, 0);
    }

    #[test]
    fn time_encoding() {
        assert_eq!(encode_time(1_700_000_000), (1_700_000_000, 0));
        assert_eq!(encode_time(1i64 << 32), (0, 1));
    }
}
