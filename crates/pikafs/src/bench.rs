//! `pikafs bench volume`: IOPS, bandwidth and latency of the volume client,
//! optionally beside `fio` on a local directory with the targets checked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use pikafs_volume::VolumeClient;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;

use crate::fio::{FioJob, FioResult};
use crate::units::{fmt_size, parse_duration, parse_size};

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Benchmark a volume through the volume client.
    Volume(VolumeBenchArgs),
    /// RO visibility lag of RW kv writes under write load.
    KvLag(crate::bench_kv::KvLagArgs),
}

#[derive(Debug, Args)]
pub struct VolumeBenchArgs {
    /// Volume to benchmark (its data in the span is overwritten).
    #[arg(long)]
    pub volume: String,
    /// Region of the volume used, from offset 0.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub span: u64,
    /// Length of each test.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Also run fio on this directory and compare.
    #[arg(long)]
    pub fio_dir: Option<PathBuf>,
    /// Requests in flight in the 1 MiB sequential tests.
    #[arg(long, default_value_t = 1)]
    pub seq_depth: usize,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run only the tests whose name contains one of these substrings
    /// (comma-separated, e.g. `--only "randwrite 4k qd32,seqwrite"`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Random,
    Sequential,
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    name: &'static str,
    write: bool,
    pattern: Pattern,
    block: usize,
    depth: usize,
    fio: Option<FioJob>,
}

#[derive(Debug, Clone)]
struct Outcome {
    spec: Spec,
    ops: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    fio: Option<FioResult>,
}

impl Outcome {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_sec(&self) -> f64 {
        self.iops() * self.spec.block as f64 / 1e6
    }
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_nanos(sorted[rank - 1])
}

/// Runs one test: `depth` workers issue IO back to back until `duration`.
async fn run_spec(
    client: &VolumeClient,
    spec: Spec,
    span: u64,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let blocks = span / spec.block as u64;
    anyhow::ensure!(
        blocks > 0,
        "span {span} is smaller than one {} byte block",
        spec.block
    );
    let mut payload = vec![0u8; spec.block];
    rand::thread_rng().fill_bytes(&mut payload);
    let payload = Bytes::from(payload);
    let cursor = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(spec.depth);
    for _ in 0..spec.depth {
        let (client, payload, cursor) = (client.clone(), payload.clone(), cursor.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut lat = Vec::with_capacity(1 << 16);
            while Instant::now() < deadline {
                let block = match spec.pattern {
                    Pattern::Random => rng.gen_range(0..blocks),
                    Pattern::Sequential => cursor.fetch_add(1, Ordering::Relaxed) % blocks,
                };
                let offset = block * spec.block as u64;
                let t = Instant::now();
                if spec.write {
                    client.write(offset, &payload).await?;
                } else {
                    client.read(offset, spec.block).await?;
                }
                lat.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, pikafs_volume::VolumeError>(lat)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(
            w.await
                .context("bench worker panicked")?
                .with_context(|| format!("{} io", spec.name))?,
        );
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Ok(Outcome {
        spec,
        ops: all.len() as u64,
        elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        fio: None,
    })
}

/// Writes the whole span once so reads hit written data.
async fn prefill(client: &VolumeClient, span: u64) -> anyhow::Result<()> {
    const BLOCK: u64 = 1 << 20;
    const DEPTH: u64 = 8;
    let next = Arc::new(AtomicU64::new(0));
    let mut data = vec![0u8; BLOCK as usize];
    rand::thread_rng().fill_bytes(&mut data);
    let data = Bytes::from(data);
    let mut tasks = Vec::new();
    for _ in 0..DEPTH {
        let (client, next, data) = (client.clone(), next.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let off = next.fetch_add(BLOCK, Ordering::Relaxed);
                if off >= span {
                    return Ok::<_, pikafs_volume::VolumeError>(());
                }
                let n = (span - off).min(BLOCK) as usize;
                client.write(off, &data[..n]).await?;
            }
        }));
    }
    for t in tasks {
        t.await
            .context("prefill worker panicked")?
            .context("prefill")?;
    }
    Ok(())
}

fn specs(seq_depth: usize) -> [Spec; 6] {
    let s = |name, write, pattern, block, depth, fio| Spec {
        name,
        write,
        pattern,
        block,
        depth,
        fio,
    };
    use Pattern::*;
    [
        s(
            "randwrite 4k qd1",
            true,
            Random,
            4096,
            1,
            Some(FioJob::RandWriteSyncQd1),
        ),
        // Compared with fio's *synced QD1* writes: the target is that
        // pipelining and group commit beat a lone synced writer.
        s(
            "randwrite 4k qd32",
            true,
            Random,
            4096,
            32,
            Some(FioJob::RandWriteSyncQd1),
        ),
        s(
            "randread 4k qd1",
            false,
            Random,
            4096,
            1,
            Some(FioJob::RandReadQd1),
        ),
        s(
            "randread 4k qd32",
            false,
            Random,
            4096,
            32,
            Some(FioJob::RandReadQd32),
        ),
        s(
            "seqwrite 1m",
            true,
            Sequential,
            1 << 20,
            seq_depth,
            Some(FioJob::SeqWrite),
        ),
        s(
            "seqread 1m",
            false,
            Sequential,
            1 << 20,
            seq_depth,
            Some(FioJob::SeqRead),
        ),
    ]
}

struct Target {
    name: &'static str,
    ours: f64,
    fio: f64,
    goal: String,
    pass: bool,
}

fn targets(rows: &[Outcome]) -> Vec<Target> {
    let find = |n: &str| rows.iter().find(|r| r.spec.name == n);
    let mut out = Vec::new();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if let Some(r) = find("randwrite 4k qd1") {
        if let Some(f) = r.fio {
            out.push(Target {
                name: "write qd1 p50 <= 2x fio",
                ours: us(r.p50),
                fio: us(f.p50),
                goal: format!("<= {:.0} us", 2.0 * us(f.p50)),
                pass: r.p50 <= f.p50 * 2,
            });
        }
    }
    if let Some(r) = find("randwrite 4k qd32") {
        if let Some(f) = r.fio {
            out.push(Target {
                name: "write qd32 IOPS >= 4x fio synced qd1",
                ours: r.iops(),
                fio: f.iops,
                goal: format!(">= {:.0} IOPS", 4.0 * f.iops),
                pass: r.iops() >= 4.0 * f.iops,
            });
        }
    }
    if let Some(r) = find("randread 4k qd1") {
        if let Some(f) = r.fio {
            let limit = f.p50 + Duration::from_micros(60);
            out.push(Target {
                name: "read qd1 p50 <= fio + 60us",
                ours: us(r.p50),
                fio: us(f.p50),
                goal: format!("<= {:.0} us", us(limit)),
                pass: r.p50 <= limit,
            });
        }
    }
    if let Some(r) = find("randread 4k qd32") {
        if let Some(f) = r.fio {
            out.push(Target {
                name: "read qd32 IOPS >= 40% fio",
                ours: r.iops(),
                fio: f.iops,
                goal: format!(">= {:.0} IOPS", 0.4 * f.iops),
                pass: r.iops() >= 0.4 * f.iops,
            });
        }
    }
    if let Some(r) = find("seqwrite 1m") {
        if let Some(f) = r.fio {
            let fio_mb = f.bytes_per_sec / 1e6;
            out.push(Target {
                name: "seq write MB/s >= 25% fio",
                ours: r.mb_per_sec(),
                fio: fio_mb,
                goal: format!(">= {:.1} MB/s", 0.25 * fio_mb),
                pass: r.mb_per_sec() >= 0.25 * fio_mb,
            });
        }
    }
    out
}

fn fmt_us(d: Duration) -> String {
    format!("{:.0}us", d.as_secs_f64() * 1e6)
}

fn print_table(rows: &[Outcome], targets: &[Target]) {
    println!(
        "{:<18} {:>9} {:>9} {:>8} {:>9} {:>9} | {:>9} {:>8} {:>9} {:>9} | {:>6} {:>6}",
        "test",
        "ops",
        "IOPS",
        "MB/s",
        "p50",
        "p99",
        "fio IOPS",
        "fio MB/s",
        "fio p50",
        "fio p99",
        "IOPS x",
        "p50 x"
    );
    for r in rows {
        print!(
            "{:<18} {:>9} {:>9.0} {:>8.1} {:>9} {:>9}",
            r.spec.name,
            r.ops,
            r.iops(),
            r.mb_per_sec(),
            fmt_us(r.p50),
            fmt_us(r.p99)
        );
        match r.fio {
            Some(f) => println!(
                " | {:>9.0} {:>8.1} {:>9} {:>9} | {:>6.2} {:>6.2}",
                f.iops,
                f.bytes_per_sec / 1e6,
                fmt_us(f.p50),
                fmt_us(f.p99),
                r.iops() / f.iops.max(f64::MIN_POSITIVE),
                r.p50.as_secs_f64() / f.p50.as_secs_f64().max(f64::MIN_POSITIVE),
            ),
            None => println!(" |"),
        }
    }
    if !targets.is_empty() {
        println!();
        println!(
            "{:<38} {:>10} {:>10} {:>16}  result",
            "target", "ours", "fio", "goal"
        );
        for t in targets {
            println!(
                "{:<38} {:>10.1} {:>10.1} {:>16}  {}",
                t.name,
                t.ours,
                t.fio,
                t.goal,
                if t.pass { "PASS" } else { "MISS" }
            );
        }
    }
}

fn to_json(rows: &[Outcome], targets: &[Target], span: u64) -> serde_json::Value {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    json!({
        "span_bytes": span,
        "results": rows.iter().map(|r| json!({
            "test": r.spec.name,
            "block_bytes": r.spec.block,
            "depth": r.spec.depth,
            "ops": r.ops,
            "seconds": r.elapsed.as_secs_f64(),
            "iops": r.iops(),
            "mb_per_s": r.mb_per_sec(),
            "p50_us": us(r.p50),
            "p99_us": us(r.p99),
            "fio": r.fio.map(|f| json!({
                "iops": f.iops,
                "mb_per_s": f.bytes_per_sec / 1e6,
                "p50_us": us(f.p50),
                "p99_us": us(f.p99),
            })),
        })).collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| json!({
            "target": t.name, "ours": t.ours, "fio": t.fio, "goal": t.goal, "pass": t.pass,
        })).collect::<Vec<_>>(),
    })
}

/// Runs `pikafs bench ...`.
pub async fn run(cmd: BenchCmd, ctrl_url: &str) -> anyhow::Result<()> {
    let args = match cmd {
        BenchCmd::Volume(args) => args,
        BenchCmd::KvLag(args) => return crate::bench_kv::run_lag(args).await,
    };
    let client = crate::volume::open(ctrl_url, &args.volume, None).await?;
    let span = args.span.min(client.size()) / (1 << 20) * (1 << 20);
    anyhow::ensure!(
        span >= 1 << 20,
        "span must cover at least 1 MiB of the volume"
    );
    anyhow::ensure!(args.seq_depth >= 1, "--seq-depth must be at least 1");
    if let Some(dir) = &args.fio_dir {
        anyhow::ensure!(
            crate::fio::available(),
            "--fio-dir given but fio is not on PATH"
        );
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let log = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    log(format!(
        "bench volume {} over {} for {:?} per test",
        args.volume,
        fmt_size(span),
        args.duration
    ));
    let mut rows: Vec<Outcome> = Vec::new();
    let mut fio_done: Vec<(FioJob, FioResult)> = Vec::new();
    for spec in specs(args.seq_depth) {
        if !args.only.is_empty() && !args.only.iter().any(|o| spec.name.contains(o.as_str())) {
            continue;
        }
        if !spec.write && !rows.iter().any(|r| !r.spec.write) {
            log(format!("prefilling {}", fmt_size(span)));
            prefill(&client, span).await?;
            if let Some(dir) = &args.fio_dir {
                // fio lays its file out with fallocate: unwritten extents
                // read as zeros without touching the disk, which would make
                // the reference a page-cache figure. Write it for real.
                crate::fio::prefill(dir, span).await?;
            }
        }
        log(format!("running {}", spec.name));
        let mut row = run_spec(&client, spec, span, args.duration).await?;
        if let (Some(dir), Some(job)) = (&args.fio_dir, spec.fio) {
            let known = fio_done.iter().find(|(j, _)| *j == job).map(|(_, r)| *r);
            row.fio = Some(match known {
                Some(r) => r,
                None => {
                    log(format!("running fio for {}", spec.name));
                    let r = crate::fio::run(job, dir, span, args.duration).await?;
                    fio_done.push((job, r));
                    r
                }
            });
        }
        rows.push(row);
    }
    if let Some(dir) = &args.fio_dir {
        let _ = std::fs::remove_file(dir.join("fio.dat"));
    }
    let t = targets(&rows);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&rows, &t, span)).context("encode json")?
        );
    } else {
        print_table(&rows, &t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_nanos(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_nanos(99));
        assert_eq!(percentile(&[7], 0.99), Duration::from_nanos(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    fn outcome(name: &'static str, ops: u64, p50_us: u64, fio: FioResult) -> Outcome {
        let spec = specs(1).into_iter().find(|s| s.name == name).unwrap();
        Outcome {
            spec,
            ops,
            elapsed: Duration::from_secs(1),
            p50: Duration::from_micros(p50_us),
            p99: Duration::from_micros(p50_us * 2),
            fio: Some(fio),
        }
    }

    #[test]
    fn targets_pass_and_miss() {
        let fio = FioResult {
            iops: 1000.0,
            bytes_per_sec: 400e6,
            p50: Duration::from_micros(100),
            p99: Duration::from_micros(200),
        };
        let rows = vec![
            outcome("randwrite 4k qd1", 10, 150, fio), // 150 <= 200: pass
            outcome("randwrite 4k qd32", 3000, 1, fio), // 3000 < 4000: miss
            outcome("randread 4k qd1", 10, 170, fio),  // 170 > 160: miss
            outcome("randread 4k qd32", 400, 1, fio),  // 400 >= 400: pass
            outcome("seqwrite 1m", 100, 1, fio),       // 104.9 MB/s >= 100: pass
        ];
        let t = targets(&rows);
        let pass: Vec<bool> = t.iter().map(|t| t.pass).collect();
        assert_eq!(pass, vec![true, false, false, true, true]);
    }
}
