//! The FUSE request handlers: a passthrough to the backing directory, except that
//! file data written is held in memory until the file is fsynced.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io;
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::state::{DirEntry, Extent, Handle, Pending, ROOT_INO, State, backing_id};

type Res<T> = Result<T, Errno>;

pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `fuser::Filesystem` of one mount.
pub(crate) struct LazyFsImpl {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) ttl: Duration,
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: u64, meta: &fs::Metadata, pending: Option<&Pending>) -> FileAttr {
    let size = meta.len().max(pending.map_or(0, Pending::end));
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: meta.blocks().max(size.div_ceil(512)),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn child(name: &OsStr) -> Res<&OsStr> {
    // The kernel never sends these, but a name must stay inside its directory.
    if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(name)
}

impl State {
    fn live(&self) -> Res<()> {
        if self.dead { Err(Errno::EIO) } else { Ok(()) }
    }

    fn rel(&self, ino: u64) -> Res<PathBuf> {
        self.inodes.path(ino).cloned().ok_or(Errno::ENOENT)
    }

    fn child_rel(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        Ok(self.rel(parent)?.join(child(name)?))
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn handle(&self, fh: u64) -> Res<&Handle> {
        self.handles.get(&fh).ok_or(Errno::EBADF)
    }

    fn attr_of(&self, ino: u64, fh: Option<u64>) -> Res<FileAttr> {
        let meta = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some(h) => h.file.metadata()?,
            None => match self.inodes.path(ino) {
                Some(rel) => fs::symlink_metadata(self.full(rel))?,
                // An unlinked file still open elsewhere.
                None => match self.handles.values().find(|h| h.ino == ino) {
                    Some(h) => h.file.metadata()?,
                    None => return Err(Errno::ENOENT),
                },
            },
        };
        Ok(attr(ino, &meta, self.files.get(&ino)))
    }

    fn entry(&mut self, rel: &Path) -> Res<FileAttr> {
        let meta = fs::symlink_metadata(self.full(rel))?;
        let ino = self.inodes.ino_for(rel, backing_id(&meta));
        Ok(attr(ino, &meta, self.files.get(&ino)))
    }

    fn truncate(&mut self, ino: u64, fh: Option<u64>, size: u64) -> Res<()> {
        let file = if let Some(p) = self.files.get(&ino) {
            p.file.clone()
        } else if let Some(h) = fh.and_then(|fh| self.handles.get(&fh)) {
            h.file.clone()
        } else {
            let rel = self.rel(ino)?;
            Arc::new(OpenOptions::new().write(true).open(self.full(&rel))?)
        };
        file.set_len(size)?;
        self.trim(ino, size);
        Ok(())
    }

    fn sync(&mut self, ino: u64, fh: Option<u64>, datasync: bool) -> Res<()> {
        if self.fault == Some(crate::IoFault::Fsync) {
            // As a disk whose write-back failed: the unsynced pages are gone, the sync
            // reports it once, and they are not written again.
            if let Some(p) = self.files.remove(&ino) {
                self.pending_bytes -= p.bytes;
            }
            return Err(Errno::EIO);
        }
        let file = match self.files.get(&ino) {
            Some(p) => Some(p.file.clone()),
            None => fh
                .and_then(|fh| self.handles.get(&fh))
                .map(|h| h.file.clone()),
        };
        self.write_back(ino)?;
        if let Some(file) = file {
            if datasync {
                file.sync_data()?;
            } else {
                file.sync_all()?;
            }
        }
        Ok(())
    }

    fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8], sync: bool) -> Res<()> {
        if self.fault == Some(crate::IoFault::Write) {
            return Err(Errno::EIO);
        }
        let h = self.handle(fh)?;
        let file = h.file.clone();
        if sync || h.sync {
            // O_SYNC / O_DSYNC: durable when the write returns.
            self.write_back(ino)?;
            file.write_all_at(data, offset)?;
            file.sync_data()?;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let p = self.files.entry(ino).or_insert_with(|| Pending {
            file,
            writes: Vec::new(),
            bytes: 0,
            orphan: false,
        });
        p.writes.push(Extent {
            offset,
            data: data.to_vec(),
        });
        p.bytes += data.len() as u64;
        self.pending_bytes += data.len() as u64;
        if self.pending_bytes > self.pending_cap {
            tracing::debug!(
                pending = self.pending_bytes,
                cap = self.pending_cap,
                "lazyfs: pending cap reached, writing back (unsynced) to the backing files"
            );
            self.write_back_all()?;
        }
        Ok(())
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let file = &self.handle(fh)?.file;
        let pending = self.files.get(&ino);
        let len = file.metadata()?.len();
        let logical = len.max(pending.map_or(0, Pending::end));
        let end = offset.saturating_add(u64::from(size)).min(logical);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(p) = pending {
            p.overlay(offset, &mut buf);
        }
        Ok(buf)
    }

    fn open_handle(&mut self, ino: u64, file: File, flags: i32) -> u64 {
        let fh = self.fh();
        let sync = flags & libc::O_DSYNC != 0;
        self.handles.insert(
            fh,
            Handle {
                ino,
                file: Arc::new(file),
                sync,
            },
        );
        fh
    }

    fn release(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            let orphan = self.files.get(&h.ino).is_some_and(|p| p.orphan);
            if orphan && !self.handles.values().any(|o| o.ino == h.ino) {
                self.orphan(h.ino);
            }
        }
    }

    fn opendir(&mut self, ino: u64) -> Res<u64> {
        let rel = self.rel(ino)?;
        let dir = fs::metadata(self.full(&rel))?;
        let parent = match rel.parent() {
            Some(p) => {
                let meta = fs::symlink_metadata(self.full(p))?;
                self.inodes.ino_for(p, backing_id(&meta))
            }
            None => ROOT_INO,
        };
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for e in fs::read_dir(self.full(&rel))? {
            let e = e?;
            let kind = FileType::from_std(e.file_type()?).unwrap_or(FileType::RegularFile);
            let name = e.file_name();
            let id = (dir.dev(), e.ino());
            let ino = self.inodes.ino_for(&rel.join(&name), id);
            entries.push(DirEntry { ino, kind, name });
        }
        let fh = self.fh();
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    fn rename(&mut self, from: &Path, to: &Path, flags: RenameFlags) -> Res<()> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE)
            && fs::symlink_metadata(self.full(to)).is_ok()
        {
            return Err(Errno::EEXIST);
        }
        fs::rename(self.full(from), self.full(to))?;
        if let Some(replaced) = self.inodes.rename(from, to) {
            self.orphan(replaced);
        }
        Ok(())
    }
}

impl LazyFsImpl {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Res<T>) -> Res<T> {
        let mut s = lock(&self.state);
        s.live()?;
        let r = f(&mut s);
        if let Err(e) = &r {
            tracing::trace!(errno = e.code(), "lazyfs: request failed");
        }
        r
    }

    fn reply_entry(&self, reply: ReplyEntry, r: Res<FileAttr>) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn to_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for LazyFsImpl {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.with(|s| {
            let rel = s.child_rel(parent.0, name)?;
            s.entry(&rel)
        });
        self.reply_entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| s.attr_of(ino.0, fh.map(|f| f.0))) {
            Ok(a) => reply.attr(&self.ttl, &a),
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
        let fh = fh.map(|f| f.0);
        let r = self.with(|s| {
            let ino = ino.0;
            let path = s.inodes.path(ino).map(|rel| s.full(rel));
            if let Some(size) = size {
                s.truncate(ino, fh, size)?;
            }
            if let Some(path) = &path {
                if let Some(mode) = mode {
                    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
                }
                if uid.is_some() || gid.is_some() {
                    std::os::unix::fs::lchown(path, uid, gid)?;
                }
                if atime.is_some() || mtime.is_some() {
                    let mut times = FileTimes::new();
                    if let Some(t) = atime {
                        times = times.set_accessed(to_time(t));
                    }
                    if let Some(t) = mtime {
                        times = times.set_modified(to_time(t));
                    }
                    File::open(path)?.set_times(times)?;
                }
            } else if mode.is_some() || uid.is_some() || gid.is_some() {
                return Err(Errno::ENOENT);
            }
            s.attr_of(ino, fh)
        });
        match r {
            Ok(a) => reply.attr(&self.ttl, &a),
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
        let r = self.with(|s| {
            let rel = s.child_rel(parent.0, name)?;
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(s.full(&rel))?;
            s.entry(&rel)
        });
        self.reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.with(|s| {
            let rel = s.child_rel(parent.0, name)?;
            fs::remove_file(s.full(&rel))?;
            if let Some((ino, true)) = s.inodes.remove(&rel) {
                s.orphan(ino);
            }
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.with(|s| {
            let rel = s.child_rel(parent.0, name)?;
            fs::remove_dir(s.full(&rel))?;
            s.inodes.remove(&rel);
            Ok(())
        });
        reply_empty(reply, r);
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
        let r = self.with(|s| {
            let from = s.child_rel(parent.0, name)?;
            let to = s.child_rel(newparent.0, newname)?;
            s.rename(&from, &to, flags)
        });
        reply_empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.with(|s| {
            let src = s.rel(ino.0)?;
            let to = s.child_rel(newparent.0, newname)?;
            fs::hard_link(s.full(&src), s.full(&to))?;
            s.entry(&to)
        });
        self.reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.with(|s| {
            let rel = s.rel(ino.0)?;
            let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
            // Never O_APPEND on the backing file: the kernel passes the offset.
            let file = OpenOptions::new()
                .read(true)
                .write(write)
                .open(s.full(&rel))?;
            Ok(s.open_handle(ino.0, file, flags.0))
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
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
        let r = self.with(|s| {
            let rel = s.child_rel(parent.0, name)?;
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            let file = o.open(s.full(&rel))?;
            let ino = s.inodes.ino_for(&rel, backing_id(&file.metadata()?));
            if flags & libc::O_TRUNC != 0 {
                file.set_len(0)?;
                s.trim(ino, 0);
            }
            let meta = file.metadata()?;
            let fh = s.open_handle(ino, file, flags);
            Ok((attr(ino, &meta, s.files.get(&ino)), fh))
        });
        match r {
            Ok((a, fh)) => reply.created(
                &self.ttl,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
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
        match self.with(|s| s.read(ino.0, fh.0, offset, size)) {
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
        let sync = flags.0 & libc::O_DSYNC != 0;
        match self.with(|s| s.write(ino.0, fh.0, offset, data, sync)) {
            Ok(()) => reply.written(data.len() as u32),
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
        // close(2) does not make data durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Pending writes outlive the handle: only fsync (or the cap) persists them.
        lock(&self.state).release(fh.0);
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
        reply_empty(reply, self.with(|s| s.sync(ino.0, Some(fh.0), datasync)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| s.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
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
        let s = lock(&self.state);
        let Some(entries) = s.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, &e.name) {
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
        lock(&self.state).dirs.remove(&fh.0);
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
        // Metadata already went straight to the backing directory; sync it for real.
        let r = self.with(|s| {
            let rel = s.rel(ino.0)?;
            File::open(s.full(&rel))?.sync_all()?;
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // std has no safe statvfs; report a large, mostly free filesystem.
        const BLOCKS: u64 = 1 << 28; // 1 TiB of 4 KiB blocks
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 24, 1 << 24, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Requests come from the mount's owner (root): existence is all we check.
        let r = self.with(|s| {
            let rel = s.rel(ino.0)?;
            fs::symlink_metadata(s.full(&rel))?;
            Ok(())
        });
        reply_empty(reply, r);
    }
}
