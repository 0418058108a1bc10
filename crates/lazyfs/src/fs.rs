//! The FUSE side: a loopback filesystem over a backing directory whose file
//! data reaches the backing directory only on fsync (see the crate docs).
//!
//! One lock guards all state; FUSE requests are served one at a time on the
//! session's thread, and the control API (power off, counters) takes the same
//! lock from the test's thread.

use crate::Mode;
use crate::dirty::DirtyFile;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::fs::{PermissionsExt as _, fchown};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where strict mode keeps unlinked files until their directory is fsynced
/// (in the backing root; hidden from the mount).
pub(crate) const TRASH: &str = ".switchyard-lazyfs-trash";

/// Attributes and entries are never cached by the kernel: after a power off
/// (or an undone create) the next access asks us again.
const TTL: Duration = Duration::ZERO;

const ROOT: u64 = 1;

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

#[derive(Debug)]
struct Node {
    /// Path relative to the backing root ("" for the root). Meaningless once
    /// `gone` (unlinked, only reachable through open handles).
    rel: PathBuf,
    kind: FileType,
    backing_ino: u64,
    /// Open handles on this node.
    open: u32,
    /// Some open handle's backing file (for operations without a handle).
    fd: Option<Arc<File>>,
    dirty: Option<DirtyFile>,
    gone: bool,
}

#[derive(Debug)]
struct OpenFile {
    ino: u64,
    file: Arc<File>,
    /// Opened with O_SYNC or O_DSYNC: every write is durable at once.
    sync: bool,
}

/// A namespace change that strict mode undoes at power off unless every
/// directory in `pending` was fsynced after it.
#[derive(Debug)]
struct Undo {
    op: UndoOp,
    pending: HashSet<u64>,
}

#[derive(Debug)]
enum UndoOp {
    /// A file or directory that did not exist: remove it.
    Created { ino: u64 },
    /// An unlinked file or removed (empty) directory, kept in the trash:
    /// put it back.
    Removed {
        ino: u64,
        parent: u64,
        name: OsString,
    },
    /// A rename: move it back, and put back what it replaced.
    Renamed {
        ino: u64,
        from_parent: u64,
        from_name: OsString,
        to_parent: u64,
        to_name: OsString,
        replaced: Option<u64>,
    },
}

/// What a power off dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerOffReport {
    /// Unsynced bytes dropped (written, or cut/extended by a truncate).
    pub bytes: u64,
    /// Each file that lost unsynced data: path relative to the mount, bytes.
    pub files: Vec<(PathBuf, u64)>,
    /// Strict mode: the namespace changes undone, newest first.
    pub undone: Vec<String>,
    /// Undo steps that failed (best effort; should stay empty).
    pub errors: Vec<String>,
}

impl std::fmt::Display for PowerOffReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "power off dropped {} unsynced bytes in {} files",
            self.bytes,
            self.files.len()
        )?;
        if !self.undone.is_empty() {
            write!(f, ", undid {} namespace changes", self.undone.len())?;
        }
        if !self.errors.is_empty() {
            write!(f, ", {} undo errors: {:?}", self.errors.len(), self.errors)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct State {
    root: PathBuf,
    mode: Mode,
    next_ino: u64,
    next_fh: u64,
    next_trash: u64,
    nodes: HashMap<u64, Node>,
    by_backing: HashMap<u64, u64>,
    files: HashMap<u64, OpenFile>,
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    undo: Vec<Undo>,
    ops: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(root: PathBuf, mode: Mode) -> io::Result<Arc<Shared>> {
        let md = fs::metadata(&root)?;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                rel: PathBuf::new(),
                kind: FileType::Directory,
                backing_ino: md.ino(),
                open: 0,
                fd: None,
                dirty: None,
                gone: false,
            },
        );
        let mut by_backing = HashMap::new();
        by_backing.insert(md.ino(), ROOT);
        if mode == Mode::Strict {
            fs::create_dir_all(root.join(TRASH))?;
        }
        Ok(Arc::new(Shared {
            state: Mutex::new(State {
                root,
                mode,
                next_ino: ROOT + 1,
                next_fh: 1,
                next_trash: 0,
                nodes,
                by_backing,
                files: HashMap::new(),
                dirs: HashMap::new(),
                undo: Vec::new(),
                ops: BTreeMap::new(),
            }),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH
            .checked_add(Duration::new(secs.unsigned_abs(), nanos))
            .unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::new(secs.unsigned_abs(), 0))
            .and_then(|t| t.checked_add(Duration::new(0, nanos)))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn kind_of(md: &Metadata) -> FileType {
    FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile)
}

fn attr_of(ino: u64, md: &Metadata, size: Option<u64>) -> FileAttr {
    let size = size.unwrap_or(md.size());
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(md),
        perm: (md.mode() & 0o7777) as u16,
        nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        uid: md.uid(),
        gid: md.gid(),
        rdev: u32::try_from(md.rdev()).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

fn is_trash(parent: u64, name: &OsStr) -> bool {
    parent == ROOT && name.as_bytes() == TRASH.as_bytes()
}

fn valid_name(name: &OsStr) -> Result<(), Errno> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Opens a backing file for our own I/O: read-write when allowed, else as
/// asked.
fn open_backing(path: &Path, flags: i32) -> io::Result<File> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok(f),
        Err(e)
            if e.raw_os_error() == Some(nix::errno::Errno::EACCES as i32)
                || e.raw_os_error() == Some(nix::errno::Errno::EROFS as i32) =>
        {
            let acc = flags & nix::fcntl::OFlag::O_ACCMODE.bits();
            OpenOptions::new()
                .read(acc != nix::fcntl::OFlag::O_WRONLY.bits())
                .write(acc != nix::fcntl::OFlag::O_RDONLY.bits())
                .open(path)
        }
        Err(e) => Err(e),
    }
}

fn is_sync(flags: i32) -> bool {
    // O_SYNC includes the O_DSYNC bit on Linux.
    flags & nix::fcntl::OFlag::O_DSYNC.bits() != 0
}

impl State {
    fn count(&mut self, op: &'static str) {
        *self.ops.entry(op).or_insert(0) += 1;
    }

    pub(crate) fn op_counts(&self) -> BTreeMap<String, u64> {
        self.ops
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }

    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| n.dirty.as_ref())
            .map(DirtyFile::unsynced_bytes)
            .sum()
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// The live path of a node (ENOENT once unlinked).
    fn path_of(&self, ino: u64) -> Result<PathBuf, Errno> {
        let n = self.node(ino)?;
        if n.gone {
            return Err(Errno::ENOENT);
        }
        Ok(self.abs(&n.rel))
    }

    fn child_rel(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        valid_name(name)?;
        let p = self.node(parent)?;
        if p.gone {
            return Err(Errno::ENOENT);
        }
        if p.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(p.rel.join(name))
    }

    /// The node for a backing entry (found or made).
    fn register(&mut self, rel: PathBuf, md: &Metadata) -> u64 {
        let kind = kind_of(md);
        if let Some(&ino) = self.by_backing.get(&md.ino())
            && let Some(n) = self.nodes.get_mut(&ino)
            && n.kind == kind
        {
            n.rel = rel;
            n.gone = false;
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                rel,
                kind,
                backing_ino: md.ino(),
                open: 0,
                fd: None,
                dirty: None,
                gone: false,
            },
        );
        self.by_backing.insert(md.ino(), ino);
        ino
    }

    /// Forgets a node whose backing file no longer exists (kept while open).
    fn drop_node(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        if self.by_backing.get(&n.backing_ino) == Some(&ino) {
            self.by_backing.remove(&n.backing_ino);
        }
        if n.open > 0 {
            n.gone = true;
        } else {
            self.nodes.remove(&ino);
        }
    }

    /// After `from` moved to `to`: every live node at or under `from` moves.
    fn move_subtree(&mut self, from: &Path, to: &Path) {
        for n in self.nodes.values_mut() {
            if n.gone {
                continue;
            }
            if let Ok(rest) = n.rel.strip_prefix(from) {
                n.rel = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// Nodes at or under `rel` whose backing entries were removed.
    fn drop_subtree(&mut self, rel: &Path) {
        let inos: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.gone && n.rel.starts_with(rel))
            .map(|(&i, _)| i)
            .collect();
        for i in inos {
            self.drop_node(i);
        }
    }

    fn backing_file(&self, ino: u64, fh: Option<u64>) -> Result<Arc<File>, Errno> {
        if let Some(fh) = fh
            && let Some(of) = self.files.get(&fh)
            && of.ino == ino
        {
            return Ok(of.file.clone());
        }
        let n = self.node(ino)?;
        if let Some(fd) = &n.fd {
            return Ok(fd.clone());
        }
        let path = self.path_of(ino)?;
        open_backing(&path, 2).map(Arc::new).map_err(errno)
    }

    fn getattr_ino(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Errno> {
        let n = self.node(ino)?;
        let md = if let Some(fh) = fh
            && let Some(of) = self.files.get(&fh)
        {
            of.file.metadata()
        } else if let Some(fd) = &n.fd {
            fd.metadata()
        } else {
            fs::symlink_metadata(self.path_of(ino)?)
        }
        .map_err(errno)?;
        Ok(attr_of(ino, &md, n.dirty.as_ref().map(DirtyFile::size)))
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        if is_trash(parent, name) {
            return Err(Errno::ENOENT);
        }
        let rel = self.child_rel(parent, name)?;
        let md = fs::symlink_metadata(self.abs(&rel)).map_err(errno)?;
        let ino = self.register(rel, &md);
        let size = self.node(ino)?.dirty.as_ref().map(DirtyFile::size);
        Ok(attr_of(ino, &md, size))
    }

    /// The node's unsynced view, made on first change.
    fn dirty_mut(&mut self, ino: u64, file: &File) -> Result<&mut DirtyFile, Errno> {
        let n = self.node_mut(ino)?;
        if n.kind != FileType::RegularFile {
            return Err(Errno::EISDIR);
        }
        if n.dirty.is_none() {
            let len = file.metadata().map_err(errno)?.len();
            n.dirty = Some(DirtyFile::new(len));
        }
        n.dirty.as_mut().ok_or(Errno::EIO)
    }

    /// fsync/fdatasync: the node's unsynced data reaches the backing file.
    fn sync_node(&mut self, ino: u64, file: &File) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        if let Some(mut d) = n.dirty.take()
            && let Err(e) = d.sync_to(file)
        {
            n.dirty = Some(d);
            return Err(errno(e));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let kind = self.node(ino)?.kind;
        let needs_file = size.is_some()
            || atime.is_some()
            || mtime.is_some()
            || mode.is_some()
            || uid.is_some()
            || gid.is_some();
        if !needs_file {
            return self.getattr_ino(ino, fh);
        }
        let file = if kind == FileType::Directory {
            Arc::new(File::open(self.path_of(ino)?).map_err(errno)?)
        } else {
            self.backing_file(ino, fh)?
        };
        if let Some(mode) = mode {
            file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                .map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            fchown(&*file, uid, gid).map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            let now = SystemTime::now();
            let pick = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => now,
            };
            let mut times = FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(pick(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(pick(t));
            }
            file.set_times(times).map_err(errno)?;
        }
        if let Some(size) = size {
            if kind != FileType::RegularFile {
                return Err(Errno::EISDIR);
            }
            self.dirty_mut(ino, &file)?.set_size(size);
        }
        let md = file.metadata().map_err(errno)?;
        let dsize = self.node(ino)?.dirty.as_ref().map(DirtyFile::size);
        Ok(attr_of(ino, &md, dsize))
    }

    fn add_open(&mut self, ino: u64, file: File, flags: i32) -> Result<u64, Errno> {
        let file = Arc::new(file);
        let n = self.node_mut(ino)?;
        n.open += 1;
        n.fd = Some(file.clone());
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(
            fh,
            OpenFile {
                ino,
                file,
                sync: is_sync(flags),
            },
        );
        Ok(fh)
    }

    fn open(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let n = self.node(ino)?;
        if n.kind == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        let file = if let Some(fd) = &n.fd {
            // Same backing file; share it (also serves unlinked-but-open files).
            fd.try_clone().map_err(errno)?
        } else {
            open_backing(&self.path_of(ino)?, flags).map_err(errno)?
        };
        let fh = self.add_open(ino, file, flags)?;
        if flags & nix::fcntl::OFlag::O_TRUNC.bits() != 0 {
            let f = self.backing_file(ino, Some(fh))?;
            self.dirty_mut(ino, &f)?.set_size(0);
        }
        Ok(fh)
    }

    fn strict(&self) -> bool {
        self.mode == Mode::Strict
    }

    fn record(&mut self, op: UndoOp, dirs: &[u64]) {
        if self.strict() {
            self.undo.push(Undo {
                op,
                pending: dirs.iter().copied().collect(),
            });
        }
    }

    fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        if is_trash(parent, name) {
            return Err(Errno::EACCES);
        }
        let rel = self.child_rel(parent, name)?;
        let path = self.abs(&rel);
        let existed = fs::symlink_metadata(&path).is_ok();
        let excl = flags & nix::fcntl::OFlag::O_EXCL.bits() != 0;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!excl)
            .create_new(excl)
            .mode(mode & !umask & 0o7777)
            .open(&path)
            .map_err(errno)?;
        let md = file.metadata().map_err(errno)?;
        let ino = self.register(rel, &md);
        if !existed {
            self.record(UndoOp::Created { ino }, &[parent]);
        }
        let fh = self.add_open(ino, file, flags)?;
        if existed && flags & nix::fcntl::OFlag::O_TRUNC.bits() != 0 {
            let f = self.backing_file(ino, Some(fh))?;
            self.dirty_mut(ino, &f)?.set_size(0);
        }
        let attr = self.getattr_ino(ino, Some(fh))?;
        Ok((attr, fh))
    }

    fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        if is_trash(parent, name) {
            return Err(Errno::EEXIST);
        }
        let rel = self.child_rel(parent, name)?;
        let path = self.abs(&rel);
        fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&path)
            .map_err(errno)?;
        let md = fs::symlink_metadata(&path).map_err(errno)?;
        let ino = self.register(rel, &md);
        self.record(UndoOp::Created { ino }, &[parent]);
        Ok(attr_of(ino, &md, None))
    }

    /// Strict mode: moves a backing entry into the trash (so it can come
    /// back); returns its node.
    fn move_to_trash(&mut self, path: &Path) -> Result<u64, Errno> {
        let md = fs::symlink_metadata(path).map_err(errno)?;
        let trel = Path::new(TRASH).join(format!("{}", self.next_trash));
        self.next_trash += 1;
        fs::rename(path, self.abs(&trel)).map_err(errno)?;
        let ino = self.register(trel, &md);
        self.node_mut(ino)?.gone = true;
        Ok(ino)
    }

    fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        if is_trash(parent, name) {
            return Err(Errno::EACCES);
        }
        let rel = self.child_rel(parent, name)?;
        let path = self.abs(&rel);
        let md = fs::symlink_metadata(&path).map_err(errno)?;
        if md.is_dir() {
            return Err(Errno::EISDIR);
        }
        if self.strict() {
            let ino = self.move_to_trash(&path)?;
            self.record(
                UndoOp::Removed {
                    ino,
                    parent,
                    name: name.to_owned(),
                },
                &[parent],
            );
        } else {
            fs::remove_file(&path).map_err(errno)?;
            if let Some(&ino) = self.by_backing.get(&md.ino()) {
                if let Some(n) = self.nodes.get_mut(&ino) {
                    // Its data is gone with it.
                    n.dirty = None;
                }
                self.drop_node(ino);
            }
        }
        Ok(())
    }

    fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        if is_trash(parent, name) {
            return Err(Errno::EACCES);
        }
        let rel = self.child_rel(parent, name)?;
        let path = self.abs(&rel);
        let md = fs::symlink_metadata(&path).map_err(errno)?;
        if !md.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if self.strict() {
            // Into the trash, keeping its identity for the undo records
            // that name it.
            if fs::read_dir(&path).map_err(errno)?.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
            let ino = self.move_to_trash(&path)?;
            self.record(
                UndoOp::Removed {
                    ino,
                    parent,
                    name: name.to_owned(),
                },
                &[parent],
            );
            return Ok(());
        }
        fs::remove_dir(&path).map_err(errno)?;
        if let Some(&ino) = self.by_backing.get(&md.ino()) {
            self.drop_node(ino);
        }
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if is_trash(parent, name) || is_trash(newparent, newname) {
            return Err(Errno::EACCES);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let from = self.child_rel(parent, name)?;
        let to = self.child_rel(newparent, newname)?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&from) {
            return Err(Errno::EINVAL);
        }
        let (from_abs, to_abs) = (self.abs(&from), self.abs(&to));
        let md = fs::symlink_metadata(&from_abs).map_err(errno)?;
        let target = fs::symlink_metadata(&to_abs).ok();
        if let Some(t) = &target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if md.is_dir() && !t.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            if !md.is_dir() && t.is_dir() {
                return Err(Errno::EISDIR);
            }
            if t.is_dir() && fs::read_dir(&to_abs).map_err(errno)?.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let ino = self.register(from.clone(), &md);
        let mut replaced = None;
        if let Some(t) = &target {
            if self.strict() {
                replaced = Some(self.move_to_trash(&to_abs)?);
            } else if let Some(&old) = self.by_backing.get(&t.ino()) {
                if let Some(n) = self.nodes.get_mut(&old) {
                    n.dirty = None;
                }
                self.drop_node(old);
            }
        }
        if let Err(e) = fs::rename(&from_abs, &to_abs) {
            if let Some(r) = replaced {
                // Put the target back where it was.
                if let Ok(n) = self.node(r) {
                    let trel = n.rel.clone();
                    if fs::rename(self.abs(&trel), &to_abs).is_ok() {
                        self.undo_restored(r, to.clone());
                    }
                }
            }
            return Err(errno(e));
        }
        self.move_subtree(&from, &to);
        if let Ok(n) = self.node_mut(ino) {
            n.rel = to;
            n.gone = false;
        }
        let dirs = if parent == newparent {
            vec![parent]
        } else {
            vec![parent, newparent]
        };
        self.record(
            UndoOp::Renamed {
                ino,
                from_parent: parent,
                from_name: name.to_owned(),
                to_parent: newparent,
                to_name: newname.to_owned(),
                replaced,
            },
            &dirs,
        );
        Ok(())
    }

    fn undo_restored(&mut self, ino: u64, rel: PathBuf) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.rel = rel;
            n.gone = false;
        }
    }

    /// Strict mode: a directory's entries are durable; forget their undo
    /// records (and empty the trash they kept).
    fn fsyncdir(&mut self, ino: u64) {
        for u in &mut self.undo {
            u.pending.remove(&ino);
        }
        // Directories whose removal just became durable: changes still
        // pending on them can never be made durable, nor need undoing.
        let mut deleted: HashSet<u64> = HashSet::new();
        loop {
            let (done, keep): (Vec<Undo>, Vec<Undo>) =
                std::mem::take(&mut self.undo).into_iter().partition(|u| {
                    u.pending.is_empty() || u.pending.iter().any(|d| deleted.contains(d))
                });
            self.undo = keep;
            if done.is_empty() {
                break;
            }
            for u in done {
                let trashed = match u.op {
                    UndoOp::Removed { ino, .. } => Some(ino),
                    UndoOp::Renamed {
                        replaced: Some(r), ..
                    } => Some(r),
                    _ => None,
                };
                if let Some(t) = trashed
                    && let Ok(n) = self.node(t)
                    && n.gone
                    && n.rel.starts_with(TRASH)
                {
                    let p = self.abs(&n.rel);
                    let is_dir = n.kind == FileType::Directory;
                    let removed = if is_dir {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    if removed.is_ok() {
                        if let Some(n) = self.nodes.get_mut(&t) {
                            n.dirty = None;
                        }
                        self.drop_node(t);
                        if is_dir {
                            deleted.insert(t);
                        }
                    }
                }
            }
        }
    }

    fn undo_one(&mut self, op: UndoOp) -> Result<String, String> {
        let rel_of = |s: &State, ino: u64| s.node(ino).map(|n| n.rel.clone());
        let fail = |what: &str, e: &dyn std::fmt::Debug| format!("{what}: {e:?}");
        match op {
            UndoOp::Created { ino } => {
                let n = self.node(ino).map_err(|e| fail("created: node", &e))?;
                if n.gone {
                    return Ok("created entry already removed".into());
                }
                let (rel, kind) = (n.rel.clone(), n.kind);
                let p = self.abs(&rel);
                let r = if kind == FileType::Directory {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(|e| fail(&format!("remove {}", rel.display()), &e))?;
                self.drop_subtree(&rel);
                Ok(format!("create of {} undone", rel.display()))
            }
            UndoOp::Removed { ino, parent, name } => {
                let trel = rel_of(self, ino).map_err(|e| fail("removed: node", &e))?;
                let prel = rel_of(self, parent).map_err(|e| fail("removed: parent", &e))?;
                let dest = prel.join(&name);
                fs::rename(self.abs(&trel), self.abs(&dest))
                    .map_err(|e| fail(&format!("restore {}", dest.display()), &e))?;
                self.undo_restored(ino, dest.clone());
                Ok(format!(
                    "removal (unlink/rmdir) of {} undone",
                    dest.display()
                ))
            }
            UndoOp::Renamed {
                ino,
                from_parent,
                from_name,
                to_parent,
                to_name,
                replaced,
            } => {
                let cur = rel_of(self, ino).map_err(|e| fail("rename: node", &e))?;
                let back = rel_of(self, from_parent)
                    .map_err(|e| fail("rename: parent", &e))?
                    .join(&from_name);
                fs::rename(self.abs(&cur), self.abs(&back))
                    .map_err(|e| fail(&format!("rename back to {}", back.display()), &e))?;
                self.move_subtree(&cur, &back);
                self.undo_restored(ino, back.clone());
                if let Some(r) = replaced {
                    let trel = rel_of(self, r).map_err(|e| fail("rename: replaced", &e))?;
                    let dest = rel_of(self, to_parent)
                        .map_err(|e| fail("rename: target parent", &e))?
                        .join(&to_name);
                    fs::rename(self.abs(&trel), self.abs(&dest))
                        .map_err(|e| fail(&format!("restore {}", dest.display()), &e))?;
                    self.undo_restored(r, dest);
                }
                Ok(format!(
                    "rename {} -> {} undone",
                    back.display(),
                    to_name.to_string_lossy()
                ))
            }
        }
    }

    /// Drops every unsynced byte (and, strict, every namespace change not
    /// made durable by fsyncdir). Returns the report and the inodes whose
    /// kernel caches should be invalidated.
    pub(crate) fn power_off(&mut self) -> (PowerOffReport, Vec<u64>) {
        let mut report = PowerOffReport::default();
        for n in self.nodes.values_mut() {
            if let Some(d) = n.dirty.take() {
                report.bytes += d.unsynced_bytes();
                report.files.push((n.rel.clone(), d.unsynced_bytes()));
            }
        }
        report.files.sort();
        let undo = std::mem::take(&mut self.undo);
        for u in undo.into_iter().rev() {
            match self.undo_one(u.op) {
                Ok(s) => report.undone.push(s),
                Err(e) => report.errors.push(e),
            }
        }
        let inos = self.nodes.keys().copied().collect();
        (report, inos)
    }

    fn readdir_snapshot(&mut self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>, Errno> {
        let n = self.node(ino)?;
        if n.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let rel = n.rel.clone();
        let path = self.path_of(ino)?;
        let mut out = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for entry in fs::read_dir(&path).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name();
            if is_trash(ino, &name) {
                continue;
            }
            let Ok(md) = entry.metadata() else { continue };
            let child = self.register(rel.join(&name), &md);
            out.push((child, kind_of(&md), name));
        }
        Ok(out)
    }
}

/// The `fuser::Filesystem`.
#[derive(Debug)]
pub(crate) struct LazyFilesystem {
    pub(crate) shared: Arc<Shared>,
}

macro_rules! unimplemented_op {
    ($self:ident, $name:literal, $reply:ident) => {{
        $self.shared.lock().count(concat!($name, " (ENOSYS)"));
        $reply.error(Errno::ENOSYS);
    }};
}

impl Filesystem for LazyFilesystem {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.shared.lock();
        s.count("lookup");
        match s.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut s = self.shared.lock();
        s.count("getattr");
        match s.getattr_ino(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.shared.lock();
        s.count(if size.is_some() {
            "setattr (truncate)"
        } else {
            "setattr"
        });
        match s.setattr(ino.0, mode, uid, gid, size, atime, mtime, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.shared.lock();
        s.count("mkdir");
        match s.mkdir(parent.0, name, mode, umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.shared.lock();
        s.count("unlink");
        match s.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.shared.lock();
        s.count("rmdir");
        match s.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.shared.lock();
        s.count("rename");
        match s.rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.shared.lock();
        s.count("open");
        match s.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.shared.lock();
        s.count("create");
        match s.create(parent.0, name, mode, umask, flags) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.shared.lock();
        s.count("read");
        let result = (|| {
            let file = s.backing_file(ino.0, Some(fh.0))?;
            match &s.node(ino.0)?.dirty {
                Some(d) => d.read(&file, offset, size).map_err(errno),
                None => {
                    let mut buf = vec![0u8; size as usize];
                    let mut done = 0;
                    while done < buf.len() {
                        match file.read_at(&mut buf[done..], offset + done as u64) {
                            Ok(0) => break,
                            Ok(n) => done += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(errno(e)),
                        }
                    }
                    buf.truncate(done);
                    Ok(buf)
                }
            }
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.shared.lock();
        let sync = is_sync(flags.0) || s.files.get(&fh.0).is_some_and(|f| f.sync);
        s.count(if sync { "write (O_SYNC)" } else { "write" });
        let result = (|| {
            let file = s.backing_file(ino.0, Some(fh.0))?;
            s.dirty_mut(ino.0, &file)?
                .write(&file, offset, data)
                .map_err(errno)?;
            if sync {
                s.sync_node(ino.0, &file)?;
            }
            u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not durability.
        self.shared.lock().count("flush");
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.shared.lock();
        s.count("release");
        if s.files.remove(&fh.0).is_some()
            && let Some(n) = s.nodes.get_mut(&ino.0)
        {
            n.open = n.open.saturating_sub(1);
            if n.open == 0 {
                n.fd = None;
                if n.gone && !n.rel.starts_with(TRASH) {
                    s.nodes.remove(&ino.0);
                }
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.shared.lock();
        s.count(if datasync { "fdatasync" } else { "fsync" });
        let result = s
            .backing_file(ino.0, Some(fh.0))
            .and_then(|file| s.sync_node(ino.0, &file));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.shared.lock();
        s.count("opendir");
        match s.readdir_snapshot(ino.0) {
            Ok(entries) => {
                let fh = s.next_fh;
                s.next_fh += 1;
                s.dirs.insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.shared.lock();
        s.count("readdir");
        let Some(entries) = s.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.shared.lock();
        s.count("releasedir");
        s.dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.shared.lock();
        s.count("fsyncdir");
        s.fsyncdir(ino.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let mut s = self.shared.lock();
        s.count("statfs");
        match nix::sys::statvfs::statvfs(&s.root) {
            Ok(v) => reply.statfs(
                v.blocks(),
                v.blocks_free(),
                v.blocks_available(),
                v.files(),
                v.files_free(),
                u32::try_from(v.block_size()).unwrap_or(4096),
                u32::try_from(v.name_max()).unwrap_or(255),
                u32::try_from(v.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let mut s = self.shared.lock();
        s.count("access");
        let result = s.path_of(ino.0).and_then(|p| {
            nix::unistd::access(
                &p,
                nix::unistd::AccessFlags::from_bits_truncate(mask.bits()),
            )
            .map_err(|e| Errno::from_i32(e as i32))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // Not needed by nats-server's file store; counted so a run shows if it
    // ever asks.
    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        unimplemented_op!(self, "readlink", reply)
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        unimplemented_op!(self, "mknod", reply)
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        unimplemented_op!(self, "symlink", reply)
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        unimplemented_op!(self, "link", reply)
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        unimplemented_op!(self, "getxattr", reply)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        unimplemented_op!(self, "listxattr", reply)
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        unimplemented_op!(self, "setxattr", reply)
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        unimplemented_op!(self, "removexattr", reply)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        unimplemented_op!(self, "fallocate", reply)
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        unimplemented_op!(self, "lseek", reply)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        unimplemented_op!(self, "copy_file_range", reply)
    }
}
