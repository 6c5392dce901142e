//! RocksDB through the shim on an `Fs` over a `FileDevice` image: a
//! primary on the RW mount, a secondary on an RO mount of the same image,
//! crash images, error paths and the local/pikafs path split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pikafs_fs::{mkfs, FileDevice, Fs, MkfsOptions, Mode};
use rocksdb::{Options, SstFileWriter, WriteOptions, DB};

use crate::{tune_for_remote_disk, PikaEnv, RemoteDiskTuning};

const IMAGE_SIZE: u64 = 1 << 30;

/// A temp dir on tmpfs when there is one: `FileDevice` runs `fdatasync`
/// after every write, which only tmpfs makes cheap enough for 50k puts.
fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("rocksfs").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// The pikafs prefix for a test: inside its temp dir, because the `rocksdb`
/// crate runs `std::fs::create_dir_all` on every DB path it opens, so the
/// prefix must be a writable local path (it gets empty directories, never
/// a file).
fn prefix(dir: &Path) -> String {
    dir.join("pikafs")
        .to_str()
        .expect("utf-8 temp dir")
        .to_string()
}

/// Every regular file under `root` on the local disk.
fn local_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// A fresh file system in `dir/image`, mounted RW.
fn new_image(dir: &Path) -> (PathBuf, Fs) {
    let path = dir.join("image");
    let dev = Arc::new(FileDevice::create(&path, IMAGE_SIZE).expect("create image"));
    let opts = MkfsOptions {
        block_size: Some(1 << 20),
        journal_size: Some(4 << 20),
        checkpoint_size: Some(4 << 20),
    };
    mkfs(&*dev, &opts).expect("mkfs");
    let fs = Fs::mount(dev, Mode::Rw).expect("mount rw");
    (path, fs)
}

fn mount(path: &Path, mode: Mode) -> Fs {
    Fs::mount(Arc::new(FileDevice::open(path).expect("open image")), mode).expect("mount")
}

/// Options for tests: tuned, small memtables so flushes happen, the info
/// LOG on local disk (so nothing but RocksDB's own writes hit the image).
fn db_options(env: &PikaEnv, log_dir: &Path) -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_env(env.env());
    tune_for_remote_disk(
        &mut o,
        &RemoteDiskTuning {
            block_cache_bytes: 8 << 20,
            ..RemoteDiskTuning::default()
        },
    );
    o.set_write_buffer_size(1 << 20);
    o.set_target_file_size_base(2 << 20);
    o.set_db_log_dir(log_dir);
    o
}

fn key(i: u64) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

/// Values of varied sizes (1 B to ~3 KB), distinct per key and generation.
fn value(i: u64, generation: u64) -> Vec<u8> {
    let len = ((i * 7919 + generation * 104_729) % 3000 + 1) as usize;
    let tag = format!("{i}:{generation}:");
    tag.bytes().cycle().take(len.max(tag.len())).collect()
}

fn check_all(db: &DB, range: std::ops::Range<u64>, generation: impl Fn(u64) -> u64) {
    for i in range {
        let got = db.get(key(i)).expect("get");
        assert_eq!(got, Some(value(i, generation(i))), "key {i}");
    }
}

fn names(fs: &Fs, dir: &str) -> Vec<String> {
    fs.readdir(dir)
        .expect("readdir")
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[test]
fn primary_survives_flush_compaction_and_reopen() {
    let dir = tempdir();
    let (_image, fs) = new_image(dir.path());
    let env = PikaEnv::new(Arc::new(fs.clone()), &prefix(dir.path())).expect("env");
    let opts = db_options(&env, &dir.path().join("log"));
    let db_path = env.path("/db");
    assert_eq!(db_path, format!("{}/db", prefix(dir.path())));
    {
        let db = DB::open(&opts, &db_path).expect("open");
        for i in 0..50_000 {
            db.put(key(i), value(i, 0)).expect("put");
        }
        db.flush().expect("flush");
        // Overwrite every third key, then compact everything together.
        for i in (0..50_000).step_by(3) {
            db.put(key(i), value(i, 1)).expect("put");
        }
        db.compact_range::<&[u8], &[u8]>(None, None);
        check_all(&db, 0..50_000, |i| u64::from(i % 3 == 0));
    }
    let files = names(&fs, "/db");
    assert!(files.contains(&"CURRENT".to_string()), "{files:?}");
    assert!(files.contains(&"LOCK".to_string()), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".sst")), "{files:?}");
    // Nothing of the DB went to the local disk under the prefix.
    assert_eq!(
        local_files(&dir.path().join("pikafs")),
        Vec::<PathBuf>::new()
    );

    let db = DB::open(&opts, &db_path).expect("reopen");
    check_all(&db, 0..50_000, |i| u64::from(i % 3 == 0));
    assert_eq!(db.get(b"absent").expect("get"), None);
}

#[test]
fn synced_writes_survive_a_crash_image() {
    let dir = tempdir();
    let (image, fs) = new_image(dir.path());
    let env = PikaEnv::new(Arc::new(fs.clone()), &prefix(dir.path())).expect("env");
    let mut opts = db_options(&env, &dir.path().join("log"));
    opts.set_disable_auto_compactions(true);
    opts.set_write_buffer_size(64 << 20);
    let db = DB::open(&opts, env.path("/db")).expect("open");
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    for i in 0..2_000 {
        db.put_opt(key(i), value(i, 7), &sync).expect("put");
    }
    // The device file is the volume: every write that returned is in it,
    // so a copy taken now (no IO in flight: puts are synchronous, the LOG
    // is local, no flush is due) is a crash image. The DB is never closed.
    let crashed = dir.path().join("crashed");
    std::fs::copy(&image, &crashed).expect("copy image");

    let fs2 = mount(&crashed, Mode::Rw);
    let env2 = PikaEnv::new(Arc::new(fs2), &prefix(dir.path())).expect("env");
    let opts2 = db_options(&env2, &dir.path().join("log2"));
    let db2 = DB::open(&opts2, env2.path("/db")).expect("recover");
    check_all(&db2, 0..2_000, |_| 7);
    drop(db);
}

#[test]
fn secondary_on_ro_mount_follows_and_keeps_reading_deleted_ssts() {
    let dir = tempdir();
    let (image, rw) = new_image(dir.path());
    let env = PikaEnv::new(Arc::new(rw.clone()), &prefix(dir.path())).expect("env");
    let mut opts = db_options(&env, &dir.path().join("log"));
    opts.set_disable_auto_compactions(true);
    let primary = DB::open(&opts, env.path("/db")).expect("open primary");
    for i in 0..20_000 {
        primary.put(key(i), value(i, 0)).expect("put");
    }
    primary.flush().expect("flush");

    let ro = mount(&image, Mode::Ro);
    ro.catch_up().expect("catch up");
    let ro_env = PikaEnv::new(Arc::new(ro.clone()), &prefix(dir.path())).expect("ro env");
    let mut ro_opts = db_options(&ro_env, &dir.path().join("unused"));
    ro_opts.create_if_missing(false);
    // No db_log_dir: the secondary's info LOG goes to its private
    // directory, which is local.
    ro_opts.set_db_log_dir("");
    let secondary_dir = dir.path().join("secondary");
    let secondary = DB::open_as_secondary(
        &ro_opts,
        Path::new(&ro_env.path("/db")),
        secondary_dir.as_path(),
    )
    .expect("open secondary");
    check_all(&secondary, 0..20_000, |_| 0);
    assert!(secondary_dir.join("LOG").exists(), "secondary LOG is local");

    // New data: visible after the fs and the secondary catch up.
    for i in 20_000..30_000 {
        primary.put(key(i), value(i, 0)).expect("put");
    }
    primary.flush().expect("flush");
    ro.catch_up().expect("catch up");
    secondary
        .try_catch_up_with_primary()
        .expect("secondary catch up");
    check_all(&secondary, 0..30_000, |_| 0);

    // A long scan starts, then the primary rewrites everything and its
    // compaction deletes every SST the scan reads.
    let ssts_before: HashSet<String> = names(&rw, "/db")
        .into_iter()
        .filter(|n| n.ends_with(".sst"))
        .collect();
    let mut it = secondary.raw_iterator();
    it.seek_to_first();
    let mut seen = 0u64;
    while it.valid() && seen < 1_000 {
        assert_eq!(it.key(), Some(key(seen).as_slice()));
        assert_eq!(it.value(), Some(value(seen, 0).as_slice()));
        seen += 1;
        it.next();
    }
    for i in 0..30_000 {
        primary.put(key(i), value(i, 1)).expect("put");
    }
    primary.flush().expect("flush");
    primary.compact_range::<&[u8], &[u8]>(None, None);
    let ssts_after: HashSet<String> = names(&rw, "/db")
        .into_iter()
        .filter(|n| n.ends_with(".sst"))
        .collect();
    assert!(
        ssts_before.is_disjoint(&ssts_after),
        "compaction kept an input SST: {ssts_before:?} / {ssts_after:?}"
    );
    assert!(rw.statfs().orphan_files > 0, "deleted SSTs are orphans");
    ro.catch_up().expect("catch up");
    secondary
        .try_catch_up_with_primary()
        .expect("secondary catch up");
    // The old iterator still reads its version: complete and unchanged.
    while it.valid() {
        assert_eq!(it.key(), Some(key(seen).as_slice()), "at {seen}");
        assert_eq!(it.value(), Some(value(seen, 0).as_slice()), "at {seen}");
        seen += 1;
        it.next();
    }
    it.status().expect("iterator status");
    assert_eq!(seen, 30_000);
    // New reads see the rewrite.
    check_all(&secondary, 0..30_000, |_| 1);
    drop(it);

    // Once the secondary closes, what it pinned can be freed.
    drop(secondary);
    ro.catch_up().expect("catch up");
    let before = rw.statfs();
    assert!(before.orphan_bytes > 0);
    let ro_open: HashSet<_> = ro.open_inodes().into_iter().collect();
    let freed = rw.release_orphans(ro.lsn(), &ro_open).expect("release");
    assert!(freed.orphans_freed > 0, "{freed:?}");
    let after = rw.statfs();
    assert!(
        after.free_bytes > before.free_bytes,
        "{before:?} -> {after:?}"
    );
    check_all(&primary, 0..30_000, |_| 1);
}

#[test]
fn ro_mount_refuses_lock_and_writes_without_crashing() {
    let dir = tempdir();
    let (image, rw) = new_image(dir.path());
    {
        let env = PikaEnv::new(Arc::new(rw.clone()), &prefix(dir.path())).expect("env");
        let opts = db_options(&env, &dir.path().join("log"));
        let db = DB::open(&opts, env.path("/db")).expect("open");
        db.put(b"k", b"v").expect("put");
    }
    let ro = mount(&image, Mode::Ro);
    let ro_env = PikaEnv::new(Arc::new(ro.clone()), &prefix(dir.path())).expect("ro env");
    let opts = db_options(&ro_env, &dir.path().join("ro-log"));

    // A primary on the RO mount: its LockFile fails.
    let err = DB::open(&opts, ro_env.path("/db")).expect_err("primary on an RO mount");
    assert!(
        err.to_string().contains("lock held by the RW mount"),
        "{err}"
    );
    // Writing a file through RocksDB: an IOError naming read-only.
    let w = SstFileWriter::create(&opts);
    let err = w
        .open(ro_env.path("/db/extra.sst"))
        .expect_err("write on RO");
    assert!(err.to_string().contains("read-only"), "{err}");
    // A read-only DB open works on the RO mount.
    let db = DB::open_for_read_only(&opts, ro_env.path("/db"), false).expect("read only");
    assert_eq!(db.get(b"k").expect("get"), Some(b"v".to_vec()));
}

#[test]
fn missing_files_are_not_found() {
    let dir = tempdir();
    let (_image, fs) = new_image(dir.path());
    fs.mkdir("/empty").expect("mkdir");
    let env = PikaEnv::new(Arc::new(fs.clone()), &prefix(dir.path())).expect("env");
    let mut opts = db_options(&env, &dir.path().join("log"));
    opts.create_if_missing(false);
    let err = DB::open(&opts, env.path("/empty")).expect_err("no db there");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = DB::open(&opts, env.path("/nowhere")).expect_err("no dir there");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // A secondary of a missing primary fails cleanly too.
    let err = DB::open_as_secondary(
        &opts,
        Path::new(&env.path("/nowhere")),
        dir.path().join("sec").as_path(),
    )
    .expect_err("no primary");
    assert!(!err.to_string().is_empty());
}

#[test]
fn paths_outside_the_prefix_stay_local() {
    let dir = tempdir();
    let (_image, fs) = new_image(dir.path());
    // Prefix inside the temp dir, so a sibling that merely starts with the
    // same characters ("pkx") can be checked on the local disk.
    let prefix = dir.path().join("pk");
    let env = PikaEnv::new(Arc::new(fs.clone()), prefix.to_str().expect("utf-8")).expect("env");
    let opts = db_options(&env, &dir.path().join("log"));

    let local = dir.path().join("pkx");
    let db = DB::open(&opts, &local).expect("open local");
    db.put(b"a", b"1").expect("put");
    drop(db);
    assert!(local.join("CURRENT").exists());
    assert_eq!(names(&fs, "/"), Vec::<String>::new());

    let db = DB::open(&opts, env.path("/db")).expect("open pikafs");
    db.put(b"b", b"2").expect("put");
    drop(db);
    assert_eq!(
        local_files(&prefix),
        Vec::<PathBuf>::new(),
        "no file under the prefix is local"
    );
    assert!(names(&fs, "/db").contains(&"CURRENT".to_string()));
}

#[test]
fn info_log_under_the_prefix_is_a_pikafs_file() {
    let dir = tempdir();
    let (image, fs) = new_image(dir.path());
    let env = PikaEnv::new(Arc::new(fs.clone()), &prefix(dir.path())).expect("env");
    let mut opts = db_options(&env, &dir.path().join("unused"));
    opts.set_db_log_dir("");
    let db = DB::open(&opts, env.path("/db")).expect("open");
    db.put(b"a", b"1").expect("put");
    drop(db);
    let log = fs.stat("/db/LOG").expect("LOG is in pikafs");
    assert!(log.size > 0, "{log:?}");
    // Closing committed it (close-to-open): another mount sees the bytes.
    let ro = mount(&image, Mode::Ro);
    let f = ro
        .open("/db/LOG", pikafs_fs::OpenFlags::read())
        .expect("open LOG on RO");
    let text = f.pread(0, log.size as usize).expect("read LOG");
    assert_eq!(text.len() as u64, log.size);
    assert!(String::from_utf8_lossy(&text).contains("RocksDB version"));
}

#[test]
fn options_string_env_names_the_pikafs_env() {
    let dir = tempdir();
    let (_image, fs) = new_image(dir.path());
    let env = PikaEnv::new(Arc::new(fs.clone()), &prefix(dir.path())).expect("env");
    assert_eq!(env.uri(), format!("pikafs:{}", prefix(dir.path())));
    let mut base = Options::default();
    base.set_db_log_dir(dir.path().join("log"));
    let opts = base
        .get_options_from_string(format!("env={};create_if_missing=true", env.uri()))
        .expect("parse options");
    let db = DB::open(&opts, env.path("/db")).expect("open");
    db.put(b"x", b"y").expect("put");
    drop(db);
    assert!(names(&fs, "/db").contains(&"CURRENT".to_string()));
    match base.get_options_from_string("env=pikafs:/not-registered") {
        Ok(_) => panic!("an unknown pikafs env name was accepted"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// What one secondary catch-up asks the fs for, with a primary writing
/// small synced batches in between (the kv RO's steady state). Guards
/// against a catch-up that rereads the WAL or MANIFEST from the start:
/// the bytes read per catch-up must stay near what was appended.
#[test]
fn secondary_catch_up_reads_only_the_new_wal_tail() {
    let dir = tempdir();
    let (image, rw) = new_image(dir.path());
    let env = PikaEnv::new(Arc::new(rw.clone()), &prefix(dir.path())).expect("env");
    let mut opts = db_options(&env, &dir.path().join("log"));
    opts.set_write_buffer_size(64 << 20);
    let primary = DB::open(&opts, env.path("/db")).expect("open primary");
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    for i in 0..1_000 {
        primary.put_opt(key(i), value(i, 0), &wo).expect("put");
    }
    let ro = mount(&image, Mode::Ro);
    ro.catch_up().expect("catch up");
    let ro_env = PikaEnv::new(Arc::new(ro.clone()), &prefix(dir.path())).expect("ro env");
    let mut ro_opts = db_options(&ro_env, &dir.path().join("unused"));
    ro_opts.create_if_missing(false);
    ro_opts.set_db_log_dir("");
    let secondary = DB::open_as_secondary(
        &ro_opts,
        Path::new(&ro_env.path("/db")),
        dir.path().join("secondary").as_path(),
    )
    .expect("open secondary");
    secondary
        .try_catch_up_with_primary()
        .expect("first catch up");

    let rounds = 20u64;
    let per_round = 50u64;
    let mut total = crate::OpStats::default();
    let mut appended = 0u64;
    for r in 0..rounds {
        for i in 0..per_round {
            let k = 10_000 + r * per_round + i;
            let v = value(k, 0);
            appended += (key(k).len() + v.len()) as u64;
            primary.put_opt(key(k), v, &wo).expect("put");
        }
        ro.catch_up().expect("fs catch up");
        let before = ro_env.op_stats();
        secondary.try_catch_up_with_primary().expect("catch up");
        let d = ro_env.op_stats().delta(&before);
        eprintln!("catch-up {r}: {d}");
        total = if total.0.is_empty() {
            d
        } else {
            crate::OpStats(
                total
                    .0
                    .iter()
                    .zip(d.0.iter())
                    .map(|(a, b)| crate::OpStat {
                        op: a.op,
                        calls: a.calls + b.calls,
                        bytes: a.bytes + b.bytes,
                        time: a.time + b.time,
                    })
                    .collect(),
            )
        };
        let last = 10_000 + r * per_round + per_round - 1;
        assert_eq!(
            secondary.get(key(last)).expect("get"),
            Some(value(last, 0)),
            "round {r} visible after one catch-up"
        );
    }
    eprintln!("{rounds} catch-ups, {appended} B appended: {total}");
    let read = total.get("pread").map_or(0, |s| s.bytes);
    // CURRENT (reread by every catch-up) comes from the RO small-file
    // cache, not from the device.
    assert!(
        total.get("pread_cached").map_or(0, |s| s.calls) >= rounds,
        "{total}"
    );
    // WAL record framing and the MANIFEST/CURRENT rereads cost a little
    // over the appended payload; a reread from the start of a file would
    // cost ~rounds/2 times the file.
    assert!(
        read < 2 * appended + rounds * 64 * 1024,
        "{read} B read for {appended} B appended"
    );
}
