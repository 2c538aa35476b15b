//! The disk layout a recipe asks for: the EFI system partition, the root file system, and any
//! separate partitions for mount points such as /tmp, /var, /var/log, /var/log/audit or /home
//! with their mount options. This module only checks the layout against itself; whether each
//! partition can hold its share of the tree is decided once the tree has been scanned
//! ([`crate::assemble`]).

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

const MIB: u64 = 1024 * 1024;

/// The smallest ESP kiln makes: FAT32 needs 65,525 clusters, and firmware is only required
/// to read FAT32 ESPs, so the ESP never drops to FAT16.
pub const MIN_ESP_BYTES: u64 = 64 * MIB;

/// How big a partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum SizeSpec {
    /// Computed from the content plus the layout's headroom.
    Auto,
    /// Exactly this many bytes (rounded up to whole MiB).
    Fixed { bytes: u64 },
}

impl SizeSpec {
    /// A fixed size in MiB.
    pub fn mib(mib: u64) -> Self {
        SizeSpec::Fixed { bytes: mib * MIB }
    }
}

/// A separate ext4 partition mounted at `mount_point`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionSpec {
    /// Absolute mount point, such as `/var/log`.
    pub mount_point: String,
    pub size: SizeSpec,
    /// fstab options besides `defaults`, such as `nodev`, `nosuid`, `noexec`.
    #[serde(default)]
    pub mount_options: Vec<String>,
}

/// The whole disk. Partitions are laid out ESP first, then the separate partitions in mount
/// point order, then the root last so that a cloud's growpart can extend it into a bigger disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskLayout {
    pub esp_size: SizeSpec,
    pub root_size: SizeSpec,
    #[serde(default)]
    pub root_mount_options: Vec<String>,
    #[serde(default)]
    pub partitions: Vec<PartitionSpec>,
    /// Total disk size. When set, the root partition takes whatever the other partitions leave.
    #[serde(default)]
    pub disk_size: Option<u64>,
    /// Free space added to content-sized partitions, in percent of their content.
    pub headroom_percent: u32,
}

impl Default for DiskLayout {
    fn default() -> Self {
        DiskLayout {
            esp_size: SizeSpec::Auto,
            root_size: SizeSpec::Auto,
            root_mount_options: Vec::new(),
            partitions: Vec::new(),
            disk_size: None,
            headroom_percent: 30,
        }
    }
}

/// Mount points that are API file systems at run time: a partition there would be hidden.
const FORBIDDEN: &[&str] = &["/proc", "/sys", "/dev", "/run", "/boot/efi"];

impl DiskLayout {
    /// Adds a separate partition (builder style).
    pub fn with_partition(mut self, mount_point: &str, size: SizeSpec, options: &[&str]) -> Self {
        self.partitions.push(PartitionSpec {
            mount_point: mount_point.to_owned(),
            size,
            mount_options: options.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    /// Checks the layout against itself: absolute, normalised, distinct mount points, options
    /// that fit in fstab, sizes kiln can make. Content-dependent checks come later.
    pub fn validate(&self) -> Result<()> {
        check_size("the EFI system partition", self.esp_size, MIN_ESP_BYTES)?;
        check_size("/", self.root_size, 8 * MIB)?;
        check_options("/", &self.root_mount_options)?;
        if self.headroom_percent > 1000 {
            return Err(invalid(
                format!("headroom of {}% is not sensible", self.headroom_percent),
                "use a headroom between 0 and 1000 percent",
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.partitions {
            let mp = p.mount_point.as_str();
            check_mount_point(mp)?;
            if let Some(other) = seen.iter().find(|s| **s == mp) {
                return Err(invalid(
                    format!("mount point {mp} is given twice (overlaps {other})"),
                    "give each mount point one partition",
                ));
            }
            seen.push(mp);
            check_size(mp, p.size, 8 * MIB)?;
            check_options(mp, &p.mount_options)?;
        }
        if let Some(d) = self.disk_size
            && d < 3 * MIB
        {
            return Err(invalid(format!("disk size {d} bytes is too small"), "give the disk size in bytes"));
        }
        Ok(())
    }

    /// Separate partitions sorted by mount point (parents before children), which is also
    /// their order on the disk.
    pub(crate) fn sorted_partitions(&self) -> Vec<&PartitionSpec> {
        let mut v: Vec<&PartitionSpec> = self.partitions.iter().collect();
        v.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        v
    }
}

fn invalid(reason: String, hint: &str) -> ImageError {
    ImageError::InvalidLayout { reason, hint: hint.to_owned() }
}

fn check_size(what: &str, size: SizeSpec, min: u64) -> Result<()> {
    if let SizeSpec::Fixed { bytes } = size
        && bytes < min
    {
        return Err(invalid(
            format!("{what} is set to {bytes} bytes, below the minimum of {} MiB", min / MIB),
            "give sizes in bytes (at least the minimum), or let kiln size the partition from its content",
        ));
    }
    Ok(())
}

fn check_mount_point(mp: &str) -> Result<()> {
    let hint = "write mount points as absolute, normalised paths such as /var/log";
    if !mp.starts_with('/') {
        return Err(invalid(format!("mount point {mp:?} is not absolute"), hint));
    }
    if mp == "/" {
        return Err(invalid("/ is the root partition, not a separate one".into(), "drop the / entry"));
    }
    if mp.ends_with('/')
        || mp[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..")
        || mp.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(invalid(format!("mount point {mp:?} is not a normalised path"), hint));
    }
    if let Some(f) = FORBIDDEN.iter().find(|f| mp == **f || mp.starts_with(&format!("{f}/"))) {
        return Err(invalid(
            format!("mount point {mp} is under {f}, which kiln or the running system mounts itself"),
            "choose a mount point outside /proc, /sys, /dev, /run and /boot/efi",
        ));
    }
    Ok(())
}

fn check_options(mp: &str, options: &[String]) -> Result<()> {
    for o in options {
        // fstab splits fields on white space and options on commas, so either would corrupt it.
        let ok = !o.is_empty()
            && o.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-' | '.' | ':' | '@' | '/'));
        if !ok {
            return Err(invalid(
                format!("mount option {o:?} for {mp} is empty or has characters fstab cannot hold"),
                "give one option per entry, such as nodev, nosuid, noexec",
            ));
        }
    }
    Ok(())
}

/// The label of a partition and its file system: `root`, `esp`, or the mount point with
/// slashes turned into dashes (`/var/log` → `var-log`), cut to ext4's 16 bytes.
pub(crate) fn label_for(mount_point: &str) -> String {
    match mount_point {
        "/" => "root".into(),
        "/boot/efi" => "esp".into(),
        mp => mp.trim_start_matches('/').replace('/', "-").chars().take(16).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(l: DiskLayout) -> String {
        l.validate().unwrap_err().to_string()
    }

    #[test]
    fn default_and_typical_layouts_are_valid() {
        DiskLayout::default().validate().unwrap();
        DiskLayout::default()
            .with_partition("/tmp", SizeSpec::mib(64), &["nodev", "nosuid", "noexec"])
            .with_partition("/var", SizeSpec::Auto, &[])
            .with_partition("/var/log", SizeSpec::Auto, &["nodev"])
            .with_partition("/var/log/audit", SizeSpec::Auto, &[])
            .with_partition("/home", SizeSpec::Auto, &["nodev"])
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_mount_points_are_refused() {
        let e = err(DiskLayout::default().with_partition("var", SizeSpec::Auto, &[]));
        assert!(e.contains("not absolute"), "{e}");
        let e = err(DiskLayout::default().with_partition("/var/../etc", SizeSpec::Auto, &[]));
        assert!(e.contains("normalised"), "{e}");
        let e = err(DiskLayout::default().with_partition("/var/", SizeSpec::Auto, &[]));
        assert!(e.contains("normalised"), "{e}");
        let e = err(DiskLayout::default().with_partition("/proc/x", SizeSpec::Auto, &[]));
        assert!(e.contains("under /proc"), "{e}");
        let e = err(DiskLayout::default().with_partition("/", SizeSpec::Auto, &[]));
        assert!(e.contains("root partition"), "{e}");
    }

    #[test]
    fn duplicate_mount_points_are_refused() {
        let e = err(DiskLayout::default().with_partition("/var", SizeSpec::Auto, &[]).with_partition(
            "/var",
            SizeSpec::mib(100),
            &[],
        ));
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn bad_options_and_sizes_are_refused() {
        let e = err(DiskLayout::default().with_partition("/tmp", SizeSpec::Auto, &["nodev,noexec"]));
        assert!(e.contains("fstab"), "{e}");
        let e = err(DiskLayout::default().with_partition("/tmp", SizeSpec::Auto, &["no dev"]));
        assert!(e.contains("fstab"), "{e}");
        let e = err(DiskLayout { esp_size: SizeSpec::mib(16), ..DiskLayout::default() });
        assert!(e.contains("minimum"), "{e}");
    }

    #[test]
    fn labels() {
        assert_eq!(label_for("/"), "root");
        assert_eq!(label_for("/var/log/audit"), "var-log-audit");
        assert_eq!(label_for("/a-very-long-mount/point"), "a-very-long-moun");
    }
}
