//! The in-memory metadata: inodes, directories, orphans, pending-free
//! blocks and the allocator, and how journal records change them.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::allocator::{Allocator, Run};
use crate::encoding::{Dec, Enc};
use crate::error::FsError;
use crate::record::{Ino, Kind, Lsn, Op, SetAttr};

/// An unmapped logical block (a hole: reads as zeros).
pub(crate) const HOLE: u64 = u64::MAX;
/// Orphan / pending-free entries created by records not yet committed; the
/// commit stamps them with the transaction's end lsn.
pub(crate) const UNCOMMITTED: Lsn = u64::MAX;
/// The root directory.
pub const ROOT: Ino = 1;
/// Most logical blocks a file may map: bounds the in-memory block map
/// (32 MiB per file at worst).
pub(crate) const MAX_FILE_BLOCKS: u64 = 1 << 22;
/// Most names one inode may have (`LINK_MAX`; also bounds a directory's
/// subdirectories, each of which links it through its `..`).
pub const LINK_MAX: u32 = 65000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inode {
    pub kind: Kind,
    /// Permission bits (07777); the type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Non-directory: how many directory entries name it (0 for an
    /// orphan). Directory: 2 + its subdirectories (POSIX: its entry, its
    /// `.` and every child's `..`).
    pub nlink: u32,
    /// Bytes of data; a symlink's is its target's length.
    pub size: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    /// Device number of a char or block device.
    pub rdev: u64,
    /// A symlink's target.
    pub target: Vec<u8>,
    /// Directory holding the entry (for loop checks on rename). For a
    /// non-directory with several names, one of them.
    pub parent: Ino,
    /// Logical block -> physical block, [`HOLE`] where unmapped.
    pub blocks: Vec<u64>,
    pub entries: BTreeMap<String, Ino>,
}

impl Inode {
    pub(crate) fn mapped(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().copied().filter(|&b| b != HOLE)
    }
}

/// Why a record cannot be applied. On the RW this is the user's error (the
/// caller adds the path); during replay it means corruption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    TooManyLinks,
    Invalid(String),
}

impl Refusal {
    pub(crate) fn at(self, path: &str) -> FsError {
        let path = path.to_string();
        match self {
            Refusal::NotFound => FsError::NotFound { path },
            Refusal::Exists => FsError::Exists { path },
            Refusal::NotDir => FsError::NotDir { path },
            Refusal::IsDir => FsError::IsDir { path },
            Refusal::NotEmpty => FsError::NotEmpty { path },
            Refusal::TooManyLinks => FsError::TooManyLinks { path },
            Refusal::Invalid(what) => FsError::InvalidArgument {
                what: format!("{path}: {what}"),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct State {
    pub inodes: HashMap<Ino, Inode>,
    pub next_ino: Ino,
    /// Unlinked files whose blocks are not yet reusable, with the lsn of the
    /// transaction that orphaned them.
    pub orphans: BTreeMap<Ino, Lsn>,
    /// Blocks cut off by truncation, with the lsn that released them.
    pub pending: Vec<(Lsn, Vec<u64>)>,
    pub alloc: Allocator,
    pub block_size: u64,
}

impl State {
    /// A fresh file system: an empty root directory.
    pub(crate) fn new(block_size: u64, data_blocks: u64, now: u64) -> State {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                size: 0,
                atime: now,
                mtime: now,
                ctime: now,
                rdev: 0,
                target: Vec::new(),
                parent: ROOT,
                blocks: Vec::new(),
                entries: BTreeMap::new(),
            },
        );
        State {
            inodes,
            next_ino: ROOT + 1,
            orphans: BTreeMap::new(),
            pending: Vec::new(),
            alloc: Allocator::new(data_blocks),
            block_size,
        }
    }

    pub(crate) fn dir(&self, ino: Ino) -> Result<&Inode, Refusal> {
        match self.inodes.get(&ino) {
            Some(i) if i.kind == Kind::Dir => Ok(i),
            Some(_) => Err(Refusal::NotDir),
            None => Err(Refusal::NotFound),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut Inode, Refusal> {
        match self.inodes.get_mut(&ino) {
            Some(i) if i.kind == Kind::File => Ok(i),
            Some(i) if i.kind == Kind::Dir => Err(Refusal::IsDir),
            Some(_) => Err(Refusal::Invalid("not a regular file".into())),
            None => Err(Refusal::NotFound),
        }
    }

    /// Detaches `ino` (already removed from `parent`'s entries): a
    /// directory is deleted (and no longer links its parent); any other
    /// inode loses a link and turns orphan at zero, so open handles (this
    /// mount's or an RO's) keep it until `FreeOrphan`.
    fn drop_entry(&mut self, parent: Ino, ino: Ino, lsn: Lsn, time: u64) {
        let inode = self.inodes.get_mut(&ino).expect("entry points at an inode");
        if inode.kind == Kind::Dir {
            self.inodes.remove(&ino);
            if let Some(p) = self.inodes.get_mut(&parent) {
                p.nlink = p.nlink.saturating_sub(1);
            }
        } else {
            inode.nlink = inode.nlink.saturating_sub(1);
            inode.ctime = time;
            if inode.nlink == 0 {
                self.orphans.insert(ino, lsn);
            }
        }
    }

    /// Checks whether `ino` may replace an existing `dst` entry.
    fn check_replace(&self, src: &Inode, dst_ino: Ino) -> Result<(), Refusal> {
        let dst = self.inodes.get(&dst_ino).ok_or(Refusal::NotFound)?;
        match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
            (false, true) => Err(Refusal::IsDir),
            (true, false) => Err(Refusal::NotDir),
            (true, true) if !dst.entries.is_empty() => Err(Refusal::NotEmpty),
            _ => Ok(()),
        }
    }

    /// Applies one record. `lsn` is the end of the transaction during
    /// replay, `None` live on the RW (entries are stamped at commit).
    /// Validates fully before changing anything, so a refusal leaves the
    /// state untouched.
    pub(crate) fn apply(&mut self, op: &Op, lsn: Option<Lsn>) -> Result<(), Refusal> {
        let replay = lsn.is_some();
        let lsn = lsn.unwrap_or(UNCOMMITTED);
        match op {
            Op::Create {
                parent,
                name,
                ino,
                kind,
                mode,
                uid,
                gid,
                rdev,
                target,
                time,
            } => {
                let p = self.dir(*parent)?;
                if p.entries.contains_key(name) {
                    return Err(Refusal::Exists);
                }
                let is_dir = *kind == Kind::Dir;
                if is_dir && p.nlink >= LINK_MAX {
                    return Err(Refusal::TooManyLinks);
                }
                if self.inodes.contains_key(ino) || *ino <= ROOT {
                    return Err(Refusal::Invalid(format!("inode {ino} already in use")));
                }
                if (*kind == Kind::Symlink) == target.is_empty() {
                    return Err(Refusal::Invalid(
                        "a symlink, and only a symlink, has a non-empty target".into(),
                    ));
                }
                self.inodes.insert(
                    *ino,
                    Inode {
                        kind: *kind,
                        mode: *mode & 0o7777,
                        uid: *uid,
                        gid: *gid,
                        nlink: if is_dir { 2 } else { 1 },
                        size: target.len() as u64,
                        atime: *time,
                        mtime: *time,
                        ctime: *time,
                        rdev: *rdev,
                        target: target.clone(),
                        parent: *parent,
                        blocks: Vec::new(),
                        entries: BTreeMap::new(),
                    },
                );
                let p = self.inodes.get_mut(parent).expect("checked above");
                p.entries.insert(name.clone(), *ino);
                p.mtime = *time;
                p.ctime = *time;
                if is_dir {
                    p.nlink += 1;
                }
                self.next_ino = self.next_ino.max(ino + 1);
            }
            Op::Link {
                ino,
                parent,
                name,
                time,
            } => {
                let p = self.dir(*parent)?;
                if p.entries.contains_key(name) {
                    return Err(Refusal::Exists);
                }
                match self.inodes.get(ino) {
                    None => return Err(Refusal::NotFound),
                    Some(i) if i.kind == Kind::Dir => {
                        return Err(Refusal::Invalid("directories cannot be linked".into()))
                    }
                    // An unlinked inode cannot get a name back.
                    Some(i) if i.nlink == 0 => return Err(Refusal::NotFound),
                    Some(i) if i.nlink >= LINK_MAX => return Err(Refusal::TooManyLinks),
                    Some(_) => {}
                }
                let p = self.inodes.get_mut(parent).expect("checked above");
                p.entries.insert(name.clone(), *ino);
                p.mtime = *time;
                p.ctime = *time;
                let i = self.inodes.get_mut(ino).expect("checked above");
                i.nlink += 1;
                i.ctime = *time;
            }
            Op::SetAttr { ino, attr, ctime } => {
                let i = self.inodes.get_mut(ino).ok_or(Refusal::NotFound)?;
                let SetAttr {
                    mode,
                    uid,
                    gid,
                    atime,
                    mtime,
                } = attr;
                if let Some(m) = mode {
                    i.mode = m & 0o7777;
                }
                if let Some(u) = uid {
                    i.uid = *u;
                }
                if let Some(g) = gid {
                    i.gid = *g;
                }
                if let Some(t) = atime {
                    i.atime = *t;
                }
                if let Some(t) = mtime {
                    i.mtime = *t;
                }
                i.ctime = *ctime;
            }
            Op::Remove { parent, name, time } => {
                let p = self.dir(*parent)?;
                let ino = *p.entries.get(name).ok_or(Refusal::NotFound)?;
                let target = self.inodes.get(&ino).ok_or(Refusal::NotFound)?;
                if target.kind == Kind::Dir && !target.entries.is_empty() {
                    return Err(Refusal::NotEmpty);
                }
                let p = self.inodes.get_mut(parent).expect("checked above");
                p.entries.remove(name);
                p.mtime = *time;
                p.ctime = *time;
                self.drop_entry(*parent, ino, lsn, *time);
            }
            Op::Rename {
                src_parent,
                src_name,
                dst_parent,
                dst_name,
                time,
            } => {
                let sp = self.dir(*src_parent)?;
                let src_ino = *sp.entries.get(src_name).ok_or(Refusal::NotFound)?;
                let dp = self.dir(*dst_parent)?;
                let dst = dp.entries.get(dst_name).copied();
                if dst == Some(src_ino) {
                    return Ok(());
                }
                let src = self.inodes.get(&src_ino).ok_or(Refusal::NotFound)?;
                if let Some(d) = dst {
                    self.check_replace(src, d)?;
                }
                if src.kind == Kind::Dir {
                    // A directory cannot move below itself.
                    let mut at = *dst_parent;
                    loop {
                        if at == src_ino {
                            return Err(Refusal::Invalid(
                                "cannot move a directory into itself".into(),
                            ));
                        }
                        if at == ROOT {
                            break;
                        }
                        at = self.inodes.get(&at).ok_or(Refusal::NotFound)?.parent;
                    }
                }
                let moves_dir = src.kind == Kind::Dir && src_parent != dst_parent;
                if moves_dir && dst.is_none() && dp.nlink >= LINK_MAX {
                    return Err(Refusal::TooManyLinks);
                }
                let sp = self.inodes.get_mut(src_parent).expect("checked above");
                sp.entries.remove(src_name);
                sp.mtime = *time;
                sp.ctime = *time;
                if moves_dir {
                    // The moved directory's `..` now links the new parent.
                    sp.nlink = sp.nlink.saturating_sub(1);
                }
                let dp = self.inodes.get_mut(dst_parent).expect("checked above");
                dp.entries.insert(dst_name.clone(), src_ino);
                dp.mtime = *time;
                dp.ctime = *time;
                if moves_dir {
                    dp.nlink += 1;
                }
                let s = self.inodes.get_mut(&src_ino).expect("checked above");
                s.parent = *dst_parent;
                s.ctime = *time;
                if let Some(d) = dst {
                    self.drop_entry(*dst_parent, d, lsn, *time);
                }
            }
            Op::Map { ino, logical, runs } => {
                let alloc = &self.alloc;
                let inode = match self.inodes.get(ino) {
                    Some(i) if i.kind == Kind::File => i,
                    Some(_) => return Err(Refusal::IsDir),
                    None => return Err(Refusal::NotFound),
                };
                let mut l = *logical;
                for &(s, c) in runs {
                    for b in s..s + c {
                        if inode.blocks.get(l as usize).is_some_and(|&x| x != HOLE) {
                            return Err(Refusal::Invalid(format!(
                                "logical block {l} already mapped"
                            )));
                        }
                        if b >= alloc.nblocks() || (replay && alloc.is_used(b)) {
                            return Err(Refusal::Invalid(format!("block {b} is not free")));
                        }
                        l += 1;
                    }
                }
                let end = l;
                if end > MAX_FILE_BLOCKS {
                    return Err(Refusal::Invalid(format!(
                        "logical block {end} past the largest file"
                    )));
                }
                let inode = self.inodes.get_mut(ino).expect("checked above");
                if inode.blocks.len() < end as usize {
                    inode.blocks.resize(end as usize, HOLE);
                }
                let mut l = *logical as usize;
                for &(s, c) in runs {
                    for b in s..s + c {
                        inode.blocks[l] = b;
                        // Live, the writer reserved the block already.
                        self.alloc.set(b);
                        l += 1;
                    }
                }
            }
            Op::SetSize { ino, size, mtime } => {
                let inode = self.file_mut(*ino)?;
                inode.size = *size;
                inode.mtime = *mtime;
                inode.ctime = *mtime;
            }
            Op::Truncate { ino, size, mtime } => {
                let bs = self.block_size;
                let inode = self.file_mut(*ino)?;
                let keep = size.div_ceil(bs) as usize;
                let cut: Vec<u64> = if inode.blocks.len() > keep {
                    inode
                        .blocks
                        .split_off(keep)
                        .into_iter()
                        .filter(|&b| b != HOLE)
                        .collect()
                } else {
                    Vec::new()
                };
                while inode.blocks.last() == Some(&HOLE) {
                    inode.blocks.pop();
                }
                inode.size = *size;
                inode.mtime = *mtime;
                inode.ctime = *mtime;
                if !cut.is_empty() {
                    self.pending.push((lsn, cut));
                }
            }
            Op::FreeOrphan { ino } => {
                if !self.orphans.contains_key(ino) {
                    return Err(Refusal::Invalid(format!("inode {ino} is not an orphan")));
                }
                self.orphans.remove(ino);
                let inode = self.inodes.remove(ino).ok_or(Refusal::NotFound)?;
                for b in inode.mapped() {
                    self.alloc.clear(b);
                }
            }
            Op::ReleasePending { upto } => {
                let alloc = &mut self.alloc;
                self.pending.retain(|(at, blocks)| {
                    if *at != UNCOMMITTED && at <= upto {
                        for &b in blocks {
                            alloc.clear(b);
                        }
                        false
                    } else {
                        true
                    }
                });
            }
            Op::Grow { data_blocks } => {
                if *data_blocks < self.alloc.nblocks() {
                    return Err(Refusal::Invalid("a file system cannot shrink".into()));
                }
                self.alloc.grow(*data_blocks);
            }
            // Checked by readers of the newest transaction, not state.
            Op::DataCrc { .. } => {}
            // Data, not metadata: overlaid by readers until it is home.
            Op::Journaled { .. } => {}
        }
        Ok(())
    }

    /// Gives uncommitted orphan and pending entries their commit lsn.
    pub(crate) fn stamp(&mut self, lsn: Lsn) {
        for v in self.orphans.values_mut() {
            if *v == UNCOMMITTED {
                *v = lsn;
            }
        }
        for (at, _) in self.pending.iter_mut() {
            if *at == UNCOMMITTED {
                *at = lsn;
            }
        }
    }

    /// Blocks held by orphans and pending-free lists.
    pub(crate) fn orphan_blocks(&self) -> u64 {
        let o: usize = self
            .orphans
            .keys()
            .filter_map(|i| self.inodes.get(i))
            .map(|i| i.mapped().count())
            .sum();
        let p: usize = self.pending.iter().map(|(_, b)| b.len()).sum();
        (o + p) as u64
    }

    /// The full snapshot written into a checkpoint slot.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.next_ino);
        e.u64(self.alloc.nblocks());
        e.u64(self.block_size);
        let mut inos: Vec<&Ino> = self.inodes.keys().collect();
        inos.sort();
        e.u64(inos.len() as u64);
        for ino in inos {
            let i = &self.inodes[ino];
            e.u64(*ino);
            e.u8(i.kind.code());
            e.u32(i.mode);
            e.u32(i.uid);
            e.u32(i.gid);
            e.u32(i.nlink);
            e.u64(i.size);
            e.u64(i.atime);
            e.u64(i.mtime);
            e.u64(i.ctime);
            e.u64(i.rdev);
            e.bytes(&i.target);
            e.u64(i.parent);
            let runs = extents(&i.blocks);
            e.u64(runs.len() as u64);
            for (l, p, c) in runs {
                e.u64(l);
                e.u64(p);
                e.u64(c);
            }
            e.u64(i.entries.len() as u64);
            for (name, child) in &i.entries {
                e.str(name);
                e.u64(*child);
            }
        }
        e.u64(self.orphans.len() as u64);
        for (ino, lsn) in &self.orphans {
            e.u64(*ino);
            e.u64(*lsn);
        }
        e.u64(self.pending.len() as u64);
        for (lsn, blocks) in &self.pending {
            e.u64(*lsn);
            e.u64(blocks.len() as u64);
            for b in blocks {
                e.u64(*b);
            }
        }
        e.0
    }

    /// Decodes a snapshot and rebuilds the allocator from it.
    ///
    /// # Errors
    /// [`FsError::Corrupt`] for malformed bytes or a block owned twice.
    pub(crate) fn decode(buf: &[u8]) -> Result<State, FsError> {
        let mut d = Dec::new(buf, "checkpoint");
        let next_ino = d.u64()?;
        let data_blocks = d.u64()?;
        let block_size = d.u64()?;
        let mut st = State {
            inodes: HashMap::new(),
            next_ino,
            orphans: BTreeMap::new(),
            pending: Vec::new(),
            alloc: Allocator::new(data_blocks),
            block_size,
        };
        let n = d.count(57)?;
        for _ in 0..n {
            let ino = d.u64()?;
            let kind = Kind::from_code(d.u8()?)?;
            let mode = d.u32()?;
            let uid = d.u32()?;
            let gid = d.u32()?;
            let nlink = d.u32()?;
            let size = d.u64()?;
            let atime = d.u64()?;
            let mtime = d.u64()?;
            let ctime = d.u64()?;
            let rdev = d.u64()?;
            let target = d.bytes()?.to_vec();
            let parent = d.u64()?;
            let mut blocks = Vec::new();
            for _ in 0..d.count(24)? {
                let (l, p, c) = (d.u64()?, d.u64()?, d.u64()?);
                let end = l
                    .checked_add(c)
                    .filter(|&e| e <= size.div_ceil(block_size) + data_blocks);
                let end = end.ok_or_else(|| {
                    FsError::corrupt(format!("inode {ino}: extent past any size"))
                })?;
                if blocks.len() < end as usize {
                    blocks.resize(end as usize, HOLE);
                }
                for k in 0..c {
                    let b = p + k;
                    if !st.alloc.set(b) {
                        return Err(FsError::corrupt(format!(
                            "block {b} of inode {ino} is out of range or owned twice"
                        )));
                    }
                    blocks[(l + k) as usize] = b;
                }
            }
            let mut entries = BTreeMap::new();
            for _ in 0..d.count(12)? {
                let name = d.string()?;
                entries.insert(name, d.u64()?);
            }
            st.inodes.insert(
                ino,
                Inode {
                    kind,
                    mode,
                    uid,
                    gid,
                    nlink,
                    size,
                    atime,
                    mtime,
                    ctime,
                    rdev,
                    target,
                    parent,
                    blocks,
                    entries,
                },
            );
        }
        for _ in 0..d.count(16)? {
            let ino = d.u64()?;
            st.orphans.insert(ino, d.u64()?);
        }
        for _ in 0..d.count(16)? {
            let lsn = d.u64()?;
            let mut blocks = Vec::new();
            for _ in 0..d.count(8)? {
                let b = d.u64()?;
                if !st.alloc.set(b) {
                    return Err(FsError::corrupt(format!(
                        "pending block {b} is out of range or owned twice"
                    )));
                }
                blocks.push(b);
            }
            st.pending.push((lsn, blocks));
        }
        d.finish()?;
        if st.dir(ROOT).is_err() {
            return Err(FsError::corrupt("checkpoint has no root directory"));
        }
        Ok(st)
    }

    /// Structural checks for fsck; each problem is one line.
    pub(crate) fn check(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut seen: HashSet<Ino> = HashSet::new();
        // Directory entries naming each non-directory inode.
        let mut names: HashMap<Ino, u32> = HashMap::new();
        let mut stack = vec![ROOT];
        seen.insert(ROOT);
        while let Some(d) = stack.pop() {
            let Some(dir) = self.inodes.get(&d) else {
                errs.push(format!("directory {d} is missing"));
                continue;
            };
            let mut subdirs = 0u32;
            for (name, child) in &dir.entries {
                match self.inodes.get(child) {
                    None => errs.push(format!(
                        "entry {name:?} in dir {d} points at missing inode {child}"
                    )),
                    Some(c) if c.kind == Kind::Dir => {
                        subdirs += 1;
                        if !seen.insert(*child) {
                            errs.push(format!("directory {child} is linked more than once"));
                            continue;
                        }
                        if c.parent != d {
                            errs.push(format!(
                                "directory {child} says parent {} but is in dir {d}",
                                c.parent
                            ));
                        }
                        stack.push(*child);
                    }
                    Some(c) => {
                        seen.insert(*child);
                        *names.entry(*child).or_default() += 1;
                        if c.kind == Kind::Symlink && c.size != c.target.len() as u64 {
                            errs.push(format!("symlink {child} size is not its target's"));
                        }
                    }
                }
            }
            if dir.nlink != 2 + subdirs {
                errs.push(format!(
                    "directory {d} has nlink {} but {subdirs} subdirectories",
                    dir.nlink
                ));
            }
        }
        for (ino, n) in &names {
            let nlink = self.inodes.get(ino).map(|i| i.nlink).unwrap_or(0);
            if nlink != *n {
                errs.push(format!("inode {ino} has nlink {nlink} but {n} names"));
            }
        }
        for (ino, i) in &self.inodes {
            let orphan = self.orphans.contains_key(ino);
            if !seen.contains(ino) && !orphan {
                errs.push(format!("inode {ino} is neither linked nor an orphan"));
            }
            if orphan && (seen.contains(ino) || i.nlink != 0 || i.kind == Kind::Dir) {
                errs.push(format!("orphan {ino} is linked, a directory, or has links"));
            }
            if *ino >= self.next_ino {
                errs.push(format!(
                    "inode {ino} is not below next_ino {}",
                    self.next_ino
                ));
            }
            if i.kind != Kind::File && !i.blocks.is_empty() {
                errs.push(format!("{:?} {ino} owns data blocks", i.kind));
            }
        }
        for ino in self.orphans.keys() {
            if !self.inodes.contains_key(ino) {
                errs.push(format!("orphan {ino} has no inode"));
            }
        }
        // Every used block is owned exactly once (decode already refused
        // double owners); here the bitmap must match the owners.
        let owned: u64 = self
            .inodes
            .values()
            .map(|i| i.mapped().count() as u64)
            .sum::<u64>()
            + self
                .pending
                .iter()
                .map(|(_, b)| b.len() as u64)
                .sum::<u64>();
        if owned != self.alloc.used() {
            errs.push(format!(
                "{owned} blocks are owned but the bitmap marks {} used",
                self.alloc.used()
            ));
        }
        errs
    }
}

/// Block map as (logical, physical, count) extents, holes skipped.
pub(crate) fn extents(blocks: &[u64]) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for (l, &p) in blocks.iter().enumerate() {
        if p == HOLE {
            continue;
        }
        match out.last_mut() {
            Some((sl, sp, c)) if *sl + *c == l as u64 && *sp + *c == p => *c += 1,
            _ => out.push((l as u64, p, 1)),
        }
    }
    out
}

/// Physical runs of a list of blocks, in order.
pub(crate) fn runs_of(blocks: &[u64]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some((s, c)) if *s + *c == b => *c += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(st: &mut State, parent: Ino, name: &str, ino: Ino, kind: Kind) {
        st.apply(
            &Op::Create {
                parent,
                name: name.into(),
                ino,
                kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                target: Vec::new(),
                time: 1,
            },
            None,
        )
        .unwrap();
    }

    #[test]
    fn snapshot_roundtrip_rebuilds_allocator() {
        let mut st = State::new(4096, 64, 0);
        create(&mut st, ROOT, "d", 2, Kind::Dir);
        create(&mut st, 2, "f", 3, Kind::File);
        let runs = st.alloc.alloc(3).unwrap();
        st.apply(
            &Op::Map {
                ino: 3,
                logical: 1,
                runs,
            },
            None,
        )
        .unwrap();
        st.apply(
            &Op::SetSize {
                ino: 3,
                size: 4 * 4096,
                mtime: 2,
            },
            None,
        )
        .unwrap();
        st.apply(
            &Op::Truncate {
                ino: 3,
                size: 4096 + 1,
                mtime: 3,
            },
            None,
        )
        .unwrap();
        assert_eq!(st.pending.len(), 1);
        assert_eq!(st.pending[0].1.len(), 2, "logical blocks 2 and 3 are cut");
        st.stamp(8192);
        let back = State::decode(&st.encode()).unwrap();
        assert_eq!(back.inodes, st.inodes);
        assert_eq!(back.pending, vec![(8192, st.pending[0].1.clone())]);
        assert_eq!(back.alloc.used(), 3);
        assert!(back.check().is_empty(), "{:?}", back.check());
    }

    #[test]
    fn refusals_leave_state_untouched() {
        let mut st = State::new(4096, 64, 0);
        create(&mut st, ROOT, "d", 2, Kind::Dir);
        create(&mut st, 2, "f", 3, Kind::File);
        let before = st.inodes.clone();
        let rm = Op::Remove {
            parent: ROOT,
            name: "d".into(),
            time: 5,
        };
        assert_eq!(st.apply(&rm, None), Err(Refusal::NotEmpty));
        let mv = Op::Rename {
            src_parent: ROOT,
            src_name: "d".into(),
            dst_parent: 2,
            dst_name: "x".into(),
            time: 5,
        };
        assert!(matches!(st.apply(&mv, None), Err(Refusal::Invalid(_))));
        let dup = Op::Create {
            parent: 2,
            name: "f".into(),
            ino: 9,
            kind: Kind::File,
            mode: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: Vec::new(),
            time: 5,
        };
        assert_eq!(st.apply(&dup, None), Err(Refusal::Exists));
        assert_eq!(st.inodes, before);
        // Replacing rename orphans the destination.
        create(&mut st, ROOT, "g", 4, Kind::File);
        let mv = Op::Rename {
            src_parent: ROOT,
            src_name: "g".into(),
            dst_parent: 2,
            dst_name: "f".into(),
            time: 6,
        };
        st.apply(&mv, Some(4096)).unwrap();
        assert_eq!(st.orphans.get(&3), Some(&4096));
        assert_eq!(st.dir(2).unwrap().entries.get("f"), Some(&4));
        assert!(st.check().is_empty(), "{:?}", st.check());
    }
}
