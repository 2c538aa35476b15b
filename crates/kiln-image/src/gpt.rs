//! Writes a GUID partition table (protective MBR, primary and backup headers and entry arrays)
//! into a disk image file.
//!
//! Written here rather than with sgdisk/sfdisk or the `gpt` crate: the format is small and
//! fixed (UEFI 2.10 §5.3), every byte is then a function of the layout and the derived GUIDs
//! (no tool version can add a random GUID or a changed default alignment), and it costs no
//! dependency or host package. Tests read it back with sfdisk when that is installed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{ImageError, Result};

pub(crate) const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by one entry array (128 × 128 bytes).
const ARRAY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// Well-known partition type GUIDs (UEFI spec and the Discoverable Partitions Specification,
/// so that tools such as systemd-gpt-auto-generator recognise them).
pub(crate) mod types {
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    pub const VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";
    /// The spec's "temporary data" partition is /var/tmp; there is none for /tmp.
    pub const VAR_TMP: &str = "7ec6f557-3bc5-4aca-b293-16ef5df639d1";
    pub const HOME: &str = "933ac7e1-2eb4-4f13-b844-0e14e2aef915";
    pub const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    /// The type for a mount point: specific where the spec has one, generic Linux data else.
    /// A wrong specific type is worse than none: systemd-gpt-auto-generator would mount (and
    /// fsck) a /tmp partition typed as /var/tmp at /var/tmp too, racing fstab's /tmp mount.
    pub fn for_mount_point(mp: &str) -> &'static str {
        match mp {
            "/" => ROOT_X86_64,
            "/boot/efi" => ESP,
            "/var" => VAR,
            "/var/tmp" => VAR_TMP,
            "/home" => HOME,
            _ => LINUX_DATA,
        }
    }
}

/// A 16-byte GUID kept in its textual byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Guid(pub [u8; 16]);

impl Guid {
    pub fn parse(s: &str) -> Guid {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let mut b = [0u8; 16];
        // Only called on the constants above and on our own formatted GUIDs.
        hex::decode_to_slice(hex, &mut b).expect("well-formed GUID constant");
        Guid(b)
    }

    /// The on-disk form: the first three fields are little-endian (UEFI's mixed endianness).
    fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        let mut d = b;
        d[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        d[4..6].copy_from_slice(&[b[5], b[4]]);
        d[6..8].copy_from_slice(&[b[7], b[6]]);
        d
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode(self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

/// One partition to record.
#[derive(Debug, Clone)]
pub(crate) struct GptPartition {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// Writes the whole table into `file` (whose length must already be the disk size).
pub(crate) fn write(
    file: &File,
    path: &Path,
    disk_bytes: u64,
    disk_guid: Guid,
    parts: &[GptPartition],
) -> Result<()> {
    let total = disk_bytes / SECTOR;
    let last = total - 1;
    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut array[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        // Attributes (48..56) stay zero. The name is UTF-16LE, at most 36 code units.
        for (j, u) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_crc = crc32(&array);

    let header = |my_lba: u64, alt_lba: u64, array_lba: u64| {
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ARRAY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(last - ARRAY_SECTORS - 1).to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_disk());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[0..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };

    // Protective MBR: one partition of type 0xEE covering the disk (capped at 32 bits).
    let mut mbr = [0u8; SECTOR as usize];
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    pe[4] = 0xEE;
    pe[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&(u32::try_from(total - 1).unwrap_or(u32::MAX)).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    let backup_array_lba = last - ARRAY_SECTORS;
    let writes: [(u64, &[u8]); 5] = [
        (0, &mbr),
        (1, &header(1, last, 2)),
        (2, &array),
        (backup_array_lba, &array),
        (last, &header(last, 1, backup_array_lba)),
    ];
    for (lba, bytes) in writes {
        file.write_all_at(bytes, lba * SECTOR)
            .map_err(|e| ImageError::io("writing the partition table to", path, e))?;
    }
    Ok(())
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    !crc_update(0xEDB8_8320, !0, data)
}

/// CRC-32C (Castagnoli) without the final inversion, as ext4's metadata checksums use it.
pub(crate) fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    crc_update(0x82F6_3B78, seed, data)
}

fn crc_update(poly: u32, mut crc: u32, data: &[u8]) -> u32 {
    // Bytewise with a table built per call would be wasteful for inode tables, so the two
    // tables are built once.
    let table = if poly == 0xEDB8_8320 { table_ieee() } else { table_castagnoli() };
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

fn build_table(poly: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    for (i, slot) in t.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
        }
        *slot = c;
    }
    t
}

fn table_ieee() -> &'static [u32; 256] {
    static T: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    T.get_or_init(|| build_table(0xEDB8_8320))
}

fn table_castagnoli() -> &'static [u32; 256] {
    static T: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    T.get_or_init(|| build_table(0x82F6_3B78))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_values() {
        // The standard check values for "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn only_mount_points_the_spec_names_get_its_types() {
        assert_eq!(types::for_mount_point("/var/tmp"), types::VAR_TMP);
        // No spec type for /tmp: the /var/tmp type would make systemd mount it there too.
        assert_eq!(types::for_mount_point("/tmp"), types::LINUX_DATA);
        assert_eq!(types::for_mount_point("/home"), types::HOME);
        assert_eq!(types::for_mount_point("/srv/data"), types::LINUX_DATA);
    }

    #[test]
    fn guid_round_trip_and_disk_order() {
        let g = Guid::parse(types::ESP);
        assert_eq!(g.to_string(), types::ESP);
        assert_eq!(&g.to_disk()[0..4], &[0x28, 0x73, 0x2a, 0xc1]);
    }
}
