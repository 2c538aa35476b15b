//! Golden-image cleanup: the last layer of every build.
//!
//! It runs inside the sandbox like any step (so every path it touches resolves inside the
//! image) and removes what must not ship in an image that many instances start from: SSH host
//! keys, the machine id, logs, package lists and caches, temporary files, shell histories, the
//! build's resolv.conf and hostname, the random seed, DHCP leases. What each instance needs is
//! made again on first boot: systemd creates a machine id when /etc/machine-id is empty, and a
//! kiln unit runs `ssh-keygen -A` before sshd when the image has OpenSSH and no host keys.
//!
//! The sandbox gives steps a private /tmp, so nothing a step writes there reaches the image;
//! what the *parent* image had in /tmp and /var/tmp is removed by whiteouts that
//! [`whiteout_children`] writes into the cleanup layer.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The cleanup script, run with `sh -eu` in the sandbox.
pub const SCRIPT: &str = r#"
# SSH host keys: regenerated per instance on first boot.
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
if [ -x /usr/sbin/sshd ]; then
  mkdir -p /etc/systemd/system/ssh.service.requires /etc/systemd/system/multi-user.target.wants
  cat > /etc/systemd/system/kiln-ssh-host-keys.service <<'UNIT'
[Unit]
Description=Generate this instance's SSH host keys (kiln first boot)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
WantedBy=multi-user.target
UNIT
  ln -sf ../kiln-ssh-host-keys.service /etc/systemd/system/ssh.service.requires/kiln-ssh-host-keys.service
  ln -sf ../kiln-ssh-host-keys.service /etc/systemd/system/multi-user.target.wants/kiln-ssh-host-keys.service
fi
# Machine id: empty, so systemd makes one on first boot; D-Bus's follows it.
if [ -e /etc/machine-id ] || [ -d /etc/systemd ]; then : > /etc/machine-id; fi
if [ -d /var/lib/dbus ]; then rm -f /var/lib/dbus/machine-id; ln -s /etc/machine-id /var/lib/dbus/machine-id; fi
# Logs, keeping the directories packages expect.
if [ -d /var/log ]; then find /var/log -mindepth 1 \( -type f -o -type l \) -delete; fi
rm -rf /var/log/journal/*
# Package lists and caches.
rm -rf /var/lib/apt/lists/*
mkdir -p /var/lib/apt/lists/partial
rm -f /var/cache/apt/*.bin
find /var/cache/apt/archives -mindepth 1 \( -name '*.deb' -o -path '*/partial/*' \) -delete 2>/dev/null || true
rm -f /var/cache/debconf/*-old /var/lib/dpkg/*-old
rm -rf /var/cache/man/*
# ldconfig's aux cache records inode numbers and times of this build; ldconfig remakes it.
rm -f /var/cache/ldconfig/aux-cache
# Shell histories and editor state.
rm -f /root/.bash_history /root/.lesshst /root/.viminfo /root/.wget-hsts
for h in /home/*; do [ -d "$h" ] && rm -f "$h/.bash_history" "$h/.lesshst" "$h/.viminfo"; done
# What the build host lent the image.
if [ -f /etc/resolv.conf ] && [ ! -L /etc/resolv.conf ]; then rm -f /etc/resolv.conf; fi
echo localhost > /etc/hostname
# Per-instance state.
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -f /var/lib/dhcp/*.leases
rm -rf /var/tmp/*
"#;

/// Directories whose content the cleanup layer hides entirely.
pub const EMPTIED: &[&str] = &["tmp", "var/tmp"];

/// Hide every child of `rel` (a directory relative to the image root) that any of `lower`
/// layers (bottom first) holds, by writing overlayfs whiteouts (character devices 0:0) into
/// `upper/rel`. Names come from image content but are single path components by construction
/// (directory entries), and the device nodes are made with `mknodat` relative to a directory
/// opened without following symlinks, so nothing is created outside `upper`.
pub fn whiteout_children(lower: &[&Path], upper: &Path, rel: &str) -> std::io::Result<usize> {
    use std::collections::BTreeSet;
    use std::os::fd::AsRawFd;
    let mut names = BTreeSet::new();
    for layer in lower {
        let dir = layer.join(rel);
        // Only a real directory in a layer counts: a symlink there is image content to leave.
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        for entry in std::fs::read_dir(&dir)? {
            names.insert(entry?.file_name());
        }
    }
    if names.is_empty() {
        return Ok(0);
    }
    let target = upper.join(rel);
    std::fs::create_dir_all(&target)?;
    let opened = std::fs::File::open(&target)?;
    let mut count = 0;
    for name in names {
        let c = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: `opened` is a valid directory descriptor for the duration of the call and
        // `c` is a NUL-terminated single path component.
        let rc = unsafe { libc::mknodat(opened.as_raw_fd(), c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(err);
            }
        }
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn whiteouts_hide_what_lower_layers_hold_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (base, mid, upper) = (dir.path().join("base"), dir.path().join("mid"), dir.path().join("upper"));
        std::fs::create_dir_all(base.join("tmp")).unwrap();
        std::fs::write(base.join("tmp/a"), "").unwrap();
        std::fs::create_dir_all(mid.join("tmp/b")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let n = whiteout_children(&[&base, &mid], &upper, "tmp").unwrap();
        assert_eq!(n, 2);
        for name in ["a", "b"] {
            let m = std::fs::symlink_metadata(upper.join("tmp").join(name)).unwrap();
            assert!(m.file_type().is_char_device(), "{name} is a whiteout");
        }
        assert_eq!(whiteout_children(&[&base], &upper, "var/tmp").unwrap(), 0);
        assert!(!upper.join("var").exists());
    }
}
