//! Whole-file-system tests: journal replay, crash recovery at every write,
//! RO mounts following a RW, ENOSPC, fencing and concurrency.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};

use crate::*;

const KIB: u64 = 1024;
const BS: u64 = 64 * KIB;

fn small_opts() -> MkfsOptions {
    MkfsOptions {
        block_size: Some(BS),
        journal_size: Some(64 * KIB),
        checkpoint_size: Some(256 * KIB),
    }
}

fn new_fs(size: u64) -> (Arc<CrashDevice>, Fs) {
    let dev = Arc::new(CrashDevice::new(size));
    mkfs(&*dev, &small_opts()).unwrap();
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    (dev, fs)
}

fn remount(dev: &Arc<CrashDevice>) -> (Arc<CrashDevice>, Fs) {
    let d = Arc::new(CrashDevice::from_image(dev.image(), None, false));
    let fs = Fs::mount(d.clone(), Mode::Rw).unwrap();
    (d, fs)
}

fn assert_fsck_clean(dev: &dyn BlockDevice) -> FsckReport {
    let r = fsck(dev).unwrap();
    assert!(r.is_clean(), "fsck errors: {:#?}", r.errors);
    r
}

fn seed_from_env(what: &str) -> u64 {
    let seed = std::env::var("PIKAFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{what} seed {seed} (replay with PIKAFS_SEED={seed})");
    seed
}

fn bytes(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.gen()).collect()
}

fn read_all(fs: &Fs, path: &str) -> Vec<u8> {
    let f = fs.open(path, OpenFlags::read()).unwrap();
    let size = f.stat().unwrap().size;
    let data = f.pread(0, size as usize + 10).unwrap();
    assert_eq!(data.len() as u64, size);
    data
}

#[test]
fn namespace_and_io_survive_remount() {
    let (dev, fs) = new_fs(16 << 20);
    fs.mkdir("/db").unwrap();
    let f = fs.open("/db/a", OpenFlags::create()).unwrap();
    f.pwrite(0, b"hello").unwrap();
    assert_eq!(f.append(b" world").unwrap(), 5);
    // A write past the end leaves a hole that reads as zeros.
    f.pwrite(200 * KIB, b"tail").unwrap();
    f.fsync().unwrap();
    let st = fs.stat("/db/a").unwrap();
    assert_eq!(st.size, 200 * KIB + 4);
    assert_eq!(
        st.allocated,
        2 * BS,
        "blocks 0 and 3 only; 1 and 2 are holes"
    );
    let data = f.pread(0, 300 * KIB as usize).unwrap();
    assert_eq!(&data[..11], b"hello world");
    assert!(data[11..200 * KIB as usize].iter().all(|&b| b == 0));
    assert_eq!(&data[200 * KIB as usize..], b"tail");
    assert!(matches!(
        fs.open(
            "/db/a",
            OpenFlags {
                create: true,
                exclusive: true,
                write: true,
                ..Default::default()
            }
        ),
        Err(FsError::Exists { .. })
    ));
    assert!(matches!(
        fs.open("/db", OpenFlags::read()),
        Err(FsError::IsDir { .. })
    ));
    assert!(matches!(
        fs.open("/nope/x", OpenFlags::create()),
        Err(FsError::NotFound { .. })
    ));
    assert!(matches!(
        fs.open("/db/a/x", OpenFlags::create()),
        Err(FsError::NotDir { .. })
    ));
    assert!(matches!(fs.rmdir("/db"), Err(FsError::NotEmpty { .. })));
    let huge = max_file_size(BS);
    assert!(matches!(
        f.pwrite(huge, b"x"),
        Err(FsError::TooLarge { .. })
    ));
    assert!(matches!(
        f.truncate(huge + 1),
        Err(FsError::TooLarge { .. })
    ));
    assert!(matches!(
        f.fallocate(u64::MAX - 1, 10, true),
        Err(FsError::TooLarge { .. })
    ));
    assert_eq!(FsError::TooLarge { path: "/x".into() }.errno(), libc::EFBIG);
    assert!(matches!(fs.unlink("/db"), Err(FsError::IsDir { .. })));
    assert!(matches!(fs.rmdir("/db/a"), Err(FsError::NotDir { .. })));
    fs.rename("/db/a", "/db/b").unwrap();
    let g = fs.open("/db/c", OpenFlags::create()).unwrap();
    g.append(b"ccc").unwrap();
    g.fsync().unwrap();
    // Replacing rename: /db/c's old inode (the "ccc" one) goes away.
    fs.rename("/db/b", "/db/c").unwrap();
    let names: Vec<String> = fs
        .readdir("/db")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["c"]);
    assert_eq!(fs.statfs().orphan_files, 1);
    drop((f, g));
    // No unmount: recovery must replay the journal.
    let (dev2, fs2) = remount(&dev);
    let data = read_all(&fs2, "/db/c");
    assert_eq!(&data[..11], b"hello world");
    assert_eq!(&data[200 * KIB as usize..], b"tail");
    assert_eq!(fs2.statfs().orphan_files, 1);
    let freed = fs2.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    assert_eq!(
        freed,
        ReleaseStats {
            orphans_freed: 1,
            blocks_freed: 1
        }
    );
    fs2.unlink("/db/c").unwrap();
    fs2.rmdir("/db").unwrap();
    fs2.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    assert_eq!(fs2.statfs().used_bytes, 0);
    fs2.unmount().unwrap();
    let r = assert_fsck_clean(&*dev2);
    assert_eq!((r.files, r.dirs, r.used_blocks), (0, 1, 0));
}

#[test]
fn truncate_and_fallocate_keep_reads_defined() {
    let (dev, fs) = new_fs(16 << 20);
    let f = fs.open("/f", OpenFlags::create()).unwrap();
    f.pwrite(0, &vec![0xAB; 3 * BS as usize]).unwrap();
    f.truncate(10).unwrap();
    // Growing again must not resurrect the old bytes of the kept block.
    f.truncate(BS + 5).unwrap();
    let d = f.pread(0, 2 * BS as usize).unwrap();
    assert_eq!(d.len() as u64, BS + 5);
    assert!(d[..10].iter().all(|&b| b == 0xAB));
    assert!(d[10..].iter().all(|&b| b == 0), "grown range reads zeros");
    f.fsync().unwrap();
    let st = fs.statfs();
    assert_eq!(st.orphan_bytes, 2 * BS, "truncated blocks stay pending");
    // Preallocation keeps the size; appends then fill it in place.
    let w = fs.open("/wal", OpenFlags::create()).unwrap();
    w.fallocate(0, 4 * BS, true).unwrap();
    assert_eq!(w.stat().unwrap().size, 0);
    assert_eq!(w.stat().unwrap().allocated, 4 * BS);
    w.append(b"rec1").unwrap();
    w.pwrite(100, b"rec2").unwrap();
    assert_eq!(w.pread(0, 200).unwrap()[4..100], [0u8; 96]);
    w.fallocate(0, 10, false).unwrap();
    assert_eq!(w.stat().unwrap().size, 104);
    w.fallocate(BS * 6, 10, false).unwrap();
    assert_eq!(w.stat().unwrap().size, BS * 6 + 10);
    assert!(w
        .pread(BS * 5, BS as usize + 10)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    w.fsync().unwrap();
    drop((f, w));
    let (dev2, fs2) = remount(&dev);
    assert_eq!(fs2.stat("/wal").unwrap().size, BS * 6 + 10);
    assert_eq!(&read_all(&fs2, "/wal")[..4], b"rec1");
    let r = fs2.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    assert_eq!(r.blocks_freed, 2);
    fs2.unmount().unwrap();
    assert_fsck_clean(&*dev2);
}

#[test]
fn truncate_down_and_up_never_resurrects_small_queued_or_journaled_bytes() {
    let (dev, fs) = new_fs(16 << 20);
    // Queued only (no fsync), then fsync'd (journaled, not yet home).
    for sync_first in [false, true] {
        let path = format!("/small-{sync_first}");
        let f = fs.open(&path, OpenFlags::create()).unwrap();
        // Mapped blocks first, so the small write below is queued (no
        // zeroing of a fresh block), as in an overwrite.
        f.pwrite(0, &vec![0xCD; 2 * BS as usize]).unwrap();
        f.fsync().unwrap();
        f.pwrite(100, b"hello").unwrap();
        f.pwrite(3 * BS, b"tail").unwrap();
        if sync_first {
            f.fsync().unwrap();
        }
        f.truncate(10).unwrap();
        f.truncate(8192).unwrap();
        let d = f.pread(0, 8192).unwrap();
        assert_eq!(d.len(), 8192);
        assert!(d[..10].iter().all(|&b| b == 0xCD));
        assert!(
            d[10..].iter().all(|&b| b == 0),
            "sync_first={sync_first}: old bytes came back"
        );
        f.pwrite(20, b"new").unwrap();
        f.fsync().unwrap();
    }
    fs.unmount().unwrap();
    let (dev2, fs2) = remount(&dev);
    for sync_first in [false, true] {
        let d = read_all(&fs2, &format!("/small-{sync_first}"));
        assert_eq!(d.len(), 8192);
        let mut want = vec![0u8; 8192];
        want[..10].fill(0xCD);
        want[20..23].copy_from_slice(b"new");
        assert!(d == want, "after remount, sync_first={sync_first}");
    }
    fs2.unmount().unwrap();
    assert_fsck_clean(&*dev2);
}

#[test]
fn journal_wraps_and_checkpoints() {
    // 64 KiB ring: a few dozen commits force many checkpoints and wraps.
    let (dev, fs) = new_fs(16 << 20);
    for i in 0..300 {
        let f = fs
            .open(&format!("/f{}", i % 37), OpenFlags::create())
            .unwrap();
        f.append(format!("line {i}\n").as_bytes()).unwrap();
        f.fsync().unwrap();
        if i % 5 == 0 {
            fs.rename(&format!("/f{}", i % 37), &format!("/g{}", i % 11))
                .unwrap();
        }
    }
    assert!(fs.lsn() > 10 * 64 * KIB, "the ring wrapped several times");
    assert!(
        fs.metrics().checkpoints_total.get() >= 10,
        "{} checkpoints, lsn {}",
        fs.metrics().checkpoints_total.get(),
        fs.lsn()
    );
    assert_eq!(fs.metrics().lsn.get(), fs.lsn());
    let mut reg = prometheus_client::registry::Registry::default();
    fs.metrics().register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(text.contains("pikafs_fs_commits_total"), "{text}");
    let want: BTreeMap<String, Vec<u8>> = fs
        .readdir("/")
        .unwrap()
        .into_iter()
        .map(|e| (e.name.clone(), read_all(&fs, &format!("/{}", e.name))))
        .collect();
    let (dev2, fs2) = remount(&dev);
    let got: BTreeMap<String, Vec<u8>> = fs2
        .readdir("/")
        .unwrap()
        .into_iter()
        .map(|e| (e.name.clone(), read_all(&fs2, &format!("/{}", e.name))))
        .collect();
    assert_eq!(got, want);
    assert_fsck_clean(&*dev2);
}

#[test]
fn uncommitted_records_are_never_applied() {
    let (dev, fs) = new_fs(16 << 20);
    let ring = (3 * 4096)..(3 * 4096 + 64 * KIB);
    let f = fs.open("/a", OpenFlags::create()).unwrap();
    f.append(b"one").unwrap();
    f.fsync().unwrap();
    // Two commits: an append (journaled: its bytes ride in the ring copy)
    // and a create (records only). Each is a ring write and a header
    // write (which inlines a transaction this small), in either order.
    // Per commit: image before, image after, its ring write, its header.
    type Step = (Vec<u8>, Vec<u8>, (u64, usize), (u64, usize));
    let mut steps: Vec<Step> = Vec::new();
    for step in 0..2 {
        let before = dev.image();
        let writes = dev.writes() as usize;
        if step == 0 {
            f.append(b"two").unwrap();
            f.fsync().unwrap();
        } else {
            drop(fs.open("/b", OpenFlags::create()).unwrap());
            fs.sync().unwrap();
        }
        let log = dev.write_log()[writes..].to_vec();
        assert_eq!(log.len(), 2, "step {step}: {log:?}");
        let find =
            |pred: &dyn Fn(u64) -> bool| *log.iter().find(|(off, _)| pred(*off)).expect("write");
        let txn = find(&|off| ring.contains(&off));
        let hdr = find(&|off| off < ring.start);
        steps.push((before, dev.image(), txn, hdr));
    }
    let image_with = |before: &[u8], after: &[u8], writes: &[(u64, usize)]| {
        let mut img = before.to_vec();
        for &(off, len) in writes {
            img[off as usize..off as usize + len]
                .copy_from_slice(&after[off as usize..off as usize + len]);
        }
        Arc::new(CrashDevice::from_image(img, None, false))
    };
    let (before, after, txn, hdr) = &steps[0];
    // The ring landed, the header did not: not committed.
    let d = image_with(before, after, &[*txn]);
    let fs2 = Fs::mount(d.clone(), Mode::Rw).unwrap();
    assert_eq!(read_all(&fs2, "/a"), b"one");
    drop(fs2);
    assert_fsck_clean(&*d);
    // The header landed, the ring write (with the journaled bytes) did
    // not: the header is not trusted, on any mount, and a RW mount drops
    // its transaction for good.
    let d = image_with(before, after, &[*hdr]);
    let r = assert_fsck_clean(&*d);
    assert!(r.notes.iter().any(|n| n.contains("not counted")), "{r:?}");
    assert_eq!(
        read_all(&Fs::mount(d.clone(), Mode::Ro).unwrap(), "/a"),
        b"one"
    );
    let fs3 = Fs::mount(d.clone(), Mode::Rw).unwrap();
    assert_eq!(read_all(&fs3, "/a"), b"one");
    drop(fs3);
    assert_eq!(
        read_all(&Fs::mount(d.clone(), Mode::Ro).unwrap(), "/a"),
        b"one"
    );
    // The create's header landed, its ring write did not: the header's
    // inline copy commits it, and the RW mount restores the ring copy.
    let (before, after, _, hdr) = &steps[1];
    let d = image_with(before, after, &[*hdr]);
    assert_fsck_clean(&*d);
    assert!(Fs::mount(d.clone(), Mode::Ro).unwrap().stat("/b").is_ok());
    let fs3 = Fs::mount(d.clone(), Mode::Rw).unwrap();
    assert_eq!(read_all(&fs3, "/a"), b"onetwo");
    let g = fs3
        .open(
            "/a",
            OpenFlags {
                write: true,
                ..Default::default()
            },
        )
        .unwrap();
    g.append(b"three").unwrap();
    g.fsync().unwrap();
    drop(g);
    drop(fs3);
    // Now the older transactions are read from the ring.
    let ro = Fs::mount(d.clone(), Mode::Ro).unwrap();
    assert_eq!(read_all(&ro, "/a"), b"onetwothree");
    assert!(ro.stat("/b").is_ok());
    assert_fsck_clean(&*d);
    // A garbled newest header slot falls back to the older header.
    let mut img = after.clone();
    img[hdr.0 as usize + 100] ^= 0xFF;
    let d = Arc::new(CrashDevice::from_image(img, None, false));
    let fs4 = Fs::mount(d, Mode::Ro).unwrap();
    assert_eq!(read_all(&fs4, "/a"), b"onetwo");
    assert!(fs4.stat("/b").is_err());
}

/// A file's expected bytes: `data` as written, `synced` bytes of it
/// committed for sure.
#[derive(Debug, Clone, Default, PartialEq)]
struct FileModel {
    data: Vec<u8>,
    synced: usize,
    /// Created but not committed yet: a crash may lose the name.
    maybe: bool,
    /// Permission bits set by a (committed) chmod.
    mode: Option<u32>,
}

type Model = BTreeMap<String, FileModel>;

fn sync_all(m: &mut Model) {
    for f in m.values_mut() {
        f.synced = f.data.len();
        f.maybe = false;
    }
}

/// Runs a seeded workload until it ends or an operation fails. Returns the
/// model as if every attempted op had succeeded, and, if one failed, the
/// model before it (the crash may land on either side).
fn crash_workload(fs: &Fs, seed: u64, steps: usize) -> (Model, Option<Model>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = Model::new();
    let dirs = ["/", "/a/", "/b/"];
    // Extra names (hard links, symlinks) live in /l, which the model does
    // not list: a file keeps its data while /l links it.
    for d in ["/a", "/b", "/l"] {
        if fs.mkdir(d).is_err() {
            return (model.clone(), Some(model));
        }
    }
    let mut next_name = 0;
    for _ in 0..steps {
        let mut next = model.clone();
        let names: Vec<String> = model.keys().cloned().collect();
        let pick = |rng: &mut rand::rngs::StdRng| names[rng.gen_range(0..names.len())].clone();
        let r: Result<()> = match rng.gen_range(0..100) {
            0..=14 => {
                let path = format!("{}f{next_name}", dirs[rng.gen_range(0..3)]);
                next_name += 1;
                // A create is committed by the next commit, not by itself.
                next.insert(
                    path.clone(),
                    FileModel {
                        maybe: true,
                        ..FileModel::default()
                    },
                );
                fs.open(
                    &path,
                    OpenFlags {
                        create: true,
                        exclusive: true,
                        write: true,
                        truncate: false,
                    },
                )
                .map(drop)
            }
            15..=59 if !names.is_empty() => {
                let path = pick(&mut rng);
                let n = if rng.gen_bool(0.7) {
                    rng.gen_range(1..5000)
                } else {
                    rng.gen_range(5000..150_000)
                };
                let data = bytes(&mut rng, n);
                next.get_mut(&path)
                    .expect("picked")
                    .data
                    .extend_from_slice(&data);
                fs.open(
                    &path,
                    OpenFlags {
                        write: true,
                        ..Default::default()
                    },
                )
                .and_then(|f| f.append(&data).map(drop))
            }
            60..=74 if !names.is_empty() => {
                sync_all(&mut next);
                let path = pick(&mut rng);
                fs.open(&path, OpenFlags::read()).and_then(|f| f.fsync())
            }
            75..=82 if !names.is_empty() => {
                let from = pick(&mut rng);
                let to = if rng.gen_bool(0.5) {
                    pick(&mut rng)
                } else {
                    next_name += 1;
                    format!("{}r{next_name}", dirs[rng.gen_range(0..3)])
                };
                sync_all(&mut next);
                if from != to {
                    let f = next.remove(&from).expect("picked");
                    next.insert(to.clone(), f);
                }
                fs.rename(&from, &to)
            }
            83..=89 if !names.is_empty() => {
                let path = pick(&mut rng);
                sync_all(&mut next);
                next.remove(&path);
                fs.unlink(&path)
            }
            90..=91 if !names.is_empty() => {
                // Preallocate past the end: content unchanged.
                let path = pick(&mut rng);
                let from = next[&path].data.len() as u64 + rng.gen_range(0..100_000);
                let len = rng.gen_range(1..300_000);
                fs.open(
                    &path,
                    OpenFlags {
                        write: true,
                        ..Default::default()
                    },
                )
                .and_then(|f| f.fallocate(from, len, true))
            }
            92..=93 if !names.is_empty() => {
                // A write past the end: the gap reads as zeros.
                let path = pick(&mut rng);
                let gap = rng.gen_range(0..200_000);
                let n = rng.gen_range(1..3000);
                let data = bytes(&mut rng, n);
                let f = next.get_mut(&path).expect("picked");
                let at = f.data.len() + gap;
                f.data.resize(at, 0);
                f.data.extend_from_slice(&data);
                fs.open(
                    &path,
                    OpenFlags {
                        write: true,
                        ..Default::default()
                    },
                )
                .and_then(|f| f.pwrite(at as u64, &data))
            }
            94..=95 if !names.is_empty() => {
                let path = pick(&mut rng);
                let f = next.get_mut(&path).expect("picked");
                let keep = rng.gen_range(0..=f.data.len());
                f.data.truncate(keep);
                sync_all(&mut next);
                fs.open(
                    &path,
                    OpenFlags {
                        write: true,
                        ..Default::default()
                    },
                )
                .and_then(|f| {
                    f.truncate(keep as u64)?;
                    f.fsync()
                })
            }
            96 => {
                sync_all(&mut next);
                fs.release_orphans(u64::MAX, &HashSet::new()).map(drop)
            }
            97 if !names.is_empty() => {
                // chmod commits everything queued with it.
                let path = pick(&mut rng);
                let mode = rng.gen_range(0..0o7777);
                sync_all(&mut next);
                next.get_mut(&path).expect("picked").mode = Some(mode);
                let attr = SetAttr {
                    mode: Some(mode),
                    uid: Some(rng.gen_range(0..3)),
                    ..SetAttr::default()
                };
                fs.setattr(&path, &attr).map(drop)
            }
            98 if !names.is_empty() => {
                // A second name in /l (or a symlink to the file), outside
                // the model: the data stays reachable after an unlink.
                let path = pick(&mut rng);
                next_name += 1;
                let extra = format!("/l/x{next_name}");
                sync_all(&mut next);
                if rng.gen_bool(0.5) {
                    fs.link(&path, &extra).map(drop)
                } else {
                    fs.symlink(path.as_bytes(), &extra, &NewAttrs::process(0o777))
                        .map(drop)
                }
            }
            _ => {
                sync_all(&mut next);
                fs.checkpoint()
            }
        };
        match r {
            Ok(()) => model = next,
            Err(FsError::NoSpace) => {
                // Nothing was written for the failed append.
            }
            Err(_) => return (next, Some(model)),
        }
    }
    (model, None)
}

/// Checks a recovered fs against a model; returns why it differs.
fn matches_model(fs: &Fs, model: &Model) -> Result<(), String> {
    let mut found = Vec::new();
    for d in ["/", "/a/", "/b/"] {
        // A crash during the first mkdirs leaves no /a or /b.
        let entries = match fs.readdir(d) {
            Err(FsError::NotFound { .. }) => Vec::new(),
            r => r.map_err(|e| e.to_string())?,
        };
        for e in entries {
            if e.kind == Kind::File {
                found.push(format!("{d}{}", e.name));
            }
        }
    }
    found.sort();
    let want: Vec<String> = model
        .iter()
        .filter(|(name, f)| !f.maybe || found.contains(name))
        .map(|(name, _)| name.clone())
        .collect();
    if found != want {
        return Err(format!("names {found:?}, want {want:?}"));
    }
    for (path, f) in model.iter().filter(|(name, _)| found.contains(name)) {
        if let Some(mode) = f.mode {
            let got = fs.stat(path).map_err(|e| e.to_string())?.mode;
            if got != mode {
                return Err(format!("{path}: mode {got:o}, want {mode:o}"));
            }
        }
        let got = read_all(fs, path);
        if got.len() < f.synced || got.len() > f.data.len() {
            return Err(format!(
                "{path}: {} bytes, want {}..={}",
                got.len(),
                f.synced,
                f.data.len()
            ));
        }
        if got[..] != f.data[..got.len()] {
            let at = (0..got.len()).find(|&i| got[i] != f.data[i]).unwrap_or(0);
            return Err(format!(
                "{path}: content differs from byte {at} of {} (model {}, synced {})",
                got.len(),
                f.data.len(),
                f.synced
            ));
        }
    }
    Ok(())
}

#[test]
fn crash_at_every_write_recovers() {
    let seed = seed_from_env("crash");
    let steps = 200;
    let base = CrashDevice::new(4 << 20);
    mkfs(&base, &small_opts()).unwrap();
    let image = base.image();
    // A clean run counts the writes and checks the model without crashes.
    let dev = Arc::new(CrashDevice::from_image(image.clone(), None, false));
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let (model, failed) = crash_workload(&fs, seed, steps);
    assert!(failed.is_none(), "seed {seed}: clean run failed");
    matches_model(&fs, &model).unwrap_or_else(|e| panic!("seed {seed}: clean run: {e}"));
    drop(fs);
    let total = dev.writes();
    println!("seed {seed}: {total} device writes");
    for tear in [false, true] {
        for k in 0..total {
            let dev = Arc::new(CrashDevice::from_image(image.clone(), Some(k), tear));
            let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
            let (after, before) = crash_workload(&fs, seed, steps);
            drop(fs);
            let img = Arc::new(CrashDevice::from_image(dev.image(), None, false));
            let rep = fsck(&*img).unwrap();
            assert!(
                rep.is_clean(),
                "seed {seed} crash after write {k} tear {tear}: fsck {:#?}",
                rep.errors
            );
            let fs = Fs::mount(img.clone(), Mode::Rw).unwrap_or_else(|e| {
                panic!("seed {seed} crash after write {k} tear {tear}: mount: {e}")
            });
            let ok_after = matches_model(&fs, &after);
            let ok_before = before.as_ref().map(|b| matches_model(&fs, b));
            if ok_after.is_err() && !matches!(ok_before, Some(Ok(()))) {
                panic!("seed {seed} crash after write {k} tear {tear}: after: {ok_after:?}; before: {ok_before:?}");
            }
            // The recovered fs keeps working.
            fs.release_orphans(u64::MAX, &HashSet::new()).unwrap();
            let f = fs.open("/post-crash", OpenFlags::create()).unwrap();
            match f.append(b"alive") {
                Ok(_) | Err(FsError::NoSpace) => {}
                Err(e) => panic!("seed {seed} crash after write {k}: append after recovery: {e}"),
            }
            f.fsync().unwrap();
            drop(f);
            fs.unmount().unwrap();
            assert_fsck_clean(&*img);
        }
    }
}

#[test]
fn ro_mount_follows_rw_and_keeps_unlinked_files_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol");
    let rw_dev = Arc::new(FileDevice::create(&path, 16 << 20).unwrap());
    mkfs(&*rw_dev, &small_opts()).unwrap();
    let rw = Fs::mount(rw_dev.clone(), Mode::Rw).unwrap();
    let ro = Fs::mount(Arc::new(FileDevice::open(&path).unwrap()), Mode::Ro).unwrap();
    assert!(matches!(
        ro.open("/x", OpenFlags::create()),
        Err(FsError::ReadOnly { .. })
    ));
    assert!(matches!(ro.mkdir("/d"), Err(FsError::ReadOnly { .. })));

    let f = rw.open("/x", OpenFlags::create()).unwrap();
    rw.sync().unwrap();
    let sst = vec![7u8; 3 * BS as usize + 123];
    f.pwrite(0, &sst).unwrap();
    // Not yet committed: the RO sees the empty file only.
    let lsn = ro.catch_up().unwrap();
    assert_eq!(ro.stat("/x").unwrap().size, 0);
    f.fsync().unwrap();
    assert!(ro.catch_up().unwrap() > lsn);
    assert_eq!(read_all(&ro, "/x"), sst);
    rw.mkdir("/d").unwrap();
    rw.rename("/x", "/d/y").unwrap();
    ro.catch_up().unwrap();
    assert!(matches!(ro.stat("/x"), Err(FsError::NotFound { .. })));
    assert_eq!(ro.stat("/d/y").unwrap().size, sst.len() as u64);

    // The RO has the file open; the RW unlinks it and writes a lot.
    let held = ro.open("/d/y", OpenFlags::read()).unwrap();
    drop(f);
    rw.unlink("/d/y").unwrap();
    let ro_lsn = ro.catch_up().unwrap();
    assert!(matches!(ro.stat("/d/y"), Err(FsError::NotFound { .. })));
    let ro_open: HashSet<Ino> = ro.open_inodes().into_iter().collect();
    assert_eq!(
        rw.release_orphans(ro_lsn, &ro_open).unwrap().orphans_freed,
        0
    );
    let filler = rw.open("/filler", OpenFlags::create()).unwrap();
    let free = rw.statfs().free_bytes;
    filler.pwrite(0, &vec![9u8; free as usize]).unwrap();
    filler.fsync().unwrap();
    assert!(matches!(filler.append(&[1; 10]), Err(FsError::NoSpace)));
    ro.catch_up().unwrap();
    assert_eq!(
        held.pread(0, sst.len()).unwrap(),
        sst,
        "orphan blocks were not reused"
    );
    assert_eq!(ro.statfs().orphan_files, 1);
    // Closed on the RO: now it can go.
    drop(held);
    let ro_open: HashSet<Ino> = ro.open_inodes().into_iter().collect();
    assert!(ro_open.is_empty());
    assert_eq!(
        rw.release_orphans(ro.catch_up().unwrap(), &ro_open)
            .unwrap()
            .orphans_freed,
        1
    );
    filler.append(&[1; 10]).unwrap();
    filler.fsync().unwrap();
    ro.catch_up().unwrap();
    assert_eq!(ro.stat("/filler").unwrap().size, free + 10);
    assert_eq!(ro.statfs(), rw.statfs());
    drop(filler);
    rw.unmount().unwrap();
    assert_fsck_clean(&*rw_dev);
}

#[test]
fn lagging_ro_reloads_from_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol");
    let rw_dev = Arc::new(FileDevice::create(&path, 16 << 20).unwrap());
    mkfs(&*rw_dev, &small_opts()).unwrap();
    let rw = Fs::mount(rw_dev.clone(), Mode::Rw).unwrap();
    let ro = Fs::mount(Arc::new(FileDevice::open(&path).unwrap()), Mode::Ro).unwrap();
    let start = ro.catch_up().unwrap();
    for i in 0..100 {
        let f = rw.open(&format!("/f{i}"), OpenFlags::create()).unwrap();
        f.append(&[i as u8; 100]).unwrap();
        f.fsync().unwrap();
        if i % 3 == 0 {
            rw.unlink(&format!("/f{i}")).unwrap();
        }
    }
    assert!(
        rw.lsn() - start > 4 * rw.superblock().ring_size,
        "the RW lapped the ring"
    );
    ro.catch_up().unwrap();
    assert_eq!(ro.metrics().ro_reloads_total.get(), 1);
    assert_eq!(ro.readdir("/").unwrap(), rw.readdir("/").unwrap());
    assert_eq!(read_all(&ro, "/f98"), vec![98u8; 100]);
    assert_eq!(ro.statfs(), rw.statfs());
}

#[test]
fn enospc_leaves_a_consistent_fs() {
    let (dev, fs) = new_fs(8 << 20);
    let total = fs.statfs().total_bytes;
    let f = fs.open("/big", OpenFlags::create()).unwrap();
    let chunk = vec![5u8; 100_000];
    let mut written = 0u64;
    loop {
        match f.append(&chunk) {
            Ok(_) => written += chunk.len() as u64,
            Err(FsError::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(written > total - 2 * chunk.len() as u64 && written <= total);
    assert!(matches!(
        fs.open("/other", OpenFlags::create())
            .and_then(|g| g.append(b"x")),
        Err(FsError::NoSpace)
    ));
    f.fsync().unwrap();
    assert_eq!(f.stat().unwrap().size, written);
    assert_eq!(fs.statfs().free_bytes, 0);
    drop(f);
    drop(fs);
    assert_fsck_clean(&*dev);
    let (dev2, fs2) = remount(&dev);
    assert_eq!(fs2.stat("/big").unwrap().size, written);
    fs2.unlink("/big").unwrap();
    assert_eq!(fs2.statfs().orphan_bytes, fs2.statfs().used_bytes);
    fs2.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    assert_eq!(fs2.statfs().free_bytes, total);
    fs2.unmount().unwrap();
    assert_fsck_clean(&*dev2);
}

#[test]
fn growfs_extends_the_allocator() {
    let (dev, fs) = new_fs(8 << 20);
    let before = fs.statfs().total_bytes;
    dev.grow(12 << 20);
    let after = fs.growfs().unwrap();
    assert_eq!(after, before + (4 << 20));
    let f = fs.open("/f", OpenFlags::create()).unwrap();
    f.pwrite(0, &vec![1u8; (before + BS) as usize]).unwrap();
    f.fsync().unwrap();
    drop(f);
    // The fs now needs the larger device.
    let small = Arc::new(CrashDevice::from_image(
        dev.image()[..8 << 20].to_vec(),
        None,
        false,
    ));
    assert!(matches!(
        Fs::mount(small, Mode::Ro),
        Err(FsError::Corrupt { .. })
    ));
    let (dev2, fs2) = remount(&dev);
    assert_eq!(fs2.statfs().total_bytes, after);
    fs2.unmount().unwrap();
    assert_fsck_clean(&*dev2);
}

/// A device whose writes start failing with `Fenced` on demand.
struct FenceDevice {
    inner: CrashDevice,
    fenced: AtomicBool,
}

impl BlockDevice for FenceDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        self.inner.read_at(offset, len)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(DeviceError::Fenced {
                message: "epoch 3 < 4".into(),
            });
        }
        self.inner.write_at(offset, data)
    }
}

#[test]
fn fenced_writer_refuses_further_writes() {
    let dev = Arc::new(FenceDevice {
        inner: CrashDevice::new(8 << 20),
        fenced: AtomicBool::new(false),
    });
    mkfs(&*dev, &small_opts()).unwrap();
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let f = fs.open("/f", OpenFlags::create()).unwrap();
    f.append(b"ok").unwrap();
    f.fsync().unwrap();
    dev.fenced.store(true, Ordering::SeqCst);
    // A small append is queued for the next commit; that commit is
    // where the fence shows.
    assert!(matches!(
        f.append(b"no"),
        Ok(_) | Err(FsError::Fenced { .. })
    ));
    assert!(matches!(f.fsync(), Err(FsError::Fenced { .. })));
    dev.fenced.store(false, Ordering::SeqCst);
    // Sticky, even though the device would accept writes again.
    assert!(matches!(fs.mkdir("/d"), Err(FsError::Fenced { .. })));
    assert!(matches!(f.fsync(), Err(FsError::Fenced { .. })));
    assert_eq!(
        FsError::Fenced {
            message: String::new()
        }
        .errno(),
        libc::EROFS
    );
    // Reads still work, unsynced bytes included.
    assert_eq!(f.pread(0, 10).unwrap(), b"okno");
}

#[test]
fn many_threads_write_different_files() {
    let (dev, fs) = new_fs(64 << 20);
    let threads = 8;
    let writes = 150;
    std::thread::scope(|s| {
        for t in 0..threads {
            let fs = fs.clone();
            s.spawn(move || {
                let f = fs.open(&format!("/t{t}"), OpenFlags::create()).unwrap();
                for i in 0..writes {
                    let rec = vec![(t * 7 + i) as u8; 4096 + t];
                    f.append(&rec).unwrap();
                    if i % 4 == 0 {
                        f.fsync().unwrap();
                    }
                }
                f.fsync().unwrap();
            });
        }
    });
    let check = |fs: &Fs| {
        for t in 0..threads {
            let data = read_all(fs, &format!("/t{t}"));
            assert_eq!(data.len(), writes * (4096 + t));
            for (i, rec) in data.chunks(4096 + t).enumerate() {
                assert!(
                    rec.iter().all(|&b| b == (t * 7 + i) as u8),
                    "thread {t} record {i}"
                );
            }
        }
    };
    check(&fs);
    drop(fs);
    assert_fsck_clean(&*dev);
    let (_, fs2) = remount(&dev);
    check(&fs2);
}

#[test]
fn fsck_reports_a_damaged_checkpoint() {
    let (dev, fs) = new_fs(8 << 20);
    fs.mkdir("/d").unwrap();
    fs.unmount().unwrap();
    assert_fsck_clean(&*dev);
    let sb = Superblock::decode(&dev.read_at(0, 4096).unwrap()).unwrap();
    // unmount checkpointed into slot 1; damage its payload.
    let off = sb.ckpt_off[1] + 4096 + 3;
    let mut b = dev.read_at(off, 1).unwrap();
    b[0] ^= 0xFF;
    dev.write_at(off, &b).unwrap();
    let r = fsck(&*dev).unwrap();
    assert!(!r.is_clean());
    assert!(r.errors[0].contains("crc"), "{:?}", r.errors);
    assert!(matches!(
        Fs::mount(dev, Mode::Ro),
        Err(FsError::Corrupt { .. })
    ));
}

#[test]
fn reused_blocks_never_leak_old_bytes() {
    let (dev, fs) = new_fs(8 << 20);
    // Fill every block with garbage, then free it all.
    let g = fs.open("/garbage", OpenFlags::create()).unwrap();
    let free = fs.statfs().free_bytes;
    g.pwrite(0, &vec![0xEE; free as usize]).unwrap();
    drop(g);
    fs.unlink("/garbage").unwrap();
    fs.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    let f = fs.open("/f", OpenFlags::create()).unwrap();
    // Mid-block write into a fresh block, a hole before it.
    f.pwrite(3 * BS + 100, b"x").unwrap();
    // Fill a hole below the size: the rest of that fresh block is zeros.
    f.pwrite(BS + 7, b"y").unwrap();
    // Preallocated (garbage) blocks that the size later covers.
    f.fallocate(4 * BS, 2 * BS, true).unwrap();
    f.pwrite(5 * BS + 10, b"z").unwrap();
    let data = f.pread(0, 6 * BS as usize).unwrap();
    assert_eq!(data.len() as u64, 5 * BS + 11);
    for (i, &b) in data.iter().enumerate() {
        let want = match i as u64 {
            x if x == 3 * BS + 100 => b'x',
            x if x == BS + 7 => b'y',
            x if x == 5 * BS + 10 => b'z',
            _ => 0,
        };
        assert_eq!(b, want, "byte {i}");
    }
    f.fallocate(8 * BS, 10, false).unwrap();
    f.truncate(9 * BS).unwrap();
    assert!(f
        .pread(5 * BS + 11, 9 * BS as usize)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    f.fsync().unwrap();
    drop(f);
    fs.unmount().unwrap();
    assert_fsck_clean(&*dev);
}

#[test]
fn batch_larger_than_the_ring_commits_as_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol");
    let dev = Arc::new(FileDevice::create(&path, 16 << 20).unwrap());
    mkfs(&*dev, &small_opts()).unwrap();
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let ro = Fs::mount(Arc::new(FileDevice::open(&path).unwrap()), Mode::Ro).unwrap();
    // Queue far more than 64 KiB of records in one batch.
    let seq = {
        let inner = &fs.inner;
        let mut m = inner.meta.write();
        for i in 0..1500 {
            let ino = m.st.next_ino;
            let op = crate::record::Op::Create {
                parent: ROOT_INO,
                name: format!("file-with-a-longish-name-{i}"),
                ino,
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                target: Vec::new(),
                time: 1,
            };
            inner.push(&mut m, op, "/").unwrap();
        }
        m.op_seq
    };
    fs.inner.commit(seq, false).unwrap();
    let h = crate::journal::read_header(&*dev, fs.superblock()).unwrap();
    assert_eq!(h.start, h.end, "committed by a checkpoint alone");
    ro.catch_up().unwrap();
    assert_eq!(ro.readdir("/").unwrap().len(), 1500);
    drop(fs);
    let fs2 = Fs::mount(dev.clone(), Mode::Ro).unwrap();
    assert_eq!(fs2.readdir("/").unwrap().len(), 1500);
    assert_fsck_clean(&*dev);
}

#[test]
fn full_checkpoint_slot_turns_the_mount_read_only() {
    let dev = Arc::new(CrashDevice::new(8 << 20));
    let opts = MkfsOptions {
        checkpoint_size: Some(16 * KIB),
        ..small_opts()
    };
    mkfs(&*dev, &opts).unwrap();
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let mut made = 0;
    let err = loop {
        match fs.mkdir(&format!("/directory-number-{made:06}")) {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("no space"), "{err}");
    assert!(matches!(fs.mkdir("/more"), Err(FsError::ReadOnly { .. })));
    drop(fs);
    // Everything acknowledged is there; the failed batch is not.
    let fs = Fs::mount(dev.clone(), Mode::Ro).unwrap();
    assert_eq!(fs.readdir("/").unwrap().len(), made);
    assert_fsck_clean(&*dev);
}

#[test]
fn ro_catches_up_while_rw_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol");
    let dev = Arc::new(FileDevice::create(&path, 16 << 20).unwrap());
    mkfs(&*dev, &small_opts()).unwrap();
    let rw = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let log = rw.open("/log", OpenFlags::create()).unwrap();
    rw.sync().unwrap();
    let ro = Fs::mount(Arc::new(FileDevice::open(&path).unwrap()), Mode::Ro).unwrap();
    let done = AtomicBool::new(false);
    let records = 400u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..records {
                log.append(&[(i % 251) as u8; 100]).unwrap();
                log.fsync().unwrap();
                if i % 7 == 0 {
                    let p = format!("/tmp{}", i % 5);
                    rw.open(&p, OpenFlags::create())
                        .unwrap()
                        .append(&[1; 300])
                        .unwrap();
                    rw.unlink(&p).unwrap();
                    rw.release_orphans(u64::MAX, &HashSet::new()).unwrap();
                }
            }
            done.store(true, Ordering::SeqCst);
        });
        s.spawn(|| {
            let mut last = 0;
            let mut rounds = 0;
            while !done.load(Ordering::SeqCst) || rounds == 0 {
                let lsn = ro.catch_up().unwrap();
                assert!(lsn >= last, "applied lsn went back");
                last = lsn;
                let data = read_all(&ro, "/log");
                assert_eq!(data.len() % 100, 0, "a half-applied append is visible");
                for (i, rec) in data.chunks(100).enumerate() {
                    assert!(rec.iter().all(|&b| b == (i % 251) as u8), "record {i}");
                }
                rounds += 1;
            }
        });
    });
    ro.catch_up().unwrap();
    assert_eq!(ro.stat("/log").unwrap().size, records * 100);
    assert_eq!(ro.statfs(), rw.statfs());
}

/// The WAL pattern costs two device writes, both in chunk 0 (so one
/// copyset and one raft leader): the header and the ring copy, which
/// carries the appended bytes. They go home only at checkpoints.
#[test]
fn wal_append_and_fsync_costs_two_device_writes_in_chunk_0() {
    let dev = Arc::new(CrashDevice::new(32 << 20));
    let opts = MkfsOptions {
        block_size: Some(BS),
        journal_size: Some(1 << 20),
        checkpoint_size: Some(1 << 20),
    };
    mkfs(&*dev, &opts).unwrap();
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let data_off = fs.superblock().data_off;
    let wal = fs.open("/000001.log", OpenFlags::create()).unwrap();
    wal.fallocate(0, 8 * BS, true).unwrap();
    wal.fsync().unwrap();
    let rec = vec![0x42u8; 4096];
    let mut homed = 0;
    for i in 0..150 {
        let before = dev.writes() as usize;
        let ckpts = fs.metrics().checkpoints_total.get();
        wal.append(&rec).unwrap();
        wal.fsync().unwrap();
        let log = dev.write_log()[before..].to_vec();
        if fs.metrics().checkpoints_total.get() == ckpts {
            // (Three when the ring copy wraps at the ring's end.)
            let wraps = usize::from(log.iter().any(|&(o, _)| o == 3 * 4096));
            assert_eq!(
                log.len(),
                2 + wraps,
                "append {i}: transaction + header: {log:?}"
            );
            assert!(
                log.iter().all(|&(o, l)| o + l as u64 <= data_off),
                "append {i}: only metadata (chunk 0) is written: {log:?}"
            );
        } else {
            // A checkpoint: the appended bytes go home (one merged write,
            // they are contiguous), then slot and header.
            assert_eq!(log.len(), 2 + 3, "append {i} with a checkpoint: {log:?}");
            homed += 1;
        }
    }
    assert!(homed >= 1, "150 appends of 8 KiB of ring each fill 1 MiB");
    assert!(fs.metrics().homed_bytes_total.get() > 0);
    // An fsync with nothing queued writes nothing.
    let before = dev.writes();
    wal.fsync().unwrap();
    assert_eq!(dev.writes(), before);
    // Everything reads back, on this mount and after a remount.
    let want: Vec<u8> = rec.repeat(150);
    assert_eq!(wal.pread(0, 1 << 20).unwrap(), want);
    drop(wal);
    drop(fs);
    let (_, fs) = remount(&dev);
    assert_eq!(read_all(&fs, "/000001.log"), want);
}

#[test]
fn catch_up_changes_names_what_changed() {
    let (dev, rw) = new_fs(16 << 20);
    rw.mkdir("/d").unwrap();
    let a = rw.open("/d/a", OpenFlags::create()).unwrap();
    a.append(b"hello").unwrap();
    a.fsync().unwrap();
    let ro = Fs::mount(dev.clone(), Mode::Ro).unwrap();
    let d_ino = ro.stat("/d").unwrap().ino;
    let a_ino = ro.stat("/d/a").unwrap().ino;
    assert!(ro.catch_up_changes().unwrap().is_empty());

    a.append(b" world").unwrap();
    a.fsync().unwrap();
    let ch = ro.catch_up_changes().unwrap();
    assert_eq!(ch.lsn, rw.lsn());
    assert!(!ch.reloaded);
    assert_eq!(ch.inodes, vec![a_ino]);
    assert!(ch.entries.is_empty());

    // A created-then-renamed file in one batch, and a replaced name.
    rw.open("/d/b", OpenFlags::create()).unwrap();
    rw.rename("/d/b", "/d/a").unwrap();
    let b_ino = rw.stat("/d/a").unwrap().ino;
    let ch = ro.catch_up_changes().unwrap();
    assert!(ch.inodes.contains(&d_ino), "{ch:?}");
    assert!(ch.inodes.contains(&a_ino), "replaced inode: {ch:?}");
    assert!(ch.inodes.contains(&b_ino), "{ch:?}");
    assert!(ch.entries.contains(&(d_ino, "a".to_string())), "{ch:?}");
    assert!(ch.entries.contains(&(d_ino, "b".to_string())), "{ch:?}");
    assert_eq!(ro.stat("/d/a").unwrap().ino, b_ino);

    rw.unlink("/d/a").unwrap();
    let ch = ro.catch_up_changes().unwrap();
    assert_eq!(ch.entries, vec![(d_ino, "a".to_string())]);
    assert_eq!(ch.inodes, {
        let mut v = vec![d_ino, b_ino];
        v.sort();
        v
    });
}

#[test]
fn commit_hook_sees_every_committed_lsn() {
    let (_dev, rw) = new_fs(16 << 20);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    rw.set_commit_hook(Some(Arc::new(move |lsn| s2.lock().push(lsn))));
    rw.mkdir("/x").unwrap();
    let after_mkdir = rw.lsn();
    let f = rw.open("/x/f", OpenFlags::create()).unwrap();
    f.append(&[1; 4096]).unwrap();
    f.fsync().unwrap();
    // An fsync with nothing queued commits nothing and pushes nothing.
    f.fsync().unwrap();
    let v = seen.lock().clone();
    assert_eq!(v.first(), Some(&after_mkdir));
    assert_eq!(v.last(), Some(&rw.lsn()));
    // The create rides with the fsync's commit.
    assert_eq!(v.len(), 2, "mkdir, create + fsync: {v:?}");
    assert!(v.windows(2).all(|w| w[0] < w[1]));
    rw.set_commit_hook(None);
    rw.mkdir("/y").unwrap();
    assert_eq!(seen.lock().len(), 2);
}

#[test]
fn fence_refuses_writes_but_keeps_reads() {
    let (dev, rw) = new_fs(16 << 20);
    let f = rw.open("/f", OpenFlags::create()).unwrap();
    f.append(b"kept").unwrap();
    f.fsync().unwrap();
    assert!(!rw.is_read_only());
    rw.fence("lease lost");
    assert!(rw.is_read_only());
    let err = f.append(b"x").unwrap_err();
    assert!(
        matches!(&err, FsError::Fenced { message } if message.contains("lease lost")),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EROFS);
    assert!(matches!(rw.mkdir("/z"), Err(FsError::Fenced { .. })));
    assert_eq!(f.pread(0, 10).unwrap(), b"kept");
    drop(f);
    drop(rw);
    let (_d, again) = remount(&dev);
    assert_eq!(read_all(&again, "/f"), b"kept");
    assert!(again.stat("/z").is_err());
}

/// Counts `write_many` batches and lone writes on top of a `CrashDevice`.
struct BatchCounter {
    inner: CrashDevice,
    batches: AtomicU64,
    lone: AtomicU64,
    /// (offset, len) of the writes of the last batch.
    last: parking_lot::Mutex<Vec<(u64, usize)>>,
}

impl BlockDevice for BatchCounter {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: usize) -> std::result::Result<Vec<u8>, DeviceError> {
        self.inner.read_at(offset, len)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::result::Result<(), DeviceError> {
        self.lone.fetch_add(1, Ordering::SeqCst);
        self.inner.write_at(offset, data)
    }
    fn write_many(&self, writes: &[(u64, &[u8])]) -> std::result::Result<(), DeviceError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        *self.last.lock() = writes.iter().map(|&(o, d)| (o, d.len())).collect();
        for &(o, d) in writes {
            self.inner.write_at(o, d)?;
        }
        Ok(())
    }
}

#[test]
fn wal_append_and_fsync_is_one_batch_of_writes() {
    let dev = Arc::new(BatchCounter {
        inner: CrashDevice::new(16 << 20),
        batches: AtomicU64::new(0),
        lone: AtomicU64::new(0),
        last: parking_lot::Mutex::new(Vec::new()),
    });
    mkfs(&*dev, &small_opts()).unwrap();
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let data_off = fs.superblock().data_off;
    let wal = fs.open("/000001.log", OpenFlags::create()).unwrap();
    wal.fallocate(0, 4 * BS, true).unwrap();
    wal.fsync().unwrap();
    for i in 0..20u64 {
        let (b, l) = (
            dev.batches.load(Ordering::SeqCst),
            dev.lone.load(Ordering::SeqCst),
        );
        let ckpts = fs.metrics().checkpoints_total.get();
        wal.append(&[i as u8; 1000]).unwrap();
        assert_eq!(
            dev.batches.load(Ordering::SeqCst),
            b,
            "append {i} waits for nothing"
        );
        wal.fsync().unwrap();
        // Nothing else, but for a checkpoint now and then (a batch that
        // writes the journaled bytes home, then slot + header).
        let ckpts = fs.metrics().checkpoints_total.get() - ckpts;
        assert_eq!(
            dev.batches.load(Ordering::SeqCst) - b,
            1 + ckpts,
            "fsync {i}: one batch"
        );
        assert_eq!(dev.lone.load(Ordering::SeqCst) - l, 2 * ckpts, "fsync {i}");
        if ckpts == 0 {
            // The batch: header and ring copy, both in chunk 0.
            let last = dev.last.lock().clone();
            let wraps = usize::from(last.iter().any(|&(o, _)| o == 3 * 4096));
            assert_eq!(last.len(), 2 + wraps, "fsync {i}: {last:?}");
            assert!(
                last.iter().all(|&(o, l)| o + l as u64 <= data_off),
                "{last:?}"
            );
        }
    }
    // The appended bytes are readable before and after the commit.
    wal.append(b"tail").unwrap();
    let all = wal.pread(0, 1 << 20).unwrap();
    assert_eq!(all.len(), 20 * 1000 + 4);
    assert_eq!(&all[19 * 1000..19 * 1000 + 3], &[19, 19, 19]);
    assert_eq!(&all[20_000..], b"tail");
    // A create + write + fsync is one batch too.
    let b = dev.batches.load(Ordering::SeqCst);
    let f = fs.open("/sst", OpenFlags::create()).unwrap();
    f.append(&[5; 4096]).unwrap();
    let ckpts = fs.metrics().checkpoints_total.get();
    f.fsync().unwrap();
    let ckpts = fs.metrics().checkpoints_total.get() - ckpts;
    assert_eq!(dev.batches.load(Ordering::SeqCst) - b, 1 + ckpts);
    drop((wal, f));
    fs.unmount().unwrap();
    assert_fsck_clean(&dev.inner);
}

/// Crashes inside the one batch of an append + fsync (after its header,
/// after its ring copy, after its data, with and without a torn write):
/// the transaction is either whole (its data landed) or dropped, on
/// every mount, and the file system goes on working.
#[test]
fn a_commit_whose_data_did_not_land_is_dropped() {
    let (dev, fs) = new_fs(16 << 20);
    let f = fs.open("/wal", OpenFlags::create()).unwrap();
    f.fallocate(0, 2 * BS, true).unwrap();
    f.append(b"first").unwrap();
    f.fsync().unwrap();
    drop(f);
    fs.unmount().unwrap();
    let base = dev.image();
    let rec = vec![0x5Au8; 3000];
    let mut dropped = 0;
    for k in 0..4u64 {
        for tear in [false, true] {
            let dev = Arc::new(CrashDevice::from_image(base.clone(), Some(k), tear));
            let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
            let f = fs.open("/wal", OpenFlags::create()).unwrap();
            f.append(&rec).unwrap();
            let synced = f.fsync().is_ok();
            let log = dev.write_log();
            drop(f);
            drop(fs);
            let img = dev.image();
            let data_landed = log.len() as u64 >= 3 && k >= 3;
            for mode in [Mode::Ro, Mode::Rw] {
                let d = Arc::new(CrashDevice::from_image(img.clone(), None, false));
                let fs = Fs::mount(d.clone(), mode).unwrap();
                let got = read_all(&fs, "/wal");
                if synced || data_landed {
                    assert_eq!(got.len(), 5 + rec.len(), "k {k} tear {tear} {mode:?}");
                    assert_eq!(&got[5..], &rec[..]);
                } else {
                    assert_eq!(got, b"first", "k {k} tear {tear} {mode:?}: {log:?}");
                }
                if mode == Mode::Rw {
                    if got.len() == 5 {
                        dropped += 1;
                    }
                    // Writing goes on from the surviving state.
                    let f = fs.open("/wal", OpenFlags::create()).unwrap();
                    f.append(b"again").unwrap();
                    f.fsync().unwrap();
                    drop(f);
                    fs.unmount().unwrap();
                    assert_fsck_clean(&*d);
                    let fs = Fs::mount(d, Mode::Ro).unwrap();
                    assert!(read_all(&fs, "/wal").ends_with(b"again"));
                }
            }
        }
    }
    assert!(
        dropped >= 4,
        "the header-first crashes must drop the transaction"
    );
}

/// Overwriting bytes that the newest transaction guards seals it first, so
/// a crash before the next header cannot make it look torn.
#[test]
fn overwriting_guarded_bytes_seals_the_newest_transaction() {
    let blank = CrashDevice::new(16 << 20);
    mkfs(&blank, &small_opts()).unwrap();
    let base = blank.image();
    // The writes of mount + create + append + fsync (one guarded commit).
    let setup = |dev: &Arc<CrashDevice>| -> Fs {
        let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
        let f = fs.open("/f", OpenFlags::create()).unwrap();
        // Queued, but too much to journal: guarded.
        f.append(&[1u8; 40 << 10]).unwrap();
        f.append(&[1u8; 40 << 10]).unwrap();
        f.fsync().unwrap();
        assert_eq!(fs.metrics().guarded_commits_total.get(), 1);
        fs
    };
    let dry = Arc::new(CrashDevice::from_image(base.clone(), None, false));
    drop(setup(&dry));
    let n = {
        let d = Arc::new(CrashDevice::from_image(base.clone(), None, false));
        let fs = setup(&d);
        let n = d.writes();
        drop(fs);
        n
    };
    let mut sealed = false;
    for k in 0..4 {
        let dev = Arc::new(CrashDevice::from_image(base.clone(), Some(n + k), false));
        let fs = setup(&dev);
        let f = fs.open("/f", OpenFlags::read()).unwrap();
        drop(f);
        let f = fs
            .open(
                "/f",
                OpenFlags {
                    write: true,
                    ..Default::default()
                },
            )
            .unwrap();
        // Large enough to go straight to the device.
        let _ = f.pwrite(0, &vec![2u8; 200 << 10]);
        sealed |= fs.metrics().seals_total.get() > 0;
        drop(f);
        drop(fs);
        let fs = Fs::mount(
            Arc::new(CrashDevice::from_image(dev.image(), None, false)),
            Mode::Ro,
        )
        .unwrap();
        // The fsync'd file survives whatever landed after it.
        let size = fs.stat("/f").map(|s| s.size);
        let size = size.unwrap_or_else(|e| panic!("crash after {k} more writes: {e}"));
        assert!(
            size == 80 << 10 || size == 200 << 10,
            "crash after {k}: size {size}"
        );
    }
    assert!(sealed, "the overwrite never sealed the guarded transaction");
}

fn attrs(mode: u32, uid: u32, gid: u32) -> NewAttrs {
    NewAttrs { mode, uid, gid }
}

/// Everything `stat` shows of each path, for before/after comparisons.
fn stats(fs: &Fs, paths: &[&str]) -> Vec<Stat> {
    paths.iter().map(|p| fs.stat(p).unwrap()).collect()
}

#[test]
fn posix_metadata_survives_replay_checkpoint_and_ro_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol");
    let dev = Arc::new(FileDevice::create(&img, 16 << 20).unwrap());
    mkfs(&*dev, &small_opts()).unwrap();
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let ro = Fs::mount(Arc::new(FileDevice::open(&img).unwrap()), Mode::Ro).unwrap();
    assert_eq!(fs.stat("/").unwrap().nlink, 2);

    // Owners and modes from the caller; a set-group-ID directory passes
    // its group on, and the bit on to subdirectories.
    fs.mkdir_as("/d", &attrs(0o2775, 1000, 50)).unwrap();
    fs.mkdir_as("/d/sub", &attrs(0o755, 1001, 1001)).unwrap();
    let sub = fs.stat("/d/sub").unwrap();
    assert_eq!((sub.uid, sub.gid, sub.mode), (1001, 50, 0o2755));
    let f = fs
        .open_as("/d/f", OpenFlags::create(), &attrs(0o640, 1001, 1001))
        .unwrap();
    f.pwrite(0, b"data").unwrap();
    f.fsync().unwrap();
    let st = f.stat().unwrap();
    assert_eq!(
        (st.kind, st.mode, st.uid, st.gid),
        (Kind::File, 0o640, 1001, 50)
    );
    assert_eq!(fs.stat("/d").unwrap().nlink, 3, "2 + one subdirectory");
    assert_eq!(fs.stat("/").unwrap().nlink, 3);

    // Special files, a symlink, a hard link.
    let fifo = fs
        .mknod("/fifo", Kind::Fifo, &attrs(0o600, 7, 8), 99)
        .unwrap();
    assert_eq!((fifo.kind, fifo.rdev, fifo.size), (Kind::Fifo, 0, 0));
    let chr = fs
        .mknod("/chr", Kind::CharDev, &attrs(0o660, 0, 0), 0x0103)
        .unwrap();
    assert_eq!(chr.rdev, 0x0103);
    fs.mknod("/blk", Kind::BlockDev, &attrs(0o660, 0, 6), 0x0801)
        .unwrap();
    fs.mknod("/sock", Kind::Socket, &attrs(0o755, 0, 0), 0)
        .unwrap();
    assert!(matches!(
        fs.mknod("/x", Kind::Dir, &attrs(0o755, 0, 0), 0),
        Err(FsError::InvalidArgument { .. })
    ));
    let ln = fs.symlink(b"d/f", "/ln", &attrs(0o644, 5, 5)).unwrap();
    assert_eq!((ln.kind, ln.size, ln.mode), (Kind::Symlink, 3, 0o777));
    assert_eq!(fs.readlink("/ln").unwrap(), b"d/f");
    assert!(matches!(
        fs.readlink("/d/f"),
        Err(FsError::WrongKind { .. })
    ));
    assert!(matches!(
        fs.symlink(&[b'a'; SYMLINK_MAX + 1], "/long", &attrs(0o777, 0, 0)),
        Err(FsError::NameTooLong { .. })
    ));
    assert!(matches!(
        fs.open("/fifo", OpenFlags::read()),
        Err(FsError::WrongKind { .. })
    ));
    let before_link = fs.stat("/d/f").unwrap();
    let hl = fs.link("/d/f", "/hard").unwrap();
    assert_eq!((hl.ino, hl.nlink), (st.ino, 2));
    assert!(hl.ctime_ns >= before_link.ctime_ns);
    assert!(matches!(
        fs.link("/d", "/d2"),
        Err(FsError::InvalidArgument { .. })
    ));
    assert!(matches!(
        fs.link("/d/f", "/fifo"),
        Err(FsError::Exists { .. })
    ));

    // chmod / chown / utimens.
    let t0 = fs.stat("/hard").unwrap();
    let st = fs
        .setattr(
            "/hard",
            &SetAttr {
                mode: Some(0o4751),
                uid: Some(42),
                gid: Some(43),
                atime: Some(1_000_000_007),
                mtime: Some(2_000_000_009),
            },
        )
        .unwrap();
    assert_eq!((st.mode, st.uid, st.gid), (0o4751, 42, 43));
    assert_eq!((st.atime_ns, st.mtime_ns), (1_000_000_007, 2_000_000_009));
    assert!(st.ctime_ns >= t0.ctime_ns, "chmod moves ctime");
    // UTIME_OMIT: fields not named stay.
    let st2 = fs
        .setattr_inode(
            st.ino,
            &SetAttr {
                atime: Some(5),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(
        (st2.atime_ns, st2.mtime_ns, st2.mode),
        (5, 2_000_000_009, 0o4751)
    );

    // Writes move mtime and ctime.
    let w0 = fs.stat("/d/f").unwrap();
    f.pwrite(10, b"more").unwrap();
    let w1 = f.stat().unwrap();
    assert!(w1.mtime_ns > 2_000_000_009 && w1.ctime_ns >= w0.ctime_ns);
    f.fsync().unwrap();

    let paths = [
        "/", "/d", "/d/sub", "/d/f", "/hard", "/fifo", "/chr", "/blk", "/sock", "/ln",
    ];
    let want = stats(&fs, &paths);
    // RO catch-up applies every new record type.
    ro.catch_up().unwrap();
    assert_eq!(stats(&ro, &paths), want);
    assert_eq!(ro.readlink("/ln").unwrap(), b"d/f");
    // Journal replay.
    drop(f);
    fs.sync().unwrap();
    drop(fs);
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    assert_eq!(stats(&fs, &paths), want);
    assert_fsck_clean(&*dev);
    // Checkpoint round trip.
    fs.checkpoint().unwrap();
    drop(fs);
    let r = assert_fsck_clean(&*dev);
    assert_eq!(
        r.files, 6,
        "f (one inode, two names), fifo, chr, blk, sock, ln"
    );
    let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    assert_eq!(stats(&fs, &paths), want);
    // An RO that lagged past the checkpoint reloads and sees it all too.
    ro.catch_up().unwrap();
    assert_eq!(stats(&ro, &paths), want);
}

#[test]
fn hard_links_free_the_inode_only_after_the_last_name_and_handle() {
    let (dev, fs) = new_fs(16 << 20);
    fs.mkdir("/a").unwrap();
    fs.mkdir("/b").unwrap();
    let f = fs.open("/a/f", OpenFlags::create()).unwrap();
    f.pwrite(0, &vec![7u8; 3 * BS as usize]).unwrap();
    f.fsync().unwrap();
    drop(f);
    fs.link("/a/f", "/b/g").unwrap();
    fs.link("/b/g", "/h").unwrap();
    assert_eq!(fs.stat("/h").unwrap().nlink, 3);
    let used = fs.statfs().used_bytes;
    // Unlinking names keeps the inode while one is left.
    fs.unlink("/a/f").unwrap();
    fs.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    assert_eq!(fs.stat("/b/g").unwrap().nlink, 2);
    assert_eq!(read_all(&fs, "/h"), vec![7u8; 3 * BS as usize]);
    assert_eq!(fs.statfs().orphan_files, 0);
    // Renaming one name onto another name of the same inode does nothing.
    fs.rename("/h", "/b/g").unwrap();
    assert_eq!(fs.stat("/h").unwrap().nlink, 2);
    // Replacing a name by rename drops one link.
    fs.mknod("/n", Kind::Fifo, &attrs(0o644, 0, 0), 0).unwrap();
    fs.rename("/n", "/h").unwrap();
    assert_eq!(fs.stat("/b/g").unwrap().nlink, 1);
    assert_eq!(fs.stat("/h").unwrap().kind, Kind::Fifo);
    // The last name goes while a handle is open: orphan, pinned.
    let keep = fs.open("/b/g", OpenFlags::read()).unwrap();
    fs.unlink("/b/g").unwrap();
    let st = keep.stat().unwrap();
    assert_eq!(st.nlink, 0);
    assert!(matches!(
        fs.link_inode(st.ino, "/back"),
        Err(FsError::NotFound { .. })
    ));
    let rel = fs.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    assert_eq!(rel.orphans_freed, 0);
    assert_eq!(fs.statfs().used_bytes, used);
    assert_fsck_clean(&*dev);
    drop(keep);
    let rel = fs.release_orphans(u64::MAX, &HashSet::new()).unwrap();
    assert_eq!((rel.orphans_freed, rel.blocks_freed), (1, 3));
    assert_eq!(fs.statfs().used_bytes, used - 3 * BS);
    let (d, fs2) = remount(&dev);
    drop(fs2);
    assert_fsck_clean(&*d);
}

#[test]
fn directory_link_counts_follow_mkdir_rmdir_and_rename() {
    let (dev, fs) = new_fs(16 << 20);
    for d in ["/p", "/q", "/p/a", "/p/b", "/q/c"] {
        fs.mkdir(d).unwrap();
    }
    let n = |p: &str| fs.stat(p).unwrap().nlink;
    assert_eq!((n("/"), n("/p"), n("/q"), n("/p/a")), (4, 4, 3, 2));
    // Across parents: the moved directory's `..` changes.
    fs.rename("/p/a", "/q/a").unwrap();
    assert_eq!((n("/p"), n("/q")), (3, 4));
    // Over an empty directory: it is deleted.
    fs.rename("/p/b", "/q/c").unwrap();
    assert_eq!((n("/p"), n("/q")), (2, 4));
    assert!(matches!(fs.stat("/p/b"), Err(FsError::NotFound { .. })));
    fs.mkdir("/q/c/x").unwrap();
    assert!(matches!(
        fs.rename("/q/a", "/q/c"),
        Err(FsError::NotEmpty { .. })
    ));
    fs.mknod("/q/s", Kind::Socket, &attrs(0o644, 0, 0), 0)
        .unwrap();
    assert!(matches!(
        fs.rename("/q/s", "/q/a"),
        Err(FsError::IsDir { .. })
    ));
    assert!(matches!(
        fs.rename("/q/a", "/q/s"),
        Err(FsError::NotDir { .. })
    ));
    assert!(matches!(fs.rmdir("/q/s"), Err(FsError::NotDir { .. })));
    assert!(matches!(fs.unlink("/q/a"), Err(FsError::IsDir { .. })));
    fs.rmdir("/q/c/x").unwrap();
    assert_eq!(n("/q/c"), 2);
    let (d, fs2) = remount(&dev);
    assert_eq!(fs2.stat("/q").unwrap().nlink, 4);
    drop(fs2);
    assert_fsck_clean(&*d);
}

#[test]
fn crash_during_posix_operations_recovers_a_prefix() {
    // Each step commits before returning; a crash at any device write
    // must leave exactly the state after some prefix of the steps.
    let base = CrashDevice::new(4 << 20);
    mkfs(&base, &small_opts()).unwrap();
    let image = base.image();
    let run = |fs: &Fs, upto: &mut usize| -> Result<()> {
        let a = attrs(0o640, 9, 9);
        fs.open_as("/f", OpenFlags::create(), &a)?.fsync()?;
        *upto = 1;
        fs.link("/f", "/g")?;
        *upto = 2;
        fs.setattr(
            "/g",
            &SetAttr {
                mode: Some(0o600),
                mtime: Some(77),
                ..SetAttr::default()
            },
        )?;
        *upto = 3;
        fs.symlink(b"/f", "/s", &a)?;
        *upto = 4;
        fs.mknod("/c", Kind::CharDev, &a, 5)?;
        *upto = 5;
        fs.unlink("/f")?;
        *upto = 6;
        Ok(())
    };
    let states = |fs: &Fs| -> Vec<Option<(Kind, u32, u32, u64)>> {
        ["/f", "/g", "/s", "/c"]
            .iter()
            .map(|p| {
                fs.stat(p)
                    .ok()
                    .map(|s| (s.kind, s.mode, s.nlink, s.mtime_ns.min(78)))
            })
            .collect()
    };
    // Expected state after each prefix, from a clean run.
    let mut want = Vec::new();
    {
        let dev = Arc::new(CrashDevice::from_image(image.clone(), None, false));
        let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
        want.push(states(&fs));
        let (a, b) = (attrs(0o640, 9, 9), &fs);
        b.open_as("/f", OpenFlags::create(), &a)
            .unwrap()
            .fsync()
            .unwrap();
        want.push(states(b));
        b.link("/f", "/g").unwrap();
        want.push(states(b));
        b.setattr(
            "/g",
            &SetAttr {
                mode: Some(0o600),
                mtime: Some(77),
                ..SetAttr::default()
            },
        )
        .unwrap();
        want.push(states(b));
        b.symlink(b"/f", "/s", &a).unwrap();
        want.push(states(b));
        b.mknod("/c", Kind::CharDev, &a, 5).unwrap();
        want.push(states(b));
        b.unlink("/f").unwrap();
        want.push(states(b));
    }
    let total = {
        let dev = Arc::new(CrashDevice::from_image(image.clone(), None, false));
        let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
        let mut upto = 0;
        run(&fs, &mut upto).unwrap();
        drop(fs);
        dev.writes()
    };
    for tear in [false, true] {
        for k in 0..total {
            let dev = Arc::new(CrashDevice::from_image(image.clone(), Some(k), tear));
            let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
            let mut upto = 0;
            let _ = run(&fs, &mut upto);
            drop(fs);
            let img = Arc::new(CrashDevice::from_image(dev.image(), None, false));
            assert_fsck_clean(&*img);
            let fs = Fs::mount(img.clone(), Mode::Rw).unwrap();
            let got = states(&fs);
            // Acknowledged steps survive; at most the failing one is extra.
            let ok = want[upto..].iter().take(2).any(|w| *w == got);
            assert!(
                ok,
                "crash after write {k} tear {tear}: step {upto}: {got:?}"
            );
        }
    }
}

/// One step of the journaled-data workload; each is followed by an fsync.
#[derive(Clone)]
enum JStep {
    Append(&'static str, Vec<u8>),
    Pwrite(&'static str, u64, Vec<u8>),
    /// Several writes, one fsync.
    PwriteMany(&'static str, Vec<(u64, Vec<u8>)>),
    Truncate(&'static str, u64),
    Unlink(&'static str),
    Release,
}

type Files = BTreeMap<String, Vec<u8>>;

impl std::fmt::Debug for JStep {
    /// Names and sizes only: the bytes would drown a failure message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JStep::Append(p, d) => write!(f, "append {p} {} bytes", d.len()),
            JStep::Pwrite(p, o, d) => write!(f, "pwrite {p} at {o} {} bytes", d.len()),
            JStep::PwriteMany(p, w) => write!(f, "{} pwrites {p}", w.len()),
            JStep::Truncate(p, s) => write!(f, "truncate {p} to {s}"),
            JStep::Unlink(p) => write!(f, "unlink {p}"),
            JStep::Release => write!(f, "release orphans"),
        }
    }
}

fn jd_steps() -> Vec<JStep> {
    let pat = |seed: u8, n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
            .collect()
    };
    let mut v = Vec::new();
    for i in 0..6 {
        v.push(JStep::Append("/wal", pat(i, 3000)));
    }
    // Overwrites bytes that are journaled but not yet home.
    v.push(JStep::Pwrite("/wal", 1000, pat(50, 700)));
    // Queued, but too much for the ring: home directly, over journaled
    // bytes not yet home (the commit's `DataCrc` tells replay).
    v.push(JStep::PwriteMany(
        "/wal",
        vec![(500, pat(57, 40_000)), (40_500, pat(58, 30_000))],
    ));
    v.push(JStep::Append("/b", pat(51, 5000)));
    // Large: straight to the device over journaled bytes (homed first).
    v.push(JStep::Pwrite("/wal", 0, pat(52, 100 << 10)));
    v.push(JStep::Append("/wal", pat(53, 2000)));
    v.push(JStep::Append("/wal", pat(54, 2000)));
    // Cut journaled bytes off, then grow over them: zeros, not them.
    v.push(JStep::Truncate("/wal", 4000));
    v.push(JStep::Truncate("/wal", 150_000));
    v.push(JStep::Append("/wal", pat(55, 1500)));
    // A file with journaled bytes deleted; its blocks reused at once.
    v.push(JStep::Unlink("/b"));
    v.push(JStep::Release);
    v.push(JStep::Pwrite("/c", 0, pat(56, 70 << 10)));
    for i in 0..3 {
        v.push(JStep::Append("/c", pat(60 + i, 100)));
    }
    v.push(JStep::Pwrite("/c", 10, pat(70, 50)));
    v
}

/// Applies `s` to the model.
fn jd_model(files: &mut Files, s: &JStep) {
    match s {
        JStep::Append(p, d) => files.entry(p.to_string()).or_default().extend(d),
        JStep::Pwrite(p, off, d) => {
            let f = files.entry(p.to_string()).or_default();
            let end = *off as usize + d.len();
            if f.len() < end {
                f.resize(end, 0);
            }
            f[*off as usize..end].copy_from_slice(d);
        }
        JStep::PwriteMany(p, w) => {
            for (off, d) in w {
                jd_model(files, &JStep::Pwrite(p, *off, d.clone()));
            }
        }
        JStep::Truncate(p, size) => files
            .entry(p.to_string())
            .or_default()
            .resize(*size as usize, 0),
        JStep::Unlink(p) => {
            files.remove(*p);
        }
        JStep::Release => {}
    }
}

fn jd_run(fs: &Fs, s: &JStep) -> Result<()> {
    match s {
        JStep::Append(p, d) => {
            let f = fs.open(p, OpenFlags::create())?;
            f.append(d)?;
            f.fsync()
        }
        JStep::Pwrite(p, off, d) => {
            let f = fs.open(p, OpenFlags::create())?;
            f.pwrite(*off, d)?;
            f.fsync()
        }
        JStep::PwriteMany(p, w) => {
            let f = fs.open(p, OpenFlags::create())?;
            for (off, d) in w {
                f.pwrite(*off, d)?;
            }
            f.fsync()
        }
        JStep::Truncate(p, size) => {
            let f = fs.open(p, OpenFlags::create())?;
            f.truncate(*size)?;
            f.fsync()
        }
        JStep::Unlink(p) => fs.unlink(p),
        JStep::Release => fs.release_orphans(u64::MAX, &HashSet::new()).map(|_| ()),
    }
}

fn jd_files(fs: &Fs) -> Files {
    fs.readdir("/")
        .unwrap()
        .into_iter()
        .map(|e| {
            let p = format!("/{}", e.name);
            let d = read_all(fs, &p);
            (p, d)
        })
        .collect()
}

/// True when `got` is `a` or `b`, byte by byte (an in-place overwrite
/// that was not acknowledged may be partly there), with the size of one
/// of them.
fn one_of(got: Option<&Vec<u8>>, a: Option<&Vec<u8>>, b: Option<&Vec<u8>>) -> bool {
    let Some(g) = got else {
        return a.is_none() || b.is_none();
    };
    let sizes = [a, b].iter().flatten().any(|x| x.len() == g.len());
    sizes
        && g.iter().enumerate().all(|(i, &v)| {
            a.is_some_and(|a| a.get(i) == Some(&v)) || b.is_some_and(|b| b.get(i) == Some(&v))
        })
}

/// Small writes journaled with their transaction survive a crash (and a
/// torn write) at every device write of a workload that overwrites,
/// truncates and unlinks journaled bytes not yet home, wraps the ring
/// and checkpoints: fsck is clean, every acknowledged byte is there on
/// RW and RO mounts, an unacknowledged step is all there or not (byte
/// by byte for in-place overwrites), and writing goes on.
#[test]
fn journaled_data_survives_a_crash_at_every_device_write() {
    let base = CrashDevice::new(8 << 20);
    mkfs(&base, &small_opts()).unwrap();
    let image = base.image();
    let steps = jd_steps();
    let mut want: Vec<Files> = vec![Files::new()];
    for s in &steps {
        let mut f = want.last().unwrap().clone();
        jd_model(&mut f, s);
        want.push(f);
    }
    let total = {
        let dev = Arc::new(CrashDevice::from_image(image.clone(), None, false));
        let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
        // An RO mount follows along: right after each fsync it sees the
        // new bytes (from its overlay or from home), never older ones.
        let ro = Fs::mount(dev.clone(), Mode::Ro).unwrap();
        for (i, s) in steps.iter().enumerate() {
            jd_run(&fs, s).unwrap();
            assert!(jd_files(&fs) == want[i + 1], "clean run, step {i} {s:?}");
            ro.catch_up().unwrap();
            assert!(jd_files(&ro) == want[i + 1], "RO, step {i} {s:?}");
        }
        drop(ro);
        assert!(fs.metrics().journaled_commits_total.get() >= 10);
        assert!(fs.metrics().checkpoints_total.get() >= 3, "the ring wraps");
        assert!(fs.metrics().homed_bytes_total.get() > 0);
        drop(fs);
        dev.writes()
    };
    for tear in [false, true] {
        for k in 0..total {
            let dev = Arc::new(CrashDevice::from_image(image.clone(), Some(k), tear));
            let fs = Fs::mount(dev.clone(), Mode::Rw).unwrap();
            let mut upto = 0;
            for s in &steps {
                if jd_run(&fs, s).is_err() {
                    break;
                }
                upto += 1;
            }
            drop(fs);
            let img = dev.image();
            let ro_dev = Arc::new(CrashDevice::from_image(img.clone(), None, false));
            assert_fsck_clean(&*ro_dev);
            let ro = jd_files(&Fs::mount(ro_dev, Mode::Ro).unwrap());
            let rw_dev = Arc::new(CrashDevice::from_image(img, None, false));
            let fs = Fs::mount(rw_dev.clone(), Mode::Rw).unwrap();
            let got = jd_files(&fs);
            assert!(got == ro, "crash after write {k} tear {tear}: RO differs");
            let (a, b) = (&want[upto], want.get(upto + 1).unwrap_or(&want[upto]));
            let paths: HashSet<&String> = a.keys().chain(b.keys()).chain(got.keys()).collect();
            for p in paths {
                assert!(
                    one_of(got.get(p), a.get(p), b.get(p)),
                    "crash after write {k} tear {tear}, step {upto} ({:?}): {p} has {} bytes, want {:?} or {:?}",
                    steps.get(upto),
                    got.get(p).map_or(0, |g| g.len()),
                    a.get(p).map(|x| x.len()),
                    b.get(p).map(|x| x.len()),
                );
            }
            // Writing goes on, and survives a remount.
            let f = fs.open("/wal", OpenFlags::create()).unwrap();
            f.append(b"again").unwrap();
            f.fsync().unwrap();
            drop(f);
            drop(fs);
            let (d, fs) = remount(&rw_dev);
            assert!(read_all(&fs, "/wal").ends_with(b"again"));
            drop(fs);
            assert_fsck_clean(&*d);
        }
    }
}

/// An RO mount reads journaled bytes from its overlay right after the
/// RW's fsync (nothing went home yet), drops the overlay once a
/// checkpoint says they are home (so a later in-place overwrite at home
/// is seen, not hidden by stale bytes), and keeps it right across ring
/// wraps and reloads, within the ring's size.
#[test]
fn ro_sees_journaled_bytes_at_once_and_after_they_go_home() {
    let dev = Arc::new(CrashDevice::new(16 << 20));
    mkfs(&*dev, &small_opts()).unwrap();
    let rw = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let ro = Fs::mount(dev.clone(), Mode::Ro).unwrap();
    let ring = rw.superblock().ring_size as i64;
    let f = rw.open("/big", OpenFlags::create()).unwrap();
    let mut want = vec![1u8; 200 << 10];
    f.pwrite(0, &want).unwrap();
    f.fsync().unwrap();
    ro.catch_up().unwrap();
    let held = ro.open("/big", OpenFlags::read()).unwrap();
    assert_eq!(held.pread(0, 1 << 20).unwrap(), want);
    // A small in-place overwrite: journaled, not home.
    let homed = rw.metrics().homed_bytes_total.get();
    f.pwrite(0, &[2u8; 1000]).unwrap();
    f.fsync().unwrap();
    want[..1000].fill(2);
    assert_eq!(rw.metrics().homed_bytes_total.get(), homed, "not home yet");
    assert!(rw.metrics().journaled_commits_total.get() >= 1);
    ro.catch_up().unwrap();
    assert!(ro.metrics().unhomed_bytes.get() >= 1000);
    assert_eq!(
        held.pread(0, 1 << 20).unwrap(),
        want,
        "RO right after fsync"
    );
    assert_eq!(f.pread(0, 1 << 20).unwrap(), want, "RW");
    // A large in-place overwrite goes straight home: the journaled bytes
    // go home first (a checkpoint), and the RO drops its overlay.
    let ckpts = rw.metrics().checkpoints_total.get();
    f.pwrite(0, &vec![3u8; 100 << 10]).unwrap();
    f.fsync().unwrap();
    want[..100 << 10].fill(3);
    assert!(rw.metrics().checkpoints_total.get() > ckpts);
    assert!(rw.metrics().homed_bytes_total.get() >= homed + 1000);
    ro.catch_up().unwrap();
    assert_eq!(ro.metrics().unhomed_bytes.get(), 0);
    assert_eq!(held.pread(0, 1 << 20).unwrap(), want, "no stale overlay");
    // Appends wrap the ring many times; the RO follows each one, then
    // lags behind several checkpoints and reloads.
    let wal = rw.open("/wal", OpenFlags::create()).unwrap();
    let mut log = Vec::new();
    for i in 0..60u32 {
        let rec: Vec<u8> = (0..1500u32).map(|j| (i * 7 + j) as u8).collect();
        wal.append(&rec).unwrap();
        wal.fsync().unwrap();
        log.extend_from_slice(&rec);
        if i < 30 {
            ro.catch_up().unwrap();
            assert_eq!(read_all(&ro, "/wal"), log, "append {i}");
        }
        assert!(ro.metrics().unhomed_bytes.get() <= ring);
        assert!(rw.metrics().unhomed_bytes.get() <= ring);
    }
    let reloads = ro.metrics().ro_reloads_total.get();
    ro.catch_up().unwrap();
    assert_eq!(ro.metrics().ro_reloads_total.get(), reloads + 1);
    assert_eq!(read_all(&ro, "/wal"), log);
    assert_eq!(held.pread(0, 1 << 20).unwrap(), want);
    assert!(rw.metrics().checkpoints_total.get() >= ckpts + 5);
    drop((f, wal, held));
    rw.unmount().unwrap();
    assert_fsck_clean(&*dev);
    let ro = Fs::mount(dev.clone(), Mode::Ro).unwrap();
    assert_eq!(read_all(&ro, "/wal"), log);
    assert_eq!(read_all(&ro, "/big"), want);
}

/// A device whose data reads are slow, so that a reader's device reads
/// overlap catch-ups and the writer's reuse of blocks.
struct SlowReads {
    inner: CrashDevice,
    data_off: AtomicU64,
}

impl BlockDevice for SlowReads {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: usize) -> std::result::Result<Vec<u8>, DeviceError> {
        let data_off = self.data_off.load(Ordering::SeqCst);
        if data_off > 0 && offset >= data_off {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        self.inner.read_at(offset, len)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::result::Result<(), DeviceError> {
        self.inner.write_at(offset, data)
    }
}

/// RO reads do not hold the metadata lock across their device reads, so
/// a catch-up may apply a truncate meanwhile, after which the RW may reuse
/// the cut blocks: such a read is redone, and never returns another
/// file's bytes.
#[test]
fn ro_reads_racing_truncate_and_reuse_never_return_foreign_bytes() {
    let dev = Arc::new(SlowReads {
        inner: CrashDevice::new(8 << 20),
        data_off: AtomicU64::new(0),
    });
    mkfs(&*dev, &small_opts()).unwrap();
    let rw = Fs::mount(dev.clone(), Mode::Rw).unwrap();
    let ro = Fs::mount(dev.clone(), Mode::Ro).unwrap();
    dev.data_off
        .store(rw.superblock().data_off, Ordering::SeqCst);
    let a = rw.open("/a", OpenFlags::create()).unwrap();
    let size = 3 * BS as usize;
    a.pwrite(0, &vec![0xAA; size]).unwrap();
    a.fsync().unwrap();
    // Only /a's blocks will ever be free: /b must reuse them.
    let filler = rw.open("/filler", OpenFlags::create()).unwrap();
    filler
        .pwrite(0, &vec![0xFF; rw.statfs().free_bytes as usize])
        .unwrap();
    filler.fsync().unwrap();
    assert_eq!(rw.statfs().free_bytes, 0);
    ro.catch_up().unwrap();
    let held = ro.open("/a", OpenFlags::read()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let got = held.pread(0, size).unwrap();
                if let Some(i) = got.iter().position(|&b| b != 0xAA) {
                    panic!("read {reads}: byte {i} is {:#x}, not /a's", got[i]);
                }
                reads += 1;
            }
            reads
        })
    };
    for round in 0..40 {
        // Cut /a, let the RO see it and publish, free and reuse the cut
        // blocks for /b, then give /a its bytes back.
        a.truncate(0).unwrap();
        a.fsync().unwrap();
        let lsn = ro.catch_up().unwrap();
        rw.release_orphans(lsn, &HashSet::new()).unwrap();
        let b = rw.open("/b", OpenFlags::create()).unwrap();
        b.pwrite(0, &vec![0xBB; size]).unwrap();
        b.fsync().unwrap();
        // Reads planned before the cut are in flight now.
        std::thread::sleep(std::time::Duration::from_millis(4));
        drop(b);
        rw.unlink("/b").unwrap();
        rw.release_orphans(u64::MAX, &HashSet::new()).unwrap();
        a.pwrite(0, &vec![0xAA; size]).unwrap();
        a.fsync().unwrap();
        ro.catch_up().unwrap();
        // Let the reader plan reads of /a's new blocks.
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert!(!reader.is_finished(), "round {round}: the reader failed");
    }
    stop.store(true, Ordering::SeqCst);
    let reads = reader.join().unwrap();
    assert!(reads > 10, "only {reads} reads raced the writer");
}
