//! Reading the (hostile) image tree: scanning it, splitting it by mount point, copying each
//! share into a staging directory, and resolving paths inside it.
//!
//! The input tree is never changed, and nothing here follows a symlink: entries are read with
//! `lstat`, walked only into directories that `lstat` reported as directories, opened with
//! `O_NOFOLLOW`, and symlinks are copied as symlinks. Paths *inside* the image (such as
//! `/vmlinuz`) are resolved by [`resolve_in_root`], which treats the tree as `/`. This assumes
//! that nobody changes the tree while it is being assembled (the build has finished with it).

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

/// ext4 block size kiln uses; content is measured in these.
pub(crate) const BLOCK: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl Kind {
    fn of(meta: &Metadata) -> Kind {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else if t.is_symlink() {
            Kind::Symlink(PathBuf::new())
        } else if t.is_char_device() {
            Kind::CharDev
        } else if t.is_block_device() {
            Kind::BlockDev
        } else if t.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            Kind::Dir => "d",
            Kind::File => "f",
            Kind::Symlink(_) => "l",
            Kind::CharDev => "c",
            Kind::BlockDev => "b",
            Kind::Fifo => "p",
            Kind::Socket => "s",
        }
    }
}

/// One entry of the tree (the tree's root itself is not an entry).
#[derive(Debug)]
pub(crate) struct Entry {
    /// Path relative to the tree root.
    pub rel: PathBuf,
    pub kind: Kind,
    pub meta: Metadata,
    /// Index of the partition (into the mount list) whose file system holds this entry.
    pub part: usize,
}

/// What a partition's share of the tree needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Data and directory blocks of `BLOCK` bytes.
    pub blocks: u64,
    /// Inodes (hard links counted once).
    pub inodes: u64,
    /// Regular files (the ESP loses up to a cluster to each).
    pub files: u64,
}

/// The metadata of a mount point directory, which becomes its file system's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

impl Default for DirMeta {
    fn default() -> Self {
        DirMeta { mode: 0o755, uid: 0, gid: 0, mtime: 0 }
    }
}

/// The scanned tree, split by mount point.
#[derive(Debug)]
pub(crate) struct Scan {
    pub entries: Vec<Entry>,
    /// Per mount point (same order as the mount list).
    pub usage: Vec<Usage>,
    /// Per mount point: the directory's metadata, `None` when the tree lacks it.
    pub roots: Vec<Option<DirMeta>>,
    /// Newest modification time in the tree.
    pub max_mtime: i64,
}

/// Mount points as paths relative to the tree; index 0 must be the root ("").
pub(crate) fn rel_mount(mp: &str) -> PathBuf {
    PathBuf::from(mp.trim_start_matches('/'))
}

/// Scans `tree`, assigning each entry to the deepest mount point above it.
pub(crate) fn scan(tree: &Path, mounts: &[PathBuf]) -> Result<Scan> {
    let root_meta =
        fs::symlink_metadata(tree).map_err(|e| ImageError::io("reading the image tree", tree, e))?;
    if !root_meta.is_dir() {
        return Err(ImageError::TreeNotDirectory { path: tree.to_owned() });
    }
    let mut roots = vec![None; mounts.len()];
    roots[0] = Some(dir_meta(&root_meta));
    for (i, m) in mounts.iter().enumerate().skip(1) {
        roots[i] = check_mount_point(tree, m)?;
    }
    let mut scan =
        Scan { entries: Vec::new(), usage: vec![Usage::default(); mounts.len()], roots, max_mtime: 0 };
    let mut seen_links: HashMap<(usize, u64, u64), ()> = HashMap::new();
    walk(tree, Path::new(""), mounts, &mut scan, &mut seen_links)?;
    for u in scan.usage.iter_mut() {
        // lost+found (4 blocks), the root directory, and the first 11 reserved inodes.
        u.blocks += 5;
        u.inodes += 12;
    }
    Ok(scan)
}

fn walk(
    tree: &Path,
    rel: &Path,
    mounts: &[PathBuf],
    scan: &mut Scan,
    seen_links: &mut HashMap<(usize, u64, u64), ()>,
) -> Result<()> {
    let dir = tree.join(rel);
    let mut names: Vec<OsString> = fs::read_dir(&dir)
        .map_err(|e| ImageError::io("listing", &dir, e))?
        .map(|r| r.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| ImageError::io("listing", &dir, e))?;
    // Sorted, so that staging (and with it hard-link choice and errors) is the same every run.
    names.sort();
    // This directory's own block count, charged to the partition holding the directory's
    // content (which for a mount point is the partition mounted there).
    let here = owner_of_content(rel, mounts);
    // Directory entries take about 8 bytes plus the name rounded to 4, "." and ".." 24 bytes;
    // blocks are assumed three quarters full.
    let bytes: u64 = 24 + names.iter().map(|n| 8 + (n.len() as u64).div_ceil(4) * 4).sum::<u64>();
    scan.usage[here].blocks += bytes.div_ceil(BLOCK * 3 / 4).max(1);
    for name in names {
        let child_rel = rel.join(&name);
        let path = tree.join(&child_rel);
        let meta = fs::symlink_metadata(&path).map_err(|e| ImageError::io("reading", &path, e))?;
        let mut kind = Kind::of(&meta);
        let part = here;
        scan.max_mtime = scan.max_mtime.max(meta.mtime());
        let u = &mut scan.usage[part];
        let first_link = meta.nlink() <= 1 || kind == Kind::Dir || {
            let fresh = !seen_links.contains_key(&(part, meta.dev(), meta.ino()));
            seen_links.insert((part, meta.dev(), meta.ino()), ());
            fresh
        };
        if first_link {
            u.inodes += 1;
            match &mut kind {
                Kind::File => {
                    // Allocated size, not length: sparse files stay sparse.
                    u.blocks += meta.len().min(meta.blocks() * 512).div_ceil(BLOCK);
                    u.files += 1;
                }
                Kind::Symlink(target) => {
                    *target =
                        fs::read_link(&path).map_err(|e| ImageError::io("reading the symlink", &path, e))?;
                    // Targets of 60 bytes or more do not fit in the inode.
                    if target.as_os_str().len() >= 60 {
                        u.blocks += 1;
                    }
                }
                _ => {}
            }
        } else if let Kind::Symlink(target) = &mut kind {
            *target = fs::read_link(&path).map_err(|e| ImageError::io("reading the symlink", &path, e))?;
        }
        let is_dir = kind == Kind::Dir;
        scan.entries.push(Entry { rel: child_rel.clone(), kind, meta, part });
        if is_dir {
            walk(tree, &child_rel, mounts, scan, seen_links)?;
        }
    }
    Ok(())
}

/// The partition holding the *content* of directory `rel`: the deepest mount point at or
/// above it.
fn owner_of_content(rel: &Path, mounts: &[PathBuf]) -> usize {
    let mut best = 0;
    let mut depth = 0;
    for (i, m) in mounts.iter().enumerate().skip(1) {
        let d = m.components().count();
        if rel.starts_with(m) && d > depth {
            best = i;
            depth = d;
        }
    }
    best
}

/// Checks that each existing component of mount point `m` is a real directory. Returns the
/// mount directory's metadata, or `None` if (part of) it does not exist yet.
fn check_mount_point(tree: &Path, m: &Path) -> Result<Option<DirMeta>> {
    let mut p = tree.to_path_buf();
    for c in m.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) => {
                let found = if meta.file_type().is_symlink() { "symlink" } else { "non-directory" };
                return Err(ImageError::MountPointNotDirectory {
                    mount_point: format!("/{}", m.display()),
                    path: p,
                    found,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("reading", &p, e)),
        }
    }
    let meta = fs::symlink_metadata(&p).map_err(|e| ImageError::io("reading", &p, e))?;
    Ok(Some(dir_meta(&meta)))
}

fn dir_meta(meta: &Metadata) -> DirMeta {
    DirMeta { mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), mtime: meta.mtime() }
}

/// A digest of the tree's shape (paths, types, modes, owners, sizes, clamped times, link
/// targets; not file contents, which would cost a full read) used to derive GUIDs when the
/// caller gives no seed.
pub(crate) fn shape_digest(scan: &Scan, epoch: i64) -> [u8; 32] {
    let mut h = Sha256::new();
    for e in &scan.entries {
        let m = &e.meta;
        h.update(e.rel.as_os_str().as_bytes());
        h.update([0]);
        let target = match &e.kind {
            Kind::Symlink(t) => t.as_os_str().as_bytes(),
            _ => b"",
        };
        let line = format!(
            "{} {:o} {} {} {} {} {} {}\n",
            e.kind.tag(),
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            if e.kind == Kind::File { m.len() } else { 0 },
            m.mtime().min(epoch),
            m.rdev(),
            e.part
        );
        h.update(target);
        h.update(line.as_bytes());
    }
    h.finalize().into()
}

/// Copies every entry into `staging[entry.part]` (each a fresh, empty directory), with owners,
/// modes, extended attributes and hard links kept, and times clamped to `epoch`.
pub(crate) fn stage(
    tree: &Path,
    scan: &Scan,
    mounts: &[PathBuf],
    staging: &[PathBuf],
    epoch: i64,
) -> Result<()> {
    let mut links: HashMap<(usize, u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, &Metadata)> = Vec::new();
    for e in &scan.entries {
        let rel = e.rel.strip_prefix(&mounts[e.part]).unwrap_or(&e.rel);
        let dest = staging[e.part].join(rel);
        let src = tree.join(&e.rel);
        let m = &e.meta;
        if e.kind != Kind::Dir && m.nlink() > 1 {
            if let Some(first) = links.get(&(e.part, m.dev(), m.ino())) {
                fs::hard_link(first, &dest)
                    .map_err(|err| ImageError::io("hard-linking in staging", &dest, err))?;
                continue;
            }
            links.insert((e.part, m.dev(), m.ino()), dest.clone());
        }
        match &e.kind {
            Kind::Dir => {
                fs::create_dir(&dest).map_err(|err| ImageError::io("creating in staging", &dest, err))?;
            }
            Kind::File => copy_file(&src, &dest, m)?,
            Kind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &dest)
                    .map_err(|err| ImageError::io("creating a symlink in staging", &dest, err))?;
            }
            Kind::CharDev | Kind::BlockDev | Kind::Fifo => mknod(&dest, m.mode(), m.rdev())?,
            // mke2fs cannot store sockets either; they are run-time objects anyway.
            Kind::Socket => continue,
        }
        let is_link = matches!(e.kind, Kind::Symlink(_));
        std::os::unix::fs::lchown(&dest, Some(m.uid()), Some(m.gid()))
            .map_err(|err| ImageError::io("setting the owner of", &dest, err))?;
        if !is_link {
            // After chown, which clears set-id bits.
            fs::set_permissions(&dest, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(|err| ImageError::io("setting the mode of", &dest, err))?;
        }
        // After chown, which drops security.capability.
        copy_xattrs(&src, &dest, is_link)?;
        if e.kind == Kind::Dir {
            dirs.push((dest, m));
        } else {
            set_times(&dest, m, epoch)?;
        }
    }
    // Mount directories missing from the tree are created in their parent's share.
    for (i, m) in mounts.iter().enumerate().skip(1) {
        if scan.roots[i].is_none() {
            let parent = owner_of_content(m.parent().unwrap_or(Path::new("")), mounts);
            let rel = m.strip_prefix(&mounts[parent]).unwrap_or(m);
            create_dirs_under(&staging[parent], rel, epoch)?;
        }
    }
    // Directory times last: creating their children changed them.
    for (dest, m) in dirs.iter().rev() {
        set_times(dest, m, epoch)?;
    }
    Ok(())
}

fn create_dirs_under(base: &Path, rel: &Path, epoch: i64) -> Result<()> {
    let mut p = base.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::MountPointNotDirectory {
                    mount_point: format!("/{}", rel.display()),
                    path: p,
                    found: "non-directory",
                });
            }
            Err(_) => {
                fs::create_dir(&p).map_err(|e| ImageError::io("creating in staging", &p, e))?;
                set_times_raw(&p, (epoch, 0), (epoch, 0))?;
            }
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dest: &Path, meta: &Metadata) -> Result<()> {
    // O_NOATIME: reading the tree should not even change its access times (root may).
    let from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
        .open(src)
        .or_else(|_| OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(src))
        .map_err(|e| ImageError::io("opening", src, e))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| ImageError::io("creating in staging", dest, e))?;
    let err = |e| ImageError::io("copying into staging", dest, e);
    if meta.blocks() * 512 >= meta.len() {
        // io::copy between files uses copy_file_range or sendfile: the data stays in the kernel.
        io::copy(&mut &from, &mut &to).map_err(err)?;
        return Ok(());
    }
    // A sparse file (such as /var/log/lastlog, or a hostile 1 PiB one) is copied extent by
    // extent, so staging holds only its data.
    to.set_len(meta.len()).map_err(err)?;
    let mut pos: i64 = 0;
    loop {
        let data = seek(&from, pos, libc::SEEK_DATA);
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        let hole = seek(&from, data, libc::SEEK_HOLE).max(data);
        let mut left = (hole - data) as u64;
        let mut at = data as u64;
        let mut buf = vec![0u8; (left.min(1 << 20)) as usize];
        while left > 0 {
            let n = buf.len().min(left as usize);
            from.read_exact_at(&mut buf[..n], at).map_err(err)?;
            to.write_all_at(&buf[..n], at).map_err(err)?;
            at += n as u64;
            left -= n as u64;
        }
        pos = hole;
    }
    Ok(())
}

fn seek(f: &File, pos: i64, whence: libc::c_int) -> i64 {
    // SAFETY: lseek on a file descriptor this File owns; it only moves the file offset,
    // which nothing else uses (reads are positional).
    unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) as i64 }
}

pub(crate) fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        ImageError::io("using", p, io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    })
}

fn mknod(dest: &Path, mode: u32, rdev: u64) -> Result<()> {
    let c = cpath(dest)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; mknod reads nothing else.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if r != 0 {
        return Err(ImageError::io(
            "creating a device node or FIFO in staging",
            dest,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Sets mtime to the source's, clamped to `epoch`, and atime to the same, without following
/// symlinks. The source's atime is not used: reading the tree (this assembly included)
/// changes it, so it would make two assemblies differ.
pub(crate) fn set_times(dest: &Path, m: &Metadata, epoch: i64) -> Result<()> {
    let mtime = if m.mtime() > epoch { (epoch, 0) } else { (m.mtime(), m.mtime_nsec()) };
    set_times_raw(dest, mtime, mtime)
}

pub(crate) fn set_times_raw(dest: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<()> {
    let c = cpath(dest)?;
    let ts = [
        libc::timespec { tv_sec: atime.0 as libc::time_t, tv_nsec: atime.1 as _ },
        libc::timespec { tv_sec: mtime.0 as libc::time_t, tv_nsec: mtime.1 as _ },
    ];
    // SAFETY: `c` is a NUL-terminated path and `ts` two initialised timespecs, both alive for
    // the call; AT_SYMLINK_NOFOLLOW makes it act on a symlink itself.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(ImageError::io("setting the times of", dest, io::Error::last_os_error()));
    }
    Ok(())
}

fn copy_xattrs(src: &Path, dest: &Path, is_link: bool) -> Result<()> {
    let s = cpath(src)?;
    let d = cpath(dest)?;
    let err = |action, p: &Path| ImageError::io(action, p, io::Error::last_os_error());
    // SAFETY: a null buffer of size 0 asks only for the needed length.
    let len = unsafe { libc::llistxattr(s.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        let e = io::Error::last_os_error();
        // A source file system without xattrs simply has none to copy.
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(());
        }
        return Err(ImageError::io("listing extended attributes of", src, e));
    }
    if len == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: `names` is writable for `names.len()` bytes.
    let len = unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(err("listing extended attributes of", src));
    }
    names.truncate(len as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL");
        // SAFETY: size query with a null buffer, as above.
        let vlen = unsafe { libc::lgetxattr(s.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if vlen < 0 {
            return Err(err("reading extended attributes of", src));
        }
        let mut value = vec![0u8; vlen as usize];
        // SAFETY: `value` is writable for `value.len()` bytes.
        let vlen =
            unsafe { libc::lgetxattr(s.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if vlen < 0 {
            return Err(err("reading extended attributes of", src));
        }
        // SAFETY: all pointers point to live buffers of the lengths given.
        let r =
            unsafe { libc::lsetxattr(d.as_ptr(), cname.as_ptr(), value.as_ptr().cast(), vlen as usize, 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            // The kernel refuses user.* attributes on symlinks; they cannot exist in the
            // source either, so only other namespaces matter there.
            if is_link && e.raw_os_error() == Some(libc::EPERM) {
                continue;
            }
            return Err(ImageError::io("setting extended attributes of", dest, e));
        }
    }
    Ok(())
}

/// Resolves `path` (absolute, as the image sees it) inside `tree`, following symlinks the way
/// the image would: absolute targets start again at the tree, `..` stops at the tree's root.
/// Returns the host path of the final non-symlink, or `None` if something along the way does
/// not exist.
pub(crate) fn resolve_in_root(tree: &Path, path: &str) -> Result<Option<PathBuf>> {
    let mut todo: Vec<OsString> = Path::new(path).components().rev().filter_map(component_name).collect();
    let mut cur: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let mut candidate = tree.to_path_buf();
        candidate.extend(cur.iter());
        candidate.push(&c);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(ImageError::io(
                        "resolving inside the image",
                        candidate,
                        io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| ImageError::io("reading the symlink", &candidate, e))?;
                if target.is_absolute() {
                    cur.clear();
                }
                todo.extend(target.components().rev().filter_map(component_name));
            }
            Ok(_) => cur.push(c),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(ImageError::io("resolving inside the image", candidate, e)),
        }
    }
    let mut out = tree.to_path_buf();
    out.extend(cur.iter());
    Ok(Some(out))
}

fn component_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    }
}

/// Opens a regular file inside the tree that [`resolve_in_root`] returned, refusing anything
/// but a regular file.
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| ImageError::io("opening", path, e))?;
    let m = f.metadata().map_err(|e| ImageError::io("reading", path, e))?;
    if !m.is_file() {
        return Err(ImageError::io("opening", path, io::Error::other("not a regular file")));
    }
    Ok(f)
}

/// The file name as text, for messages and loader entries.
pub(crate) fn name_of(p: &Path) -> String {
    p.file_name().unwrap_or(OsStr::new("")).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_stays_inside_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join("boot/vmlinuz-1"), b"k").unwrap();
        symlink("boot/vmlinuz-1", root.join("vmlinuz")).unwrap();
        symlink("/../../../boot/vmlinuz-1", root.join("abs")).unwrap();
        symlink("/etc/passwd", root.join("escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve_in_root(root, "/vmlinuz").unwrap(), Some(root.join("boot/vmlinuz-1")));
        assert_eq!(resolve_in_root(root, "/abs").unwrap(), Some(root.join("boot/vmlinuz-1")));
        // /etc/passwd of the host is never reached: the tree has no etc.
        assert_eq!(resolve_in_root(root, "/escape").unwrap(), None);
        assert!(resolve_in_root(root, "/loop").is_err());
    }

    #[test]
    fn mount_point_through_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        symlink("/etc", t.path().join("var")).unwrap();
        let mounts = vec![PathBuf::new(), rel_mount("/var/log")];
        let e = scan(t.path(), &mounts).unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
    }
}
