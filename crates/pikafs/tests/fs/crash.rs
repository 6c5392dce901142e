//! The writer as a separate process (`pikafs fs stress`, which prints
//! every durable state): SIGKILL mid-workload loses nothing fsync'd and
//! leaves a clean fs; a SIGSTOPped writer whose lease lapses is fenced by
//! the next one and cannot damage the volume when it wakes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pikafs_fs::{Fs, Mode, OpenFlags};
use pikafs_testkit::Proc;

use crate::common::{small_mkfs, wait_until, Env};

/// Must match `stress_byte` in `src/fs_cmd.rs`.
fn stress_byte(gen: u64, off: u64) -> u8 {
    (gen.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (off % 251) as u8 ^ (off >> 12) as u8
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    File { gen: u64, len: u64 },
    Gone,
}

/// What the stress log promises: per path, the last acknowledged state,
/// and the state the in-flight step (a TRY without OK) may have left.
#[derive(Debug, Default)]
struct Promise {
    done: BTreeMap<String, State>,
    maybe: BTreeMap<String, State>,
    oks: u64,
}

fn parse_effects(s: &str) -> Vec<(String, State)> {
    s.split(';')
        .map(|e| {
            let w: Vec<&str> = e.split_whitespace().collect();
            match w.as_slice() {
                ["FILE", p, g, l] => (
                    p.to_string(),
                    State::File {
                        gen: g.parse().unwrap(),
                        len: l.parse().unwrap(),
                    },
                ),
                ["GONE", p] => (p.to_string(), State::Gone),
                _ => panic!("bad effect {e:?}"),
            }
        })
        .collect()
}

fn read_promise(log: &std::path::Path) -> Promise {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut p = Promise::default();
    let mut pending: Option<(u64, Vec<(String, State)>)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TRY ") {
            let (seq, eff) = rest.split_once(' ').expect("TRY seq effects");
            pending = Some((seq.parse().unwrap(), parse_effects(eff)));
        } else if let Some(seq) = line.strip_prefix("OK ") {
            let seq: u64 = seq.trim().parse().unwrap();
            if let Some((s, eff)) = pending.take() {
                assert_eq!(s, seq, "OK for the TRY before it");
                p.done.extend(eff);
            }
            p.oks += 1;
        }
    }
    if let Some((_, eff)) = pending {
        p.maybe.extend(eff);
    }
    p
}

/// Checks `path` against the promise: the acknowledged state, or the
/// in-flight step's.
fn check_path(fs: &Fs, path: &str, p: &Promise) -> Result<(), String> {
    let mut cands: Vec<&State> = [p.done.get(path), p.maybe.get(path)]
        .into_iter()
        .flatten()
        .collect();
    // An in-flight create (open commits the name, fsync the data) may
    // have left nothing or an empty file.
    let empty = State::File { gen: 0, len: 0 };
    if p.maybe.contains_key(path) && !p.done.contains_key(path) {
        cands.extend([&State::Gone, &empty]);
    }
    let f = match fs.open(path, OpenFlags::read()) {
        Ok(f) => Some(f),
        Err(pikafs_fs::FsError::NotFound { .. }) => None,
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let Some(f) = f else {
        return if cands.iter().any(|c| **c == State::Gone) {
            Ok(())
        } else {
            Err(format!("{path}: missing, promised {cands:?}"))
        };
    };
    let len = f.stat().map_err(|e| e.to_string())?.size;
    let data = f.pread(0, len as usize).map_err(|e| e.to_string())?;
    for c in &cands {
        if let State::File { gen, len: want } = c {
            if *want == len
                && data
                    .iter()
                    .enumerate()
                    .all(|(o, &b)| b == stress_byte(*gen, o as u64))
            {
                return Ok(());
            }
        }
    }
    Err(format!("{path}: {len} bytes do not match any of {cands:?}"))
}

fn check_all(fs: &Fs, p: &Promise) {
    let paths: std::collections::BTreeSet<&String> = p.done.keys().chain(p.maybe.keys()).collect();
    let errors: Vec<String> = paths
        .iter()
        .filter_map(|path| check_path(fs, path, p).err())
        .collect();
    assert!(
        errors.is_empty(),
        "fsync'd state lost:\n{}",
        errors.join("\n")
    );
}

fn spawn_stress(env: &Env, vol: &str, seconds: u32, log: &std::path::Path) -> Proc {
    let args: Vec<String> = [
        "--ctrl",
        &env.cluster.ctrl_url(),
        "fs",
        "stress",
        vol,
        "--seconds",
        &seconds.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn("stress", &args, log).expect("stress starts")
}

fn wait_oks(log: &std::path::Path, n: u64, p: &mut Proc) {
    wait_until("stress makes progress", Duration::from_secs(60), || {
        assert!(p.is_running(), "stress exited early:\n{}", p.log_tail(20));
        (read_promise(log).oks >= n).then_some(())
    });
}

#[test]
fn sigkill_of_the_writer_loses_nothing_fsynced() {
    let env = Env::start(
        Duration::from_secs(2),
        "crash",
        "256MiB",
        Some(small_mkfs()),
    );
    let dir = tempfile::tempdir().unwrap();
    // A follower in this process reads throughout: it must never fail.
    let ro = env.mount("crash", Mode::Ro);
    for round in 0..3u64 {
        let log = dir.path().join(format!("stress{round}.log"));
        let mut p = spawn_stress(&env, "crash", 120, &log);
        wait_oks(&log, 40 + round * 60, &mut p);
        ro.catch_up().expect("RO follows a live writer");
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10));
        let promise = read_promise(&log);
        println!(
            "round {round}: killed after {} acknowledged steps",
            promise.oks
        );

        // Recovery by the next writer (after the dead one's lease lapses).
        let started = Instant::now();
        let rw = env.mount_rw_waiting("crash", Duration::from_secs(20));
        println!("round {round}: remounted RW after {:?}", started.elapsed());
        check_all(rw.fs(), &promise);
        ro.catch_up().expect("RO follows the recovered writer");
        check_all(ro.fs(), &promise);
        rw.unmount().unwrap();
        env.assert_fsck_clean("crash");
    }
    ro.unmount().unwrap();
}

#[test]
fn stale_writer_is_fenced_and_cannot_damage_the_volume() {
    let env = Env::start(
        Duration::from_secs(2),
        "fence",
        "256MiB",
        Some(small_mkfs()),
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stress.log");
    let mut p = spawn_stress(&env, "fence", 120, &log);
    wait_oks(&log, 30, &mut p);
    p.signal(libc::SIGSTOP);
    let promise = read_promise(&log);

    // Its lease lapses; the new writer bumps the epoch and fences it.
    let rw = env.mount_rw_waiting("fence", Duration::from_secs(20));
    check_all(rw.fs(), &promise);
    let f = rw.fs().open("/new-writer", OpenFlags::create()).unwrap();
    f.pwrite(0, b"mine").unwrap();
    f.fsync().unwrap();

    p.signal(libc::SIGCONT);
    let st = p
        .wait_exit(Duration::from_secs(30))
        .expect("the stale writer gives up");
    assert!(!st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("fenced"),
        "stale writer's error is clear:\n{}",
        p.log_tail(10)
    );

    // Nothing it tried after the fence landed.
    check_all(rw.fs(), &promise);
    assert_eq!(f.pread(0, 10).unwrap(), b"mine");
    drop(f);
    rw.unmount().unwrap();
    env.assert_fsck_clean("fence");
}
