//! Disk assembly: turning a finished root file system tree into a bootable disk image, in
//! every output format kiln ships. The tree is a directory or a stack of overlayfs layers
//! ([`TreeSource`]: the base tree and the upper directories of the build's overlays), merged
//! here with overlayfs's semantics without mounting anything; whiteouts and overlayfs's
//! attributes never reach the disk. This crate owns the [`DiskLayout`] (EFI system
//! partition, root, and separate partitions such as /var/log with their mount options, sized
//! from their content or fixed), copying the tree once into staging without changing it or
//! following a symlink out of it, splitting that copy across the partitions (by renaming, no
//! second copy), making the file systems from directories (ext4 with `mke2fs -d`, FAT32 with
//! mkfs.fat and mtools) straight into a sparse disk file (nothing is ever mounted and no loop
//! or partition device is needed), the GPT, /etc/fstab, systemd-boot with the image's own
//! kernel and initramfs, conversion to qcow2/vmdk/vhdx/vhd with qemu-img, and digests.
//!
//! Assembly comes in two steps so that the caller can inspect the image before the disk is
//! made: [`stage`] merges, scans, plans and copies the tree, and its [`Staged`] shows the
//! merged root file system as the disk will hold it ([`Staged::root_view`], for an SBOM or
//! the package list); [`Staged::assemble`] then makes the disk. [`assemble`] does both for
//! one directory.
//!
//! Everything that varies between runs is derived from the inputs (GUIDs, UUIDs, hash seeds,
//! clamped times), so the same tree or layers and one `SOURCE_DATE_EPOCH` give a
//! byte-identical raw disk; what cannot be made identical is listed in
//! [`AssembledDisk::non_reproducible`]. It also owns the [`qemu`] helper that boots a disk
//! under OVMF, which the test stage reuses. It must not know about components, the build
//! sandbox, how layers are made or cached, or the catalogue: its input is directories and a
//! layout, its output files and a description of them.

mod boot;
mod convert;
mod error;
mod esp;
mod ext4;
mod gpt;
mod layout;
pub mod qemu;
mod tool;
mod tree;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use boot::{BootLoaderOrigin, BootLoaderSource, SYSTEMD_BOOT_EFI};
pub use convert::{Artifact, OutputFormat};
pub use error::{ImageError, Result};
pub use layout::{DiskLayout, MIN_ESP_BYTES, PartitionSpec, SizeSpec};

use gpt::{GptPartition, Guid};
use tree::{BLOCK, DirMeta, Kind};

const MIB: u64 = 1024 * 1024;
const ESP_MOUNT: &str = "/boot/efi";

/// How to assemble, besides the layout.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    /// Where the disk files go (created if missing).
    pub output_dir: PathBuf,
    /// File name stem of every artifact: `NAME.raw`, `NAME.qcow2`, …
    pub name: String,
    /// Formats to write. The raw disk is always made; it is kept only if listed.
    pub formats: Vec<OutputFormat>,
    /// Clamp for every timestamp. `None`: the `SOURCE_DATE_EPOCH` environment variable, else
    /// the newest modification time in the tree (but not later than now).
    pub source_date_epoch: Option<i64>,
    /// What GUIDs, UUIDs and hash seeds are derived from, such as the build's layer digest.
    /// `None`: a digest of the tree's shape (names, types, modes, owners, sizes, times).
    pub seed: Option<String>,
    /// Kernel command line words added after kiln's own (the recipe's extra cmdline).
    pub kernel_cmdline: String,
    pub boot_loader: BootLoaderSource,
    /// Where the staging copy of the tree is made (it lives until the [`Staged`] is
    /// assembled or dropped). `None`: /dev/shm when it is a tmpfs with room to spare (copying
    /// into memory is about ten times faster than into a journaled file system), else beside
    /// the outputs.
    pub staging_dir: Option<PathBuf>,
}

impl AssembleOptions {
    /// Defaults: name `disk`, raw and qcow2, epoch and seed from the inputs, systemd-boot from
    /// the image or else the host.
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        AssembleOptions {
            output_dir: output_dir.into(),
            name: "disk".into(),
            formats: vec![OutputFormat::Raw, OutputFormat::Qcow2 { compressed: false }],
            source_date_epoch: None,
            seed: None,
            kernel_cmdline: String::new(),
            boot_loader: BootLoaderSource::Auto,
            staging_dir: None,
        }
    }
}

/// One partition as made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionInfo {
    pub mount_point: String,
    /// GPT partition name and file system label (the ESP has no file system label).
    pub label: String,
    /// `vfat` or `ext4`.
    pub fs_type: String,
    pub offset: u64,
    pub size: u64,
    /// Bytes of the tree's content placed in it (blocks it occupies).
    pub content_bytes: u64,
    pub part_uuid: String,
    /// The file system UUID as fstab names it (`XXXX-XXXX` for FAT).
    pub fs_uuid: String,
    pub mount_options: Vec<String>,
}

/// How the disk boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootInfo {
    pub title: String,
    pub kernel_version: String,
    /// Paths on the ESP.
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub boot_loader: BootLoaderOrigin,
    pub boot_loader_path: PathBuf,
}

/// Time spent in one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    pub stage: String,
    pub millis: u64,
}

/// The result of [`assemble`]: everything a manifest needs to say about the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssembledDisk {
    pub artifacts: Vec<Artifact>,
    /// Virtual size of the disk in bytes.
    pub disk_size: u64,
    pub disk_guid: String,
    /// In disk order.
    pub partitions: Vec<PartitionInfo>,
    pub boot: BootInfo,
    pub source_date_epoch: i64,
    /// sha256 (hex) everything derived was derived from.
    pub seed: String,
    /// What differs between two assemblies of the same inputs, and why.
    pub non_reproducible: Vec<String>,
    pub timings: Vec<Timing>,
}

impl AssembledDisk {
    /// The artifact of `format`, if it was written.
    pub fn artifact(&self, format: OutputFormat) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.format == format)
    }
}

/// One partition being planned.
#[derive(Debug)]
struct Plan {
    mount_point: String,
    /// Index into the mount list used by the scan.
    mount_index: usize,
    size: u64,
    content: u64,
    options: Vec<String>,
}

/// What the image's root file system is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeSource {
    /// One directory, taken as it is: a character device 0:0 or a `trusted.overlay.*`
    /// attribute in it is content (an image may hold a container engine's own layers).
    Dir(PathBuf),
    /// overlayfs layers, bottom first: the base tree, then the upper directory of each
    /// overlay the build ran in. They are merged as overlayfs would show them (whiteouts
    /// delete, opaque directories hide what is below them, a higher entry replaces a lower
    /// one); the whiteouts and overlayfs's attributes are not part of the image. Layers made
    /// with redirect_dir or metacopy are refused.
    Layers(Vec<PathBuf>),
}

impl TreeSource {
    fn source(&self) -> tree::Source {
        match self {
            TreeSource::Dir(d) => tree::Source::dir(d),
            TreeSource::Layers(l) => tree::Source::layers(l),
        }
    }
}

/// Assembles `tree` into a bootable GPT disk laid out as `layout`, writing each requested
/// format into `options.output_dir`: [`stage`] of [`TreeSource::Dir`], then
/// [`Staged::assemble`].
pub fn assemble(tree: &Path, layout: &DiskLayout, options: &AssembleOptions) -> Result<AssembledDisk> {
    stage(&TreeSource::Dir(tree.to_owned()), layout, options)?.assemble()
}

/// A tree merged, planned and copied into staging, not yet made into a disk: the first half
/// of assembly, returned by [`stage`] so that the caller can inspect the image's root file
/// system as it will be (its packages, an SBOM) before [`Staged::assemble`] makes the disk.
/// Dropping it removes the staging copy.
#[derive(Debug)]
pub struct Staged {
    /// Holds the view and, at assembly, the other partitions' shares; removed on drop.
    work: tempfile::TempDir,
    view: PathBuf,
    options: AssembleOptions,
    mounts: Vec<PathBuf>,
    esp_index: usize,
    scan: tree::Scan,
    plans: Vec<Plan>,
    parts: Vec<PartitionInfo>,
    disk_size: u64,
    seed: [u8; 32],
    epoch: i64,
    boot: BootInfo,
    timings: Vec<Timing>,
}

impl Staged {
    /// The merged root tree as the disk will hold it, every partition's share in place
    /// (/var/log's content under `var/log`, the ESP's under `boot/efi`), with kiln's
    /// /etc/fstab and boot files, owners, modes, extended attributes and clamped times. It is
    /// the image's (hostile) content: read it without following its symlinks on the host
    /// (resolve them inside it), and do not change it: the partitions were sized from it.
    pub fn root_view(&self) -> &Path {
        &self.view
    }

    /// The host path of `path` (absolute, as the image sees it) in [`Staged::root_view`],
    /// without resolving symlinks.
    pub fn path_of(&self, path: &str) -> PathBuf {
        self.view.join(path.trim_start_matches('/'))
    }

    /// The partitions as they will be made, in disk order.
    pub fn partitions(&self) -> &[PartitionInfo] {
        &self.parts
    }

    /// How the disk will boot.
    pub fn boot(&self) -> &BootInfo {
        &self.boot
    }

    /// The timestamp clamp in use.
    pub fn source_date_epoch(&self) -> i64 {
        self.epoch
    }

    /// sha256 (hex) everything derived is derived from.
    pub fn seed(&self) -> String {
        hex::encode(self.seed)
    }

    /// Makes the disk from the staged tree: splits the view by mount point (by renaming, no
    /// copy), writes the file systems, the GPT and every requested format, and removes the
    /// staging copy.
    pub fn assemble(mut self) -> Result<AssembledDisk> {
        let mut clock = Instant::now();
        let mut lap = |stage: &str, timings: &mut Vec<Timing>| {
            timings.push(Timing { stage: stage.into(), millis: clock.elapsed().as_millis() as u64 });
            clock = Instant::now();
        };
        let options = &self.options;
        let (epoch, parts, plans) = (self.epoch, &self.parts, &self.plans);
        let staging = tree::split(&self.view, self.work.path(), &self.mounts)?;
        lap("split", &mut self.timings);

        // The disk: a sparse file the file systems are written into at their offsets.
        let raw_path = options.output_dir.join(format!("{}.raw", options.name));
        let disk = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw_path)
            .map_err(|e| ImageError::io("creating", &raw_path, e))?;
        disk.set_len(self.disk_size).map_err(|e| ImageError::io("sizing", &raw_path, e))?;
        let conf = self.work.path().join("mke2fs.conf");
        fs::write(&conf, ext4::MKE2FS_CONF).map_err(|e| ImageError::io("writing", &conf, e))?;
        for (p, info) in plans.iter().zip(parts) {
            if p.mount_point == ESP_MOUNT {
                continue;
            }
            let root =
                self.scan.roots[p.mount_index].unwrap_or(DirMeta { mtime: epoch, ..DirMeta::default() });
            let params = ext4::Ext4Params {
                label: info.label.clone(),
                uuid: Guid::parse(&info.fs_uuid),
                hash_seed: derive(&self.seed, &format!("hash-seed:{}", p.mount_point)),
                offset: info.offset,
                size: info.size,
                inodes: ext4::inode_count(info.size, self.scan.usage[p.mount_index].inodes),
                root,
                epoch,
            };
            ext4::make(&raw_path, &staging[p.mount_index], &conf, &params).map_err(|e| too_small(e, info))?;
        }
        lap("ext4", &mut self.timings);
        let esp_part = &parts[0];
        let volume_id =
            u32::from_str_radix(&esp_part.fs_uuid.replace('-', ""), 16).expect("formatted in stage");
        esp::make(&raw_path, esp_part.offset, esp_part.size, volume_id, &staging[self.esp_index], epoch)
            .map_err(|e| too_small(e, esp_part))?;
        lap("esp", &mut self.timings);
        let gpt_parts: Vec<GptPartition> = parts
            .iter()
            .map(|p| GptPartition {
                type_guid: Guid::parse(gpt::types::for_mount_point(&p.mount_point)),
                guid: Guid::parse(&p.part_uuid),
                first_lba: p.offset / gpt::SECTOR,
                last_lba: (p.offset + p.size) / gpt::SECTOR - 1,
                name: p.label.clone(),
            })
            .collect();
        let disk_guid = derive(&self.seed, "disk-guid");
        gpt::write(&disk, &raw_path, self.disk_size, disk_guid, &gpt_parts)?;
        disk.sync_all().map_err(|e| ImageError::io("flushing", &raw_path, e))?;
        drop(disk);
        let Staged { work, options, parts, disk_size, seed, boot, mut timings, .. } = self;
        drop(work);
        lap("gpt", &mut timings);

        // Outputs, each hashed in the background while the next is written.
        let mut pending = Vec::new();
        let mut non_reproducible = Vec::new();
        let formats = &options.formats;
        if formats.contains(&OutputFormat::Raw) {
            pending.push(convert::PendingDigest::start(&raw_path, OutputFormat::Raw)?);
        }
        for f in formats.iter().filter(|f| **f != OutputFormat::Raw) {
            let path = options.output_dir.join(format!("{}.{}", options.name, f.extension()));
            convert::convert(&raw_path, &path, *f)?;
            if let Some(why) = f.non_reproducible() {
                non_reproducible.push(why.to_owned());
            }
            pending.push(convert::PendingDigest::start(&path, *f)?);
        }
        lap("convert", &mut timings);
        let mut artifacts = pending.into_iter().map(|p| p.finish()).collect::<Result<Vec<_>>>()?;
        // In the order asked for.
        artifacts.sort_by_key(|a| formats.iter().position(|f| *f == a.format));
        if !formats.contains(&OutputFormat::Raw) {
            fs::remove_file(&raw_path)
                .map_err(|e| ImageError::io("removing the intermediate", &raw_path, e))?;
        }
        if boot.boot_loader != BootLoaderOrigin::Image {
            non_reproducible.push(format!(
                "EFI system partition: systemd-boot was taken from the build host ({}), not the image, \
                 so the disk depends on the host's systemd-boot-efi version",
                boot.boot_loader_path.display()
            ));
        }
        lap("digest", &mut timings);

        Ok(AssembledDisk {
            artifacts,
            disk_size,
            disk_guid: disk_guid.to_string(),
            partitions: parts,
            boot,
            source_date_epoch: epoch,
            seed: hex::encode(seed),
            non_reproducible,
            timings,
        })
    }
}

/// A GUID derived from the seed for one role, marked as version 4, variant 1, as
/// systemd-repart does for derived GUIDs.
fn derive(seed: &[u8; 32], role: &str) -> Guid {
    let d = Sha256::new().chain_update(seed).chain_update(role.as_bytes()).finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    Guid(b)
}

/// The first half of assembly: merges and scans `source`, plans the partitions of `layout`
/// (a content that does not fit is refused here, before anything is copied), and copies the
/// tree once into a private staging directory with kiln's /etc/fstab and boot files added.
/// Inspect the result through [`Staged::root_view`], then make the disk with
/// [`Staged::assemble`].
pub fn stage(source: &TreeSource, layout: &DiskLayout, options: &AssembleOptions) -> Result<Staged> {
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |stage: &str, timings: &mut Vec<Timing>| {
        timings.push(Timing { stage: stage.into(), millis: clock.elapsed().as_millis() as u64 });
        clock = Instant::now();
    };
    layout.validate()?;
    check_name(&options.name)?;
    check_formats(&options.formats)?;

    // Mount list: "/" first (the scan requires it), the separate partitions, the ESP last.
    let extras = layout.sorted_partitions();
    let mut mount_points: Vec<String> = vec!["/".into()];
    mount_points.extend(extras.iter().map(|p| p.mount_point.clone()));
    mount_points.push(ESP_MOUNT.into());
    let esp_index = mount_points.len() - 1;
    let mounts: Vec<PathBuf> = mount_points.iter().map(|m| tree::rel_mount(m)).collect();

    let scan = tree::scan(&source.source(), &mounts)?;
    for e in scan.entries.iter().filter(|e| e.part == esp_index) {
        if !matches!(e.kind, Kind::Dir | Kind::File) {
            return Err(ImageError::UnsupportedOnEsp {
                path: scan.source_of(e),
                reason: "only regular files and directories fit on FAT".into(),
            });
        }
    }
    let epoch = match options.source_date_epoch {
        Some(e) => e,
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v.trim().parse::<i64>().map_err(|_| ImageError::InvalidLayout {
                reason: format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"),
                hint: "set SOURCE_DATE_EPOCH to an integer, such as the output of `date +%s`".into(),
            })?,
            Err(_) => scan.max_mtime.min(now()),
        },
    };
    let kernel = boot::find_kernel(&scan)?;
    let (loader, loader_origin) = boot::find_boot_loader(&scan, &options.boot_loader)?;
    lap("scan", &mut timings);

    // Everything random-looking is derived from this.
    let seed: [u8; 32] = {
        let mut h = Sha256::new();
        match &options.seed {
            Some(s) => h.update(s.as_bytes()),
            None => h.update(tree::shape_digest(&scan, epoch)),
        }
        h.update(format!("{layout:?}|{epoch}|{}", options.kernel_cmdline).as_bytes());
        h.finalize().into()
    };
    let derive = |role: &str| derive(&seed, role);
    // Sizes.
    let h = layout.headroom_percent;
    let mut plans: Vec<Plan> = Vec::new();
    {
        let k = fs::metadata(&kernel.kernel).map_err(|e| ImageError::io("reading", &kernel.kernel, e))?.len();
        let i = fs::metadata(&kernel.initrd).map_err(|e| ImageError::io("reading", &kernel.initrd, e))?.len();
        let l = fs::metadata(&loader).map_err(|e| ImageError::io("reading", &loader, e))?.len();
        let u = scan.usage[esp_index];
        let content = k + i + l + 2 * 4096 + u.blocks * BLOCK;
        let min = esp::min_size(content, u.files + 5);
        let size = match layout.esp_size {
            SizeSpec::Fixed { bytes } => fixed(ESP_MOUNT, bytes, content, min)?,
            SizeSpec::Auto => (min * (100 + h as u64) / 100).div_ceil(MIB).max(MIN_ESP_BYTES / MIB) * MIB,
        };
        plans.push(Plan {
            mount_point: ESP_MOUNT.into(),
            mount_index: esp_index,
            size,
            content,
            options: vec![],
        });
    }
    for (n, p) in extras.iter().enumerate() {
        let u = scan.usage[n + 1];
        let min = ext4::min_size(u);
        let size = match p.size {
            SizeSpec::Fixed { bytes } => fixed(&p.mount_point, bytes, u.blocks * BLOCK, min)?,
            SizeSpec::Auto => ext4::auto_size(u, h),
        };
        plans.push(Plan {
            mount_point: p.mount_point.clone(),
            mount_index: n + 1,
            size,
            content: u.blocks * BLOCK,
            options: p.mount_options.clone(),
        });
    }
    {
        let mut u = scan.usage[0];
        // /etc/fstab and the /boot/efi directory kiln adds.
        u.blocks += 2;
        u.inodes += 2;
        let min = ext4::min_size(u);
        let used: u64 = plans.iter().map(|p| p.size).sum::<u64>() + 2 * MIB;
        let size = match (layout.disk_size, layout.root_size) {
            (Some(disk), _) => {
                let left = (disk / MIB * MIB).saturating_sub(used);
                if left < min {
                    return Err(ImageError::PartitionTooSmall {
                        mount_point: "/".into(),
                        size_mib: left / MIB,
                        content_mib: (u.blocks * BLOCK).div_ceil(MIB),
                        needed_mib: min / MIB,
                    });
                }
                left
            }
            (None, SizeSpec::Fixed { bytes }) => fixed("/", bytes, u.blocks * BLOCK, min)?,
            (None, SizeSpec::Auto) => ext4::auto_size(u, h),
        };
        let mut options = vec!["errors=remount-ro".to_string()];
        options.extend(layout.root_mount_options.iter().cloned());
        plans.push(Plan {
            mount_point: "/".into(),
            mount_index: 0,
            size,
            content: u.blocks * BLOCK,
            options,
        });
    }

    // Offsets: 1 MiB aligned, the first at 1 MiB, 1 MiB kept free at the end for the backup GPT.
    let mut offset = MIB;
    let mut parts: Vec<PartitionInfo> = Vec::new();
    for p in &plans {
        let label = layout::label_for(&p.mount_point);
        let (fs_type, fs_uuid) = if p.mount_point == ESP_MOUNT {
            let id = derive("esp-volume-id").0;
            ("vfat", format!("{:02X}{:02X}-{:02X}{:02X}", id[0], id[1], id[2], id[3]))
        } else {
            ("ext4", derive(&format!("fs-uuid:{}", p.mount_point)).to_string())
        };
        parts.push(PartitionInfo {
            mount_point: p.mount_point.clone(),
            label,
            fs_type: fs_type.into(),
            offset,
            size: p.size,
            content_bytes: p.content,
            part_uuid: derive(&format!("part-uuid:{}", p.mount_point)).to_string(),
            fs_uuid,
            mount_options: p.options.clone(),
        });
        offset += p.size;
    }
    let disk_size = offset + MIB;
    let root_part = parts.last().expect("root is always planned").clone();
    lap("plan", &mut timings);

    // Staging: a private directory (mode 0700), removed when the result is dropped, also on
    // error.
    fs::create_dir_all(&options.output_dir)
        .map_err(|e| ImageError::io("creating", &options.output_dir, e))?;
    let content: u64 = scan.usage.iter().map(|u| u.blocks * BLOCK).sum();
    let staging_base = match &options.staging_dir {
        Some(d) => d.clone(),
        None => default_staging(content).unwrap_or_else(|| options.output_dir.clone()),
    };
    // The PID in the name lets a later run remove what a killed one left ([`remove_stale_staging`]).
    let work = tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{}-", std::process::id()))
        .tempdir_in(&staging_base)
        .map_err(|e| ImageError::io("creating a staging directory in", &staging_base, e))?;
    // The tree, unsplit: the view callers inspect, split by renames at assembly.
    let view = work.path().join("root");
    fs::create_dir(&view).map_err(|e| ImageError::io("creating", &view, e))?;
    tree::stage(&scan, &mounts, &view, epoch)?;

    // /etc/fstab in the root's share.
    let fstab = fstab(&parts);
    write_generated(&view, "etc/fstab", fstab.as_bytes(), 0o644, epoch)?;

    // The ESP's files, in its mount directory.
    let title = boot::os_title(&scan);
    let esp_kernel = format!("/kiln/vmlinuz-{}", kernel.version);
    let esp_initrd = format!("/kiln/initrd.img-{}", kernel.version);
    let mut cmdline = format!("root=PARTUUID={} rw console=ttyS0,115200", root_part.part_uuid);
    if !options.kernel_cmdline.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(options.kernel_cmdline.trim());
    }
    let esp_dir = &view.join(&mounts[esp_index]);
    let entry = boot::loader_entry(&title, &kernel.version, &esp_kernel, &esp_initrd, &cmdline);
    write_generated(esp_dir, "loader/loader.conf", boot::loader_conf().as_bytes(), 0o644, epoch)?;
    write_generated(esp_dir, "loader/entries/kiln.conf", entry.as_bytes(), 0o644, epoch)?;
    copy_generated(esp_dir, "EFI/BOOT/BOOTX64.EFI", &loader, epoch)?;
    copy_generated(esp_dir, esp_kernel.trim_start_matches('/'), &kernel.kernel, epoch)?;
    copy_generated(esp_dir, esp_initrd.trim_start_matches('/'), &kernel.initrd, epoch)?;
    lap("stage", &mut timings);

    Ok(Staged {
        work,
        view,
        options: options.clone(),
        mounts,
        esp_index,
        scan,
        plans,
        disk_size,
        seed,
        epoch,
        boot: BootInfo {
            title,
            kernel_version: kernel.version.clone(),
            kernel: esp_kernel,
            initrd: esp_initrd,
            cmdline,
            boot_loader: loader_origin,
            boot_loader_path: loader,
        },
        parts,
        timings,
    })
}

const STAGING_PREFIX: &str = ".kiln-assemble-";

/// Remove staging directories in `dir` (and /dev/shm) left by processes that no longer run, such
/// as a build killed during assembly; staging of live processes is left alone. Returns how many
/// were removed.
pub fn remove_stale_staging(dir: &Path) -> usize {
    let mut removed = 0;
    for base in [dir, Path::new("/dev/shm")] {
        let Ok(entries) = fs::read_dir(base) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(STAGING_PREFIX) else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !alive && is_dir && fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// /dev/shm if it is a tmpfs that can take `content` with a quarter to spare and the machine
/// has twice that much memory available, so that staging never pushes it into swap or OOM.
fn default_staging(content: u64) -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let c = tree::cpath(shm).ok()?;
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs, both alive for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let free = st.f_bavail as u64 * st.f_bsize as u64;
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    let need = content + content / 4 + 64 * MIB;
    (st.f_type as i64 == TMPFS_MAGIC && free >= need && available >= 2 * need).then(|| shm.to_path_buf())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(ImageError::InvalidLayout {
            reason: format!("artifact name {name:?} is not a plain file name"),
            hint: "use a name such as `disk` or `my-image-1.0.0`".into(),
        });
    }
    Ok(())
}

/// One file per extension: both qcow2 variants would write the same file.
fn check_formats(formats: &[OutputFormat]) -> Result<()> {
    for (i, f) in formats.iter().enumerate() {
        if formats[..i].iter().any(|g| g.extension() == f.extension()) {
            return Err(ImageError::InvalidLayout {
                reason: format!("output format {} is asked for twice", f.extension()),
                hint: "list each format once (qcow2 either compressed or not)".into(),
            });
        }
    }
    Ok(())
}

fn fixed(mount_point: &str, bytes: u64, content: u64, min: u64) -> Result<u64> {
    let size = bytes.div_ceil(MIB) * MIB;
    if size < min {
        return Err(ImageError::PartitionTooSmall {
            mount_point: mount_point.into(),
            size_mib: size / MIB,
            content_mib: content.div_ceil(MIB),
            needed_mib: min / MIB,
        });
    }
    Ok(size)
}

/// Turns a tool's "no space" failure into the too-small error the user can act on; the
/// estimate should prevent it, but content the estimate misjudges (huge directories, many
/// extended attributes) can still overflow.
fn too_small(e: ImageError, p: &PartitionInfo) -> ImageError {
    match &e {
        ImageError::ToolFailed { stderr, .. }
            if ["No space", "Could not allocate", "Disk full", "disk full", "too many"]
                .iter()
                .any(|s| stderr.contains(s)) =>
        {
            ImageError::PartitionTooSmall {
                mount_point: p.mount_point.clone(),
                size_mib: p.size / MIB,
                content_mib: p.content_bytes.div_ceil(MIB),
                needed_mib: (p.size + p.size / 4).div_ceil(MIB),
            }
        }
        _ => e,
    }
}

/// The fstab: root first, then the rest by mount point (parents before children).
fn fstab(parts: &[PartitionInfo]) -> String {
    let mut sorted: Vec<&PartitionInfo> = parts.iter().collect();
    sorted
        .sort_by(|a, b| (a.mount_point != "/", &a.mount_point).cmp(&(b.mount_point != "/", &b.mount_point)));
    let mut s = String::from("# Written by kiln at disk assembly: file systems by UUID.\n");
    for p in sorted {
        let (opts, pass) = match p.fs_type.as_str() {
            // nofail: a damaged ESP must not stop the system from booting to a shell.
            "vfat" => ("umask=0077,nofail".to_string(), 2),
            _ if p.mount_point == "/" => (p.mount_options.join(","), 1),
            _ if p.mount_options.is_empty() => ("defaults".to_string(), 2),
            _ => (p.mount_options.join(","), 2),
        };
        s.push_str(&format!("UUID={} {} {} {} 0 {}\n", p.fs_uuid, p.mount_point, p.fs_type, opts, pass));
    }
    s
}

/// Makes the real directories leading to `rel` under `base` (refusing symlinks, which a
/// hostile tree may have staged there) and returns the file's path, any old file removed.
fn prepare_generated(base: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel);
    let mut p = base.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ImageError::MountPointNotDirectory {
                        mount_point: format!("/{}", parent.display()),
                        path: p,
                        found: "symlink or non-directory",
                    });
                }
                Err(_) => fs::create_dir(&p).map_err(|e| ImageError::io("creating", &p, e))?,
            }
        }
    }
    let file = base.join(rel);
    match fs::symlink_metadata(&file) {
        Ok(m) if m.is_dir() => {
            return Err(ImageError::io(
                "replacing",
                &file,
                std::io::Error::other("a directory is in the way"),
            ));
        }
        Ok(_) => fs::remove_file(&file).map_err(|e| ImageError::io("replacing", &file, e))?,
        Err(_) => {}
    }
    Ok(file)
}

fn finish_generated(base: &Path, file: &Path, epoch: i64) -> Result<()> {
    // The file and every directory up to the base get the clamp time.
    let mut p = file.to_path_buf();
    loop {
        tree::set_times_raw(&p, (epoch, 0), (epoch, 0))?;
        if !p.pop() || p == base {
            break;
        }
    }
    Ok(())
}

fn write_generated(base: &Path, rel: &str, data: &[u8], mode: u32, epoch: i64) -> Result<()> {
    let file = prepare_generated(base, rel)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&file)
        .map_err(|e| ImageError::io("writing", &file, e))?;
    f.write_all(data).map_err(|e| ImageError::io("writing", &file, e))?;
    drop(f);
    finish_generated(base, &file, epoch)
}

fn copy_generated(base: &Path, rel: &str, from: &Path, epoch: i64) -> Result<()> {
    let file = prepare_generated(base, rel)?;
    let mut src = tree::open_regular(from)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&file)
        .map_err(|e| ImageError::io("writing", &file, e))?;
    std::io::copy(&mut src, &mut dst).map_err(|e| ImageError::io("copying to", &file, e))?;
    drop(dst);
    finish_generated(base, &file, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_lists_root_first_with_options() {
        let p = |mp: &str, fs: &str, opts: &[&str]| PartitionInfo {
            mount_point: mp.into(),
            label: layout::label_for(mp),
            fs_type: fs.into(),
            offset: 0,
            size: 0,
            content_bytes: 0,
            part_uuid: String::new(),
            fs_uuid: format!("U{}", mp.len()),
            mount_options: opts.iter().map(|s| s.to_string()).collect(),
        };
        let s = fstab(&[
            p("/boot/efi", "vfat", &[]),
            p("/var/log", "ext4", &["nodev", "noexec"]),
            p("/", "ext4", &["errors=remount-ro"]),
        ]);
        let lines: Vec<&str> = s.lines().skip(1).collect();
        assert_eq!(lines[0], "UUID=U1 / ext4 errors=remount-ro 0 1");
        assert_eq!(lines[1], "UUID=U9 /boot/efi vfat umask=0077,nofail 0 2");
        assert_eq!(lines[2], "UUID=U8 /var/log ext4 nodev,noexec 0 2");
    }
}
