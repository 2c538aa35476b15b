//! Reading a disk image file without device nodes: format magic, the partition table (GPT,
//! MBR with logical partitions as fallback, or a bare file system), file system superblocks,
//! and /etc/fstab entries resolved to partitions.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use crate::error::{ParentError, Result};

/// The x86-64 root partition type of the Discoverable Partitions Specification.
pub const GPT_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// The generic Linux file system partition type.
pub const GPT_LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const GPT_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Magic {
    Qcow2,
    Raw,
    Other(&'static str),
}

pub(crate) fn sniff(path: &Path) -> Result<Magic> {
    let mut f = File::open(path).map_err(ParentError::io("cannot open", path))?;
    let mut head = vec![0u8; 512];
    let n = read_full(&mut f, &mut head).map_err(ParentError::io("cannot read", path))?;
    head.truncate(n);
    let starts = |m: &[u8]| head.starts_with(m);
    Ok(if starts(b"QFI\xfb") {
        Magic::Qcow2
    } else if starts(b"KDMV") || starts(b"# Disk DescriptorFile") {
        Magic::Other("a VMDK image (convert it with `qemu-img convert -O qcow2`)")
    } else if starts(b"vhdxfile") {
        Magic::Other("a VHDX image (convert it with `qemu-img convert -O qcow2`)")
    } else if starts(b"conectix") {
        Magic::Other("a VHD image (convert it with `qemu-img convert -O qcow2`)")
    } else if starts(&[0x1f, 0x8b])
        || starts(&[0x28, 0xb5, 0x2f, 0xfd])
        || starts(b"\xfd7zXZ\0")
        || starts(b"BZh")
    {
        Magic::Other("a compressed file, not a disk image (decompress it, or use it as a tarball parent)")
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Magic::Other("a tar archive, not a disk image (use it as a tarball parent)")
    } else {
        Magic::Raw
    })
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads `len` bytes at `off`; bytes past the end of the file read as zero.
pub(crate) fn read_at(f: &mut File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(off))?;
    read_full(f, &mut buf)?;
    Ok(buf)
}

/// The kind of partition table found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No table: the whole disk is one file system.
    None,
}

/// One partition of a disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// 1-based, as in /dev/vda1 (MBR logical partitions start at 5).
    pub number: u32,
    /// Byte offset and length in the (raw) disk.
    pub offset: u64,
    pub size: u64,
    /// GPT type GUID (upper case) or MBR type as `0x83`.
    pub type_id: String,
    /// GPT unique GUID (lower case) or MBR `DISKSIG-NN`: what `PARTUUID=` names.
    pub part_uuid: String,
    /// GPT partition name.
    pub part_label: String,
    /// File system found at the start of the partition.
    pub fs: FsInfo,
}

/// A file system superblock summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsInfo {
    /// `ext4` (ext2/3/4), `xfs`, `btrfs`, `vfat`, `swap`, `luks`, `lvm`, or `unknown`.
    pub kind: String,
    pub uuid: String,
    pub label: String,
}

impl Partition {
    pub(crate) fn describe(&self) -> String {
        let t = match self.type_id.as_str() {
            GPT_ROOT_X86_64 => "x86-64 root",
            GPT_LINUX_FS | "0x83" => "Linux file system",
            GPT_ESP | "0xEF" => "EFI system",
            "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" | "0x82" => "Linux swap",
            "E6D6D379-F507-44C2-A23C-238F2A3DF928" | "0x8E" => "Linux LVM",
            _ => "other",
        };
        format!("partition {} ({t}, {}, {} MiB)", self.number, self.fs.kind, self.size >> 20)
    }
}

/// Reads the partition table of the raw disk at `path`.
pub(crate) fn partitions(path: &Path) -> Result<(TableKind, Vec<Partition>)> {
    let bad = |reason: String| ParentError::BadDisk { path: path.to_owned(), reason };
    let mut f = File::open(path).map_err(ParentError::io("cannot open", path))?;
    let len = f.metadata().map_err(ParentError::io("cannot inspect", path))?.len();
    if len < 2048 {
        return Err(bad(format!("the disk is only {len} bytes long")));
    }
    let io = |e: std::io::Error| bad(format!("read error: {e}"));
    let mbr = read_at(&mut f, 0, 512).map_err(io)?;
    let mbr_sig = mbr[510] == 0x55 && mbr[511] == 0xaa;
    let protective = mbr_sig && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xee);

    for ss in [512u64, 4096] {
        let hdr = read_at(&mut f, ss, 512).map_err(io)?;
        if &hdr[..8] == b"EFI PART" {
            let parts = gpt(&mut f, ss, len, &hdr).map_err(bad)?;
            return Ok((TableKind::Gpt, with_fs(&mut f, parts).map_err(io)?));
        }
    }
    if protective {
        return Err(bad("the MBR is a GPT protective MBR, but there is no GPT header".into()));
    }
    if mbr_sig {
        let parts = mbr_parts(&mut f, len, &mbr).map_err(bad)?;
        if !parts.is_empty() {
            return Ok((TableKind::Mbr, with_fs(&mut f, parts).map_err(io)?));
        }
    }
    let fs = fs_info(&mut f, 0).map_err(io)?;
    if fs.kind != "unknown" {
        let whole = Partition {
            number: 0,
            offset: 0,
            size: len,
            type_id: String::new(),
            part_uuid: String::new(),
            part_label: String::new(),
            fs,
        };
        return Ok((TableKind::None, vec![whole]));
    }
    Err(bad("no GPT or MBR partition table and no file system at its start".into()))
}

fn with_fs(f: &mut File, mut parts: Vec<Partition>) -> std::io::Result<Vec<Partition>> {
    for p in &mut parts {
        p.fs = fs_info(f, p.offset)?;
    }
    Ok(parts)
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// A mixed-endian GPT GUID as text.
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02X}")).collect::<String>()
    )
}

pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn gpt(f: &mut File, ss: u64, len: u64, hdr: &[u8]) -> std::result::Result<Vec<Partition>, String> {
    let hsize = le32(hdr, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return Err(format!("GPT header size {hsize} is invalid"));
    }
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    if crc32(&h) != le32(hdr, 16) {
        return Err("the GPT header checksum does not match (corrupt partition table)".into());
    }
    let entries_lba = le64(hdr, 72);
    let count = le32(hdr, 80) as usize;
    let esize = le32(hdr, 84) as usize;
    if count > 4096 || !(128..=4096).contains(&esize) || esize % 8 != 0 {
        return Err(format!("GPT entry table ({count} entries of {esize} bytes) is invalid"));
    }
    let table_off = entries_lba.checked_mul(ss).filter(|o| o + (count * esize) as u64 <= len);
    let Some(table_off) = table_off else {
        return Err("the GPT entry table lies outside the disk".into());
    };
    let table = read_at(f, table_off, count * esize).map_err(|e| e.to_string())?;
    if crc32(&table) != le32(hdr, 88) {
        return Err("the GPT entry table checksum does not match (corrupt partition table)".into());
    }
    let mut out = Vec::new();
    for (i, e) in table.chunks(esize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let (offset, end) = (first.saturating_mul(ss), last.saturating_add(1).saturating_mul(ss));
        if last < first || end > len {
            return Err(format!("GPT partition {} (sectors {first}..={last}) lies outside the disk", i + 1));
        }
        let name: Vec<u16> =
            e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
        out.push(Partition {
            number: i as u32 + 1,
            offset,
            size: end - offset,
            type_id: guid(&e[..16]),
            part_uuid: guid(&e[16..32]).to_ascii_lowercase(),
            part_label: String::from_utf16_lossy(&name),
            fs: FsInfo::default(),
        });
    }
    Ok(out)
}

fn mbr_parts(f: &mut File, len: u64, mbr: &[u8]) -> std::result::Result<Vec<Partition>, String> {
    let sig = le32(mbr, 440);
    let mut out = Vec::new();
    let push = |out: &mut Vec<Partition>,
                number: u32,
                ty: u8,
                start: u64,
                sectors: u64|
     -> std::result::Result<(), String> {
        let (offset, size) = (start * 512, sectors * 512);
        if offset + size > len {
            return Err(format!("MBR partition {number} lies outside the disk"));
        }
        out.push(Partition {
            number,
            offset,
            size,
            type_id: format!("0x{ty:02X}"),
            part_uuid: format!("{sig:08x}-{number:02x}"),
            part_label: String::new(),
            fs: FsInfo::default(),
        });
        Ok(())
    };
    let mut extended = None;
    for i in 0..4 {
        let e = &mbr[446 + i * 16..446 + i * 16 + 16];
        let (ty, start, sectors) = (e[4], u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if ty == 0 || sectors == 0 {
            continue;
        }
        if matches!(ty, 0x05 | 0x0f | 0x85) {
            extended = Some(start);
            continue;
        }
        push(&mut out, i as u32 + 1, ty, start, sectors)?;
    }
    if let Some(ext) = extended {
        let (mut ebr, mut number) = (ext, 5u32);
        for _ in 0..128 {
            let b = read_at(f, ebr * 512, 512).map_err(|e| e.to_string())?;
            if b[510] != 0x55 || b[511] != 0xaa {
                return Err(format!("extended boot record at sector {ebr} is invalid"));
            }
            let (e0, e1) = (&b[446..462], &b[462..478]);
            if e0[4] != 0 && le32(e0, 12) != 0 {
                push(&mut out, number, e0[4], ebr + u64::from(le32(e0, 8)), u64::from(le32(e0, 12)))?;
                number += 1;
            }
            if e1[4] == 0 || le32(e1, 8) == 0 {
                break;
            }
            ebr = ext + u64::from(le32(e1, 8));
        }
    }
    Ok(out)
}

/// Identifies the file system at byte `off`.
pub(crate) fn fs_info(f: &mut File, off: u64) -> std::io::Result<FsInfo> {
    let b = read_at(f, off, 4096)?;
    let kind = if le16(&b, 1080) == 0xEF53 {
        let sb = &b[1024..2048];
        let u = &sb[104..120];
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            hex::encode(&u[0..4]),
            hex::encode(&u[4..6]),
            hex::encode(&u[6..8]),
            hex::encode(&u[8..10]),
            hex::encode(&u[10..16])
        );
        let label = String::from_utf8_lossy(&sb[120..136]).trim_end_matches('\0').to_owned();
        return Ok(FsInfo { kind: "ext4".into(), uuid, label });
    } else if b.starts_with(b"XFSB") {
        "xfs"
    } else if b.starts_with(b"LUKS\xba\xbe") {
        "luks"
    } else if &b[512..520] == b"LABELONE" {
        "lvm"
    } else if &b[4086..4096] == b"SWAPSPACE2" {
        "swap"
    } else if b[510] == 0x55 && b[511] == 0xaa && (&b[54..57] == b"FAT" || &b[82..85] == b"FAT") {
        "vfat"
    } else if read_at(f, off + 0x10040, 8)? == b"_BHRfS_M" {
        "btrfs"
    } else {
        "unknown"
    };
    Ok(FsInfo { kind: kind.into(), ..FsInfo::default() })
}

/// One /etc/fstab line: what, where, type, options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FstabEntry {
    pub spec: String,
    pub target: String,
    pub fstype: String,
    pub options: String,
}

pub(crate) fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(unescape_octal);
            Some(FstabEntry {
                spec: it.next()?,
                target: it.next()?,
                fstype: it.next().unwrap_or_else(|| "auto".into()),
                options: it.next().unwrap_or_else(|| "defaults".into()),
            })
        })
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The partition an fstab `spec` names, if it is on this disk.
pub(crate) fn resolve_spec<'a>(spec: &str, parts: &'a [Partition]) -> Option<&'a Partition> {
    let (key, val) = if let Some((k, v)) = spec.split_once('=') {
        (k.to_ascii_uppercase(), v.trim_matches('"').to_owned())
    } else if let Some(rest) = spec.strip_prefix("/dev/disk/by-") {
        let (k, v) = rest.split_once('/')?;
        (k.replace("part", "PART").replace("uuid", "UUID").replace("label", "LABEL"), v.to_owned())
    } else if let Some(dev) = spec.strip_prefix("/dev/") {
        let digits: String = dev.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        let stem = &dev[..dev.len() - digits.len()];
        let disk_like =
            ["sd", "vd", "xvd", "hd"].iter().any(|p| stem.starts_with(p) && stem.len() == p.len() + 1)
                || (stem.ends_with('p') && ["nvme", "mmcblk", "loop"].iter().any(|p| stem.starts_with(p)));
        let n: u32 = digits.chars().rev().collect::<String>().parse().ok()?;
        return disk_like.then(|| parts.iter().find(|p| p.number == n)).flatten();
    } else {
        return None;
    };
    parts.iter().find(|p| match key.as_str() {
        "UUID" => p.fs.uuid.eq_ignore_ascii_case(&val),
        "LABEL" => !p.fs.label.is_empty() && p.fs.label == val,
        "PARTUUID" => p.part_uuid.eq_ignore_ascii_case(&val),
        "PARTLABEL" => !p.part_label.is_empty() && p.part_label == val,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_guid() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let raw =
            [0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09];
        assert_eq!(guid(&raw), GPT_ROOT_X86_64);
    }

    #[test]
    fn fstab_and_specs() {
        let e = parse_fstab(
            "# c\nUUID=ab / ext4 defaults 0 1\n\n/dev/vda3\t/var ext4 ro\nLABEL=My\\040Home /home\\040x auto\n",
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].spec, "LABEL=My Home");
        assert_eq!(e[2].target, "/home x");
        let p = |n, uuid: &str, label: &str, pu: &str| Partition {
            number: n,
            offset: 0,
            size: 0,
            type_id: String::new(),
            part_uuid: pu.into(),
            part_label: "pl".into(),
            fs: FsInfo { kind: "ext4".into(), uuid: uuid.into(), label: label.into() },
        };
        let parts = [p(1, "aa", "root", "p1"), p(3, "bb", "", "p3")];
        assert_eq!(resolve_spec("UUID=BB", &parts).unwrap().number, 3);
        assert_eq!(resolve_spec("LABEL=root", &parts).unwrap().number, 1);
        assert_eq!(resolve_spec("PARTUUID=p3", &parts).unwrap().number, 3);
        assert_eq!(resolve_spec("/dev/disk/by-partuuid/p3", &parts).unwrap().number, 3);
        assert_eq!(resolve_spec("/dev/disk/by-uuid/aa", &parts).unwrap().number, 1);
        assert_eq!(resolve_spec("/dev/vda3", &parts).unwrap().number, 3);
        assert_eq!(resolve_spec("/dev/nvme0n1p1", &parts).unwrap().number, 1);
        assert!(resolve_spec("/dev/mapper/vg-var", &parts).is_none());
        assert!(resolve_spec("tmpfs", &parts).is_none());
        assert!(resolve_spec("UUID=cc", &parts).is_none());
    }
}
