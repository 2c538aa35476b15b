//! Reading files of a hostile root directory without ever leaving it.
//!
//! An image is untrusted input: `var/lib/dpkg` may be a symlink to `/etc` of the host, and a
//! naive `root.join(path)` would read the host's files into an SBOM. Every path is therefore
//! resolved one component at a time with `openat()` relative to the root's directory descriptor,
//! never following a symlink in the kernel (`O_NOFOLLOW`): a symlink is read with `readlinkat()`
//! and its target resolved again *inside* the root, as `chroot` would (absolute targets start at
//! the root, `..` stops at it). Intermediate directories are held open as descriptors, so a
//! concurrent rename cannot redirect the walk, and a component swapped for a symlink after it was
//! inspected makes the open fail instead of being followed.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// How many symlinks one lookup may traverse, as Linux's own limit (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// The largest file read from an image. A dpkg status file of a full desktop is ~10 MiB; the
/// limit only stops a planted multi-GiB file from exhausting memory.
pub const MAX_FILE_SIZE: u64 = 256 * 1024 * 1024;

/// A root directory opened for in-root reads.
#[derive(Debug)]
pub struct RootFs {
    root: OwnedFd,
    path: PathBuf,
}

impl RootFs {
    /// Opens `path` (trusted: given by the operator) as the root of an image.
    pub fn open(path: &Path) -> io::Result<RootFs> {
        let root = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(RootFs { root, path: path.to_path_buf() })
    }

    /// The host path the root was opened from (for messages only; never used to open files).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a regular file at `rel` (a path inside the root, leading `/` optional).
    /// `Ok(None)` when it does not exist.
    pub fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        // O_NONBLOCK: a FIFO planted where a file is expected must not hang the scanner.
        let fd = match self.open_in_root(rel, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        if stat.st_size as u64 > MAX_FILE_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is {} bytes, more than the {MAX_FILE_SIZE}-byte limit", stat.st_size),
            ));
        }
        let mut buf = Vec::with_capacity(stat.st_size as usize);
        std::fs::File::from(fd).take(MAX_FILE_SIZE + 1).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Lists the names in the directory at `rel`, sorted. `Ok(None)` when it does not exist.
    pub fn read_dir(&self, rel: &str) -> io::Result<Option<Vec<String>>> {
        let fd = match self.open_in_root(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        let dir = rustix::fs::Dir::read_from(&fd)?;
        for entry in dir {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." {
                names.push(name.into_owned());
            }
        }
        names.sort();
        Ok(Some(names))
    }

    /// The target of the symlink at `rel` (its last component is not followed). `Ok(None)` when
    /// it does not exist or is not a symlink.
    pub fn read_link(&self, rel: &str) -> io::Result<Option<String>> {
        let (parent, name) = match split_last(rel) {
            Some(p) => p,
            None => return Ok(None),
        };
        let dir = match self.open_in_root(parent, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {}
            Ok(_) => return Ok(None),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let target = rustix::fs::readlinkat(&dir, name, Vec::new())?;
        Ok(Some(target.to_string_lossy().into_owned()))
    }

    /// The status of the object at `rel`: with `follow`, a final symlink is resolved inside the
    /// root (as the image's own system would see the file); without it, the link itself is
    /// described. `Ok(None)` when it does not exist.
    pub fn metadata(&self, rel: &str, follow: bool) -> io::Result<Option<Metadata>> {
        let stat = if follow {
            match self.open_in_root(rel, OFlags::PATH) {
                Ok(fd) => rustix::fs::fstat(&fd)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        } else {
            let Some((parent, name)) = split_last(rel) else {
                // The root itself.
                return rustix::fs::fstat(&self.root).map(|s| Some(Metadata::from(&s))).map_err(Into::into);
            };
            let dir = match self.open_in_root(parent, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Some(Metadata::from(&stat)))
    }

    /// Resolves `rel` inside the root and opens the final object with `flags`.
    fn open_in_root(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let mut pending: VecDeque<String> = components(rel).collect();
        // Descriptors of the directories walked so far; the root is implicit below them.
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut links = 0usize;
        while let Some(comp) = pending.pop_front() {
            if comp == ".." {
                stack.pop();
                continue;
            }
            let cur: BorrowedFd<'_> = stack.last().map_or(self.root.as_fd(), |fd| fd.as_fd());
            let st = rustix::fs::statat(cur, comp.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error()));
                }
                let target = rustix::fs::readlinkat(cur, comp.as_str(), Vec::new())?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    stack.clear();
                }
                for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(c);
                }
                continue;
            }
            let last = pending.is_empty();
            let open_flags = if last {
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC
            } else {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
            };
            let fd = rustix::fs::openat(cur, comp.as_str(), open_flags, Mode::empty())?;
            if last {
                return Ok(fd);
            }
            stack.push(fd);
        }
        // The path named a directory reached through `..` or a symlink (or the root itself).
        let cur: BorrowedFd<'_> = stack.last().map_or(self.root.as_fd(), |fd| fd.as_fd());
        Ok(rustix::fs::openat(cur, ".", flags | OFlags::CLOEXEC, Mode::empty())?)
    }
}

/// What [`RootFs::metadata`] tells about a file: its kind, permission bits and owners (ids as
/// stored in the image; names come from the image's own /etc/passwd and /etc/group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// The kind of a file in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

impl From<&rustix::fs::Stat> for Metadata {
    fn from(st: &rustix::fs::Stat) -> Self {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            _ => FileKind::Other,
        };
        Metadata {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
        }
    }
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string)
}

fn split_last(rel: &str) -> Option<(&str, &str)> {
    let trimmed = rel.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) => Some((&trimmed[..i], &trimmed[i + 1..])).filter(|(_, n)| !n.is_empty()),
        None if !trimmed.is_empty() => Some(("", trimmed)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host secret").unwrap();
        let img = tempfile::tempdir().unwrap();
        let root = img.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        // Debian's own relative link, and an absolute one that must stay inside.
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        symlink("/usr/lib/os-release", root.join("etc/abs")).unwrap();
        symlink("../../../../../..", root.join("etc/up")).unwrap();
        symlink(host.path().join("secret"), root.join("etc/escape")).unwrap();
        symlink("loop2", root.join("etc/loop1")).unwrap();
        symlink("loop1", root.join("etc/loop2")).unwrap();
        let fs = RootFs::open(root).unwrap();
        assert_eq!(fs.read("etc/os-release").unwrap().unwrap(), b"ID=debian\n");
        assert_eq!(fs.read("/etc/abs").unwrap().unwrap(), b"ID=debian\n");
        assert_eq!(fs.read("etc/up/usr/lib/os-release").unwrap().unwrap(), b"ID=debian\n");
        // The host file's path is looked up inside the image, where it does not exist.
        assert_eq!(fs.read("etc/escape").unwrap(), None);
        assert!(fs.read("etc/loop1").is_err());
        assert_eq!(fs.read_link("etc/os-release").unwrap().as_deref(), Some("../usr/lib/os-release"));
        let followed = fs.metadata("etc/os-release", true).unwrap().unwrap();
        assert_eq!(followed.kind, FileKind::File);
        assert_eq!(followed.size, 10);
        assert_eq!(fs.metadata("etc/os-release", false).unwrap().unwrap().kind, FileKind::Symlink);
        // The host file's metadata is not reachable through the planted link either.
        assert_eq!(fs.metadata("etc/escape", true).unwrap(), None);
        assert_eq!(fs.metadata("etc/escape", false).unwrap().unwrap().kind, FileKind::Symlink);
        assert_eq!(fs.metadata("etc", true).unwrap().unwrap().kind, FileKind::Dir);
    }

    #[test]
    fn fifo_is_refused_not_waited_on() {
        let img = tempfile::tempdir().unwrap();
        let fifo = img.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();
        let fs = RootFs::open(img.path()).unwrap();
        assert!(fs.read("fifo").is_err());
    }
}
