//! Reading the (hostile) image tree: merging its layers, scanning it, copying it into one
//! staging directory, splitting that copy by mount point, and resolving paths inside it.
//!
//! The tree is one directory ([`Source::dir`], taken as it is) or a stack of overlayfs layers
//! ([`Source::layers`]: the base tree and the upper directories of the build's overlays),
//! merged here the way overlayfs merges them, without mounting anything: a name in a higher
//! layer hides the same name below; a whiteout (a character device 0:0) deletes it; a
//! directory only merges with the directories below it down to the first layer where that
//! name is not a directory, and not below a directory marked `trusted.overlay.opaque=y`.
//! Redirects, metacopy files and xattr whiteouts (overlayfs features kiln does not mount
//! with) are refused. In a layer stack the whiteouts and every `trusted.overlay.*` attribute
//! are overlayfs's bookkeeping, so they never reach the staging copy; in a plain directory
//! they are content (an image may hold a container engine's own layers) and are copied.
//!
//! No layer is ever changed, and nothing here follows a symlink: entries are read with
//! `lstat`, walked only into directories that `lstat` reported as directories (in every
//! layer), opened with `O_NOFOLLOW`, and symlinks are copied as symlinks. Paths *inside* the
//! image (such as `/vmlinuz`) are resolved by [`Scan::resolve`], which treats the merged tree
//! as `/`. This assumes that nobody changes the layers while they are being assembled (the
//! build has finished with them).
//!
//! The tree is copied once, unsplit, into the staging view (which callers may inspect); at
//! assembly [`split`] moves each mount point's directory out of it by `rename`, leaving an
//! empty directory with the same metadata behind, so the split costs no copying.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    /// Index of the layer (into [`Source::layers`], bottom first) the entry comes from.
    pub layer: usize,
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

/// Where the tree is read from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// Bottom first; a plain directory is one layer.
    pub layers: Vec<PathBuf>,
    /// Whether the layers are overlayfs layers (whiteouts, opaque directories, overlay
    /// attributes interpreted and dropped) rather than one plain directory taken as it is.
    pub overlay: bool,
}

impl Source {
    pub(crate) fn dir(tree: &Path) -> Source {
        Source { layers: vec![tree.to_owned()], overlay: false }
    }

    pub(crate) fn layers(layers: &[PathBuf]) -> Source {
        Source { layers: layers.to_vec(), overlay: true }
    }

    /// The topmost layer: where the merged root's own metadata comes from, and the path named
    /// in messages about the whole tree.
    pub(crate) fn top(&self) -> &Path {
        self.layers.last().expect("a source has at least one layer")
    }
}

/// The scanned (merged) tree, split by mount point.
#[derive(Debug)]
pub(crate) struct Scan {
    pub source: Source,
    /// In path order (a depth-first walk in sorted name order, which is [`Path`]'s order).
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

/// Scans the merged tree of `source`, assigning each entry to the deepest mount point above it.
pub(crate) fn scan(source: &Source, mounts: &[PathBuf]) -> Result<Scan> {
    if source.layers.is_empty() {
        return Err(ImageError::NoLayers);
    }
    // The root merges the layers' roots, top first, down to an opaque one.
    let mut contributors = Vec::new();
    for (l, layer) in source.layers.iter().enumerate().rev() {
        let meta =
            fs::symlink_metadata(layer).map_err(|e| ImageError::io("reading the image tree", layer, e))?;
        if !meta.is_dir() {
            return Err(ImageError::TreeNotDirectory { path: layer.to_owned() });
        }
        contributors.push(l);
        if source.overlay && overlay_attrs(layer, true)?.opaque {
            break;
        }
    }
    let root_meta = fs::symlink_metadata(source.top())
        .map_err(|e| ImageError::io("reading the image tree", source.top(), e))?;
    let mut scan = Scan {
        source: source.clone(),
        entries: Vec::new(),
        usage: vec![Usage::default(); mounts.len()],
        roots: vec![None; mounts.len()],
        max_mtime: 0,
    };
    scan.roots[0] = Some(dir_meta(&root_meta));
    let mut seen_links: HashMap<(usize, usize, u64, u64), ()> = HashMap::new();
    walk(Path::new(""), &contributors, mounts, &mut scan, &mut seen_links)?;
    debug_assert!(scan.entries.windows(2).all(|w| w[0].rel < w[1].rel), "entries out of path order");
    for (i, m) in mounts.iter().enumerate().skip(1) {
        scan.roots[i] = check_mount_point(&scan, m)?;
    }
    for u in scan.usage.iter_mut() {
        // lost+found (4 blocks), the root directory, and the first 11 reserved inodes.
        u.blocks += 5;
        u.inodes += 12;
    }
    Ok(scan)
}

/// A visible child of a directory being walked.
struct Child {
    name: OsString,
    layer: usize,
    meta: Metadata,
    /// For a directory: the layers whose directories merge into it, top first.
    below: Vec<usize>,
}

/// Walks directory `rel`, whose content is merged from `contributors` (layer indexes, top
/// first, each holding `rel` as a real directory).
fn walk(
    rel: &Path,
    contributors: &[usize],
    mounts: &[PathBuf],
    scan: &mut Scan,
    seen_links: &mut HashMap<(usize, usize, u64, u64), ()>,
) -> Result<()> {
    let overlay = scan.source.overlay;
    // Every name any contributing layer lists, sorted (so that staging, and with it
    // hard-link choice and errors, is the same every run), with the layers listing it.
    let mut names: BTreeMap<OsString, Vec<usize>> = BTreeMap::new();
    for &l in contributors {
        let dir = scan.source.layers[l].join(rel);
        for r in fs::read_dir(&dir).map_err(|e| ImageError::io("listing", &dir, e))? {
            let name = r.map_err(|e| ImageError::io("listing", &dir, e))?.file_name();
            names.entry(name).or_default().push(l);
        }
    }
    let mut children = Vec::with_capacity(names.len());
    for (name, layers) in names {
        // The topmost layer holding the name decides what it is.
        let layer = layers[0];
        let path = scan.source.layers[layer].join(rel).join(&name);
        let meta = fs::symlink_metadata(&path).map_err(|e| ImageError::io("reading", &path, e))?;
        if overlay && is_whiteout(&meta) {
            continue;
        }
        let mut below = Vec::new();
        if meta.is_dir() {
            below.push(layer);
            let mut opaque = overlay && overlay_attrs(&path, true)?.opaque;
            // Lower directories of the same name merge in, down to the first layer where
            // the name is a whiteout or not a directory, or through an opaque one.
            for &l in &layers[1..] {
                if opaque {
                    break;
                }
                let p = scan.source.layers[l].join(rel).join(&name);
                let m = fs::symlink_metadata(&p).map_err(|e| ImageError::io("reading", &p, e))?;
                if !m.is_dir() {
                    break;
                }
                below.push(l);
                opaque = overlay_attrs(&p, true)?.opaque;
            }
        } else if overlay {
            overlay_attrs(&path, false)?;
        }
        children.push(Child { name, layer, meta, below });
    }
    // This directory's own block count, charged to the partition holding the directory's
    // content (which for a mount point is the partition mounted there).
    let here = owner_of_content(rel, mounts);
    // Directory entries take about 8 bytes plus the name rounded to 4, "." and ".." 24 bytes;
    // blocks are assumed three quarters full.
    let bytes: u64 = 24 + children.iter().map(|c| 8 + (c.name.len() as u64).div_ceil(4) * 4).sum::<u64>();
    scan.usage[here].blocks += bytes.div_ceil(BLOCK * 3 / 4).max(1);
    for Child { name, layer, meta, below } in children {
        let child_rel = rel.join(&name);
        let path = scan.source.layers[layer].join(&child_rel);
        let mut kind = Kind::of(&meta);
        let part = here;
        scan.max_mtime = scan.max_mtime.max(meta.mtime());
        let u = &mut scan.usage[part];
        let key = (part, layer, meta.dev(), meta.ino());
        let first_link = meta.nlink() <= 1 || kind == Kind::Dir || seen_links.insert(key, ()).is_none();
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
        scan.entries.push(Entry { rel: child_rel.clone(), kind, meta, part, layer });
        if is_dir {
            walk(&child_rel, &below, mounts, scan, seen_links)?;
        }
    }
    Ok(())
}

/// An overlayfs whiteout: a character device with device number 0:0.
fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// What overlayfs attributes say about one entry of a layer.
struct OverlayAttrs {
    /// `trusted.overlay.opaque=y`: the directory hides everything below it.
    opaque: bool,
}

/// Reads the `trusted.overlay.*` attributes of `path` in a layer, refusing the features kiln
/// does not mount with (so their layers cannot be merged without them).
fn overlay_attrs(path: &Path, is_dir: bool) -> Result<OverlayAttrs> {
    let c = cpath(path)?;
    let mut attrs = OverlayAttrs { opaque: false };
    for name in list_xattrs(&c, path)? {
        let Some(what) = name.to_bytes().strip_prefix(OVERLAY_XATTR_PREFIX) else { continue };
        let refuse = |reason: &str| {
            Err(ImageError::OverlayUnsupported { path: path.to_owned(), reason: reason.to_owned() })
        };
        match what {
            b"redirect" => {
                return refuse(
                    "it is a renamed directory (trusted.overlay.redirect), made by an overlay mounted with redirect_dir=on",
                );
            }
            b"metacopy" => {
                return refuse(
                    "its data is in a lower layer (trusted.overlay.metacopy), made by an overlay mounted with metacopy=on",
                );
            }
            b"whiteout" | b"whiteouts" => {
                return refuse(
                    "it uses xattr whiteouts (trusted.overlay.whiteout), which kiln does not merge",
                );
            }
            b"opaque" if is_dir => match get_xattr(&c, &name, path)?.as_slice() {
                b"y" => attrs.opaque = true,
                b"x" => {
                    return refuse(
                        "it holds xattr whiteouts (trusted.overlay.opaque=x), which kiln does not merge",
                    );
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(attrs)
}

/// Extended attributes of this prefix are overlayfs's own; they never leave a layer stack.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

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

/// Checks that each existing component of mount point `m` is a real directory in the merged
/// tree. Returns the mount directory's metadata, or `None` if (part of) it does not exist yet.
fn check_mount_point(scan: &Scan, m: &Path) -> Result<Option<DirMeta>> {
    let mut p = PathBuf::new();
    let mut meta = None;
    for c in m.components() {
        p.push(c);
        match scan.find(&p) {
            None => return Ok(None),
            Some(e) if e.kind == Kind::Dir => meta = Some(dir_meta(&e.meta)),
            Some(e) => {
                let found = if matches!(e.kind, Kind::Symlink(_)) { "symlink" } else { "non-directory" };
                return Err(ImageError::MountPointNotDirectory {
                    mount_point: format!("/{}", m.display()),
                    path: scan.source_of(e),
                    found,
                });
            }
        }
    }
    Ok(meta)
}

impl Scan {
    /// The entry at `rel` (relative to the root), if the merged tree has one.
    pub(crate) fn find(&self, rel: &Path) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.rel.as_path().cmp(rel)).ok().map(|i| &self.entries[i])
    }

    /// The host path an entry is read from (in the layer that provides it).
    pub(crate) fn source_of(&self, e: &Entry) -> PathBuf {
        self.source.layers[e.layer].join(&e.rel)
    }

    /// The host path of `rel` as seen in the merged tree (the topmost layer for the root or
    /// for a path the tree does not have, for messages).
    pub(crate) fn host_path(&self, rel: &Path) -> PathBuf {
        match self.find(rel) {
            Some(e) => self.source_of(e),
            None => self.source.top().join(rel),
        }
    }

    /// The names in directory `rel` of the merged tree.
    pub(crate) fn list(&self, rel: &Path) -> Vec<&OsStr> {
        self.entries
            .iter()
            .filter(|e| e.rel.parent() == Some(rel))
            .filter_map(|e| e.rel.file_name())
            .collect()
    }

    /// Resolves `path` (absolute, as the image sees it) in the merged tree, following
    /// symlinks the way the image would: absolute targets start again at the root, `..` stops
    /// at the root. Returns the path (relative to the root) of the final non-symlink, or
    /// `None` if something along the way does not exist or is not a directory.
    pub(crate) fn resolve_rel(&self, path: &str) -> Result<Option<PathBuf>> {
        let mut todo: Vec<OsString> = Path::new(path).components().rev().filter_map(component_name).collect();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let candidate = cur.join(&c);
            match self.find(&candidate).map(|e| &e.kind) {
                Some(Kind::Symlink(target)) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(ImageError::io(
                            "resolving inside the image",
                            self.host_path(&candidate),
                            io::Error::from_raw_os_error(libc::ELOOP),
                        ));
                    }
                    if target.is_absolute() {
                        cur.clear();
                    }
                    todo.extend(target.components().rev().filter_map(component_name));
                }
                // Walking on below a non-directory finds nothing, as ENOTDIR would.
                Some(_) => cur = candidate,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// [`Scan::resolve_rel`], as the host path of the layer file it ends at.
    pub(crate) fn resolve(&self, path: &str) -> Result<Option<PathBuf>> {
        Ok(self.resolve_rel(path)?.map(|rel| self.host_path(&rel)))
    }
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

/// Copies every entry of the merged tree into `view` (a fresh, empty directory), with owners,
/// modes, extended attributes (but never overlayfs's own in a layer stack) and hard links
/// kept, and times clamped to `epoch`. Hard links are kept within a partition's share (a
/// link cannot cross file systems) and within a layer (the same inode number in two layers
/// is two files). Mount directories the tree lacks are made, so that [`split`] finds them.
pub(crate) fn stage(scan: &Scan, mounts: &[PathBuf], view: &Path, epoch: i64) -> Result<()> {
    let strip = scan.source.overlay;
    let mut links: HashMap<(usize, usize, u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, &Metadata)> = Vec::new();
    for e in &scan.entries {
        let dest = view.join(&e.rel);
        let src = scan.source_of(e);
        let m = &e.meta;
        if e.kind != Kind::Dir && m.nlink() > 1 {
            let key = (e.part, e.layer, m.dev(), m.ino());
            if let Some(first) = links.get(&key) {
                fs::hard_link(first, &dest)
                    .map_err(|err| ImageError::io("hard-linking in staging", &dest, err))?;
                continue;
            }
            links.insert(key, dest.clone());
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
        apply_meta(&src, &dest, m.uid(), m.gid(), m.mode(), is_link, strip)?;
        if e.kind == Kind::Dir {
            dirs.push((dest, m));
        } else {
            set_times(&dest, m, epoch)?;
        }
    }
    // Mount directories missing from the tree.
    for m in mounts.iter().skip(1) {
        create_dirs_under(view, m, epoch)?;
    }
    // Directory times last: creating their children changed them.
    for (dest, m) in dirs.iter().rev() {
        set_times(dest, m, epoch)?;
    }
    // The view's root as the tree's root (mke2fs and the inode pass set the file system's).
    let root = scan.roots[0].unwrap_or_default();
    std::os::unix::fs::lchown(view, Some(root.uid), Some(root.gid))
        .map_err(|err| ImageError::io("setting the owner of", view, err))?;
    fs::set_permissions(view, fs::Permissions::from_mode(root.mode))
        .map_err(|err| ImageError::io("setting the mode of", view, err))?;
    let t = (root.mtime.min(epoch), 0);
    set_times_raw(view, t, t)
}

/// Owner, then mode (chown clears set-id bits), then extended attributes (chown drops
/// security.capability) from `src` onto the staged `dest`.
fn apply_meta(
    src: &Path,
    dest: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    is_link: bool,
    strip: bool,
) -> Result<()> {
    std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
        .map_err(|err| ImageError::io("setting the owner of", dest, err))?;
    if !is_link {
        fs::set_permissions(dest, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|err| ImageError::io("setting the mode of", dest, err))?;
    }
    copy_xattrs(src, dest, is_link, strip)
}

/// Splits the staged `view` by mount point: each mount point's directory (deepest first) is
/// renamed to `work/p{index}` and an empty directory with the same owner, mode, extended
/// attributes and times is left in its place, the parent's times kept. Returns the staging
/// directory of each mount (index 0: `view` itself, now holding only the root's share).
pub(crate) fn split(view: &Path, work: &Path, mounts: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut order: Vec<usize> = (1..mounts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(mounts[i].components().count()));
    let mut out = vec![PathBuf::new(); mounts.len()];
    out[0] = view.to_owned();
    for i in order {
        let at = view.join(&mounts[i]);
        let to = work.join(format!("p{i}"));
        let parent = at.parent().expect("a mount point below the root");
        let lstat =
            |p: &Path| fs::symlink_metadata(p).map_err(|e| ImageError::io("reading in staging", p, e));
        let meta = lstat(&at)?;
        let parent_meta = lstat(parent)?;
        if !meta.is_dir() || !parent_meta.is_dir() {
            return Err(ImageError::MountPointNotDirectory {
                mount_point: format!("/{}", mounts[i].display()),
                path: at,
                found: "non-directory",
            });
        }
        fs::rename(&at, &to).map_err(|e| ImageError::io("moving out of the staging view", &at, e))?;
        fs::create_dir(&at).map_err(|e| ImageError::io("creating in staging", &at, e))?;
        apply_meta(&to, &at, meta.uid(), meta.gid(), meta.mode(), false, false)?;
        let times = |m: &Metadata| ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        let (a, m) = times(&meta);
        set_times_raw(&at, a, m)?;
        let (a, m) = times(&parent_meta);
        set_times_raw(parent, a, m)?;
        out[i] = to;
    }
    Ok(out)
}

fn create_dirs_under(base: &Path, rel: &Path, epoch: i64) -> Result<()> {
    let mut p = base.to_path_buf();
    let mut made = Vec::new();
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
                made.push(p.clone());
            }
        }
    }
    // Deepest first: making a child changes its parent's times.
    for p in made.iter().rev() {
        set_times_raw(p, (epoch, 0), (epoch, 0))?;
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

/// The names of the extended attributes of `path` (none where the file system has none).
fn list_xattrs(c: &CStr, path: &Path) -> Result<Vec<CString>> {
    // SAFETY: a null buffer of size 0 asks only for the needed length.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        let e = io::Error::last_os_error();
        // A source file system without xattrs simply has none.
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(Vec::new());
        }
        return Err(ImageError::io("listing extended attributes of", path, e));
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: `names` is writable for `names.len()` bytes.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(ImageError::io("listing extended attributes of", path, io::Error::last_os_error()));
    }
    names.truncate(len as usize);
    Ok(names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| CString::new(n).expect("split on NUL"))
        .collect())
}

fn get_xattr(c: &CStr, name: &CStr, path: &Path) -> Result<Vec<u8>> {
    let err = || ImageError::io("reading extended attributes of", path, io::Error::last_os_error());
    // SAFETY: size query with a null buffer, as above.
    let vlen = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if vlen < 0 {
        return Err(err());
    }
    let mut value = vec![0u8; vlen as usize];
    // SAFETY: `value` is writable for `value.len()` bytes.
    let vlen = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if vlen < 0 {
        return Err(err());
    }
    value.truncate(vlen as usize);
    Ok(value)
}

/// Copies the extended attributes of `src` onto `dest`; with `strip_overlay`, overlayfs's own
/// (`trusted.overlay.*`) are left out.
fn copy_xattrs(src: &Path, dest: &Path, is_link: bool, strip_overlay: bool) -> Result<()> {
    let s = cpath(src)?;
    let d = cpath(dest)?;
    for name in list_xattrs(&s, src)? {
        if strip_overlay && name.to_bytes().starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let value = get_xattr(&s, &name, src)?;
        // SAFETY: all pointers point to live buffers of the lengths given.
        let r = unsafe { libc::lsetxattr(d.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
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

fn component_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    }
}

/// Opens a regular file inside the tree that [`Scan::resolve`] returned, refusing anything
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

    fn only_root() -> Vec<PathBuf> {
        vec![PathBuf::new()]
    }

    fn set_xattr(p: &Path, name: &str, value: &[u8]) {
        let c = cpath(p).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: live NUL-terminated strings and a buffer of the length given.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        assert_eq!(r, 0, "setting {name} on {}: {}", p.display(), io::Error::last_os_error());
    }

    fn whiteout(p: &Path) {
        mknod(p, libc::S_IFCHR | 0o600, 0).unwrap();
    }

    fn names(scan: &Scan) -> Vec<String> {
        scan.entries.iter().map(|e| format!("{}@{}", e.rel.display(), e.layer)).collect()
    }

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
        symlink("boot/vmlinuz-1/x", root.join("through-a-file")).unwrap();
        let s = scan(&Source::dir(root), &only_root()).unwrap();
        assert_eq!(s.resolve("/vmlinuz").unwrap(), Some(root.join("boot/vmlinuz-1")));
        assert_eq!(s.resolve("/abs").unwrap(), Some(root.join("boot/vmlinuz-1")));
        // /etc/passwd of the host is never reached: the tree has no etc.
        assert_eq!(s.resolve("/escape").unwrap(), None);
        assert_eq!(s.resolve("/through-a-file").unwrap(), None);
        assert!(s.resolve("/loop").is_err());
        assert_eq!(s.resolve("/").unwrap(), Some(root.to_path_buf()));
    }

    #[test]
    fn mount_point_through_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        symlink("/etc", t.path().join("var")).unwrap();
        let mounts = vec![PathBuf::new(), rel_mount("/var/log")];
        let e = scan(&Source::dir(t.path()), &mounts).unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
    }

    /// Overlay semantics, layer by layer (needs root for trusted.* attributes and mknod).
    #[test]
    fn layers_merge_as_overlayfs_does() {
        let t = tempfile::tempdir().unwrap();
        let l: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("l{i}"))).collect();
        for d in &l {
            fs::create_dir(d).unwrap();
        }
        // Base.
        for d in ["etc", "opaque/sub", "merged", "becomes-file/x", "gone-dir/y"] {
            fs::create_dir_all(l[0].join(d)).unwrap();
        }
        for f in [
            "etc/a",
            "etc/b",
            "opaque/old",
            "opaque/sub/deep",
            "merged/low",
            "becomes-file/x/f",
            "file-becomes-dir",
        ] {
            fs::write(l[0].join(f), f).unwrap();
        }
        // Layer 1: replaces etc/a, deletes etc/b and gone-dir, makes opaque/ opaque with one
        // new file, adds to merged/, replaces a directory by a file and a file by a directory.
        for d in ["etc", "opaque", "merged", "file-becomes-dir"] {
            fs::create_dir_all(l[1].join(d)).unwrap();
        }
        fs::write(l[1].join("etc/a"), "new a").unwrap();
        whiteout(&l[1].join("etc/b"));
        whiteout(&l[1].join("gone-dir"));
        set_xattr(&l[1].join("opaque"), "trusted.overlay.opaque", b"y");
        fs::write(l[1].join("opaque/new"), "n").unwrap();
        fs::write(l[1].join("merged/mid"), "m").unwrap();
        set_xattr(&l[1].join("merged"), "trusted.overlay.impure", b"y");
        fs::write(l[1].join("becomes-file"), "now a file").unwrap();
        fs::write(l[1].join("file-becomes-dir/inside"), "i").unwrap();
        // Layer 2: a directory again over layer 1's file (layer 0's content stays hidden),
        // a symlink out of the tree, a whiteout of something no layer has.
        fs::create_dir_all(l[2].join("becomes-file")).unwrap();
        fs::create_dir_all(l[2].join("merged")).unwrap();
        fs::write(l[2].join("merged/top"), "t").unwrap();
        symlink("/etc/shadow", l[2].join("etc-evil")).unwrap();
        whiteout(&l[2].join("never-was"));

        let s = scan(&Source::layers(&l), &only_root()).unwrap();
        assert_eq!(
            names(&s),
            [
                "becomes-file@2",
                "etc@1",
                "etc/a@1",
                "etc-evil@2",
                "file-becomes-dir@1",
                "file-becomes-dir/inside@1",
                "merged@2",
                "merged/low@0",
                "merged/mid@1",
                "merged/top@2",
                "opaque@1",
                "opaque/new@1",
            ]
        );
        assert_eq!(s.resolve("/etc/a").unwrap(), Some(l[1].join("etc/a")));
        assert_eq!(s.resolve("/etc/b").unwrap(), None);

        // Staged: no whiteouts, no overlay attributes, the symlink a symlink.
        let view = t.path().join("view");
        fs::create_dir(&view).unwrap();
        stage(&s, &only_root(), &view, 1_700_000_000).unwrap();
        assert_eq!(fs::read_to_string(view.join("etc/a")).unwrap(), "new a");
        assert!(!view.join("never-was").exists() && !view.join("etc/b").exists());
        assert_eq!(fs::read_link(view.join("etc-evil")).unwrap(), Path::new("/etc/shadow"));
        for d in ["opaque", "merged"] {
            assert!(list_xattrs(&cpath(&view.join(d)).unwrap(), &view).unwrap().is_empty(), "{d}");
        }
        // A plain directory is content: its whiteouts and attributes are kept.
        let plain = scan(&Source::dir(&l[1]), &only_root()).unwrap();
        assert!(plain.find(Path::new("etc/b")).is_some_and(|e| e.kind == Kind::CharDev));
    }

    #[test]
    fn redirects_and_metacopy_are_refused() {
        for (attr, is_dir) in [("trusted.overlay.redirect", true), ("trusted.overlay.metacopy", false)] {
            let t = tempfile::tempdir().unwrap();
            let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
            fs::create_dir_all(l0.join("x")).unwrap();
            fs::create_dir(&l1).unwrap();
            let p = l1.join("y");
            if is_dir {
                fs::create_dir(&p).unwrap();
            } else {
                fs::write(&p, b"").unwrap();
            }
            set_xattr(&p, attr, b"/x");
            let e = scan(&Source::layers(&[l0, l1]), &only_root()).unwrap_err();
            assert!(matches!(e, ImageError::OverlayUnsupported { .. }), "{e}");
            assert!(e.to_string().contains(attr), "{e}");
        }
    }
}
