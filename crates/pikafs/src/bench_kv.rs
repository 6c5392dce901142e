//! `pikafs bench kv-lag`: how long a write acknowledged by the RW kv node
//! takes to become readable on an RO node, while writers load the RW.
//!
//! Writers SET keys on the RW in pipelined rounds; one probe loop does
//! `SET probe:<run>:<i> <i>` on the RW, and from the moment the SET is
//! acknowledged polls `GET` on the RO (every 0.2 ms, bounded by
//! `--probe-timeout`) until it returns the value. The lag of a probe is
//! visible-on-RO minus acknowledged-by-RW. Speaks RESP2 directly (a few
//! lines; no client library in the binary).
//!
//! The probe runs on its own thread and single-threaded runtime, apart
//! from the writers' runtime: otherwise a probe reply that has arrived
//! waits in the same run queue as the writers' tasks, and the measured lag
//! includes the bench's own scheduling delay.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::units::parse_duration;

#[derive(Debug, Args)]
pub struct KvLagArgs {
    /// The RW kv node (host:port).
    #[arg(long)]
    pub rw: String,
    /// The RO kv node (host:port) on the same data.
    #[arg(long)]
    pub ro: String,
    /// How long to run.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Writer connections loading the RW.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// SETs per pipelined round of each writer.
    #[arg(long, default_value_t = 32)]
    pub pipeline: usize,
    /// Value size of the writers' SETs, in bytes.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Distinct keys the writers cycle through.
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// Give up on one probe after this long (reported as a miss).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub probe_timeout: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A RESP2 reply, as much as this bench needs.
#[derive(Debug, PartialEq)]
enum Resp {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

/// One RESP connection.
struct Conn {
    io: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl Conn {
    async fn connect(addr: &str) -> anyhow::Result<Conn> {
        let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect {addr}: timed out"))?
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::with_capacity(64 * 1024, s),
            out: Vec::with_capacity(64 * 1024),
        })
    }

    /// Buffers one command (sent by `flush`).
    fn push(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.io.get_mut().write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    async fn read(&mut self) -> anyhow::Result<Resp> {
        let mut line = Vec::new();
        let n = self.io.read_until(b'\n', &mut line).await?;
        anyhow::ensure!(n >= 3 && line.ends_with(b"\r\n"), "connection closed");
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        Ok(match line[0] {
            b'+' => Resp::Status(body),
            b'-' => Resp::Error(body),
            b':' => Resp::Int(body.parse().context("bad integer reply")?),
            b'$' => {
                let len: i64 = body.parse().context("bad bulk length")?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut v = vec![0u8; len as usize + 2];
                    self.io.read_exact(&mut v).await?;
                    v.truncate(len as usize);
                    Resp::Bulk(Some(v))
                }
            }
            b'*' => {
                let len: i64 = body.parse().context("bad array length")?;
                let mut items = Vec::new();
                for _ in 0..len.max(0) {
                    items.push(Box::pin(self.read()).await?);
                }
                Resp::Array(items)
            }
            c => anyhow::bail!("unexpected reply type byte {c:#x}"),
        })
    }

    async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Resp> {
        self.push(args);
        self.flush().await?;
        match self.read().await? {
            Resp::Error(e) => anyhow::bail!("{e}"),
            r => Ok(r),
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `pikafs bench kv-lag`.
pub async fn run_lag(args: KvLagArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.pipeline >= 1, "--pipeline must be at least 1");
    anyhow::ensure!(args.keyspace >= 1, "--keyspace must be at least 1");
    // Fail early and clearly if either node is not there.
    let mut probe_rw = Conn::connect(&args.rw).await?;
    let mut probe_ro = Conn::connect(&args.ro).await?;
    probe_rw.call(&[b"PING"]).await.context("PING the RW")?;
    probe_ro.call(&[b"PING"]).await.context("PING the RO")?;
    drop((probe_rw, probe_ro));

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let mut c = Conn::connect(&args.rw).await?;
        let (stop, written) = (stop.clone(), written.clone());
        let (pipeline, keyspace) = (args.pipeline, args.keyspace);
        let value = vec![b'x'; args.value_size];
        writers.push(tokio::spawn(async move {
            let mut i: u64 = w as u64 * 7919;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..pipeline {
                    let key = format!("lag:{}", i % keyspace);
                    c.push(&[b"SET", key.as_bytes(), &value]);
                    i += 1;
                }
                c.flush().await?;
                for _ in 0..pipeline {
                    if let Resp::Error(e) = c.read().await? {
                        anyhow::bail!("writer SET failed: {e}");
                    }
                }
                written.fetch_add(pipeline as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }

    let (rw, ro) = (args.rw.clone(), args.ro.clone());
    let (duration, probe_timeout) = (args.duration, args.probe_timeout);
    let start = Instant::now();
    let probe = std::thread::Builder::new()
        .name("kv-lag-probe".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("probe runtime")?;
            rt.block_on(probe_loop(&rw, &ro, duration, probe_timeout))
        })
        .context("spawn the probe thread")?;
    let probed = tokio::task::spawn_blocking(move || probe.join()).await;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let Probed {
        mut lags,
        mut acks,
        misses,
        polls,
    } = match probed {
        Ok(Ok(r)) => r?,
        _ => anyhow::bail!("the probe thread panicked"),
    };
    for w in writers {
        match tokio::time::timeout(Duration::from_secs(30), w).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.context("writer")),
            Ok(Err(e)) => anyhow::bail!("writer task: {e}"),
            Err(_) => anyhow::bail!("a writer did not stop within 30 s"),
        }
    }
    lags.sort();
    acks.sort();
    let rate = written.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    let (p50, p99, max) = (pct(&lags, 0.5), pct(&lags, 0.99), pct(&lags, 1.0));
    if args.json {
        println!(
            "{}",
            json!({
                "probes": lags.len(),
                "misses": misses,
                "ro_polls": polls,
                "lag_ms": {"p50": ms(p50), "p99": ms(p99), "max": ms(max)},
                "probe_set_ack_ms": {"p50": ms(pct(&acks, 0.5)), "p99": ms(pct(&acks, 0.99))},
                "writers": args.writers,
                "pipeline": args.pipeline,
                "write_rate_per_s": rate,
                "seconds": elapsed.as_secs_f64(),
            })
        );
    } else {
        println!(
            "kv-lag: {} probes ({misses} missed after {:?}), {} writers x pipeline {}, {:.1} s",
            lags.len(),
            args.probe_timeout,
            args.writers,
            args.pipeline,
            elapsed.as_secs_f64()
        );
        println!(
            "  RO visibility lag after RW ack: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            ms(p50),
            ms(p99),
            ms(max)
        );
        println!(
            "  probe SET ack on RW: p50 {:.2} ms  p99 {:.2} ms",
            ms(pct(&acks, 0.5)),
            ms(pct(&acks, 0.99))
        );
        println!("  write rate achieved: {rate:.0} SET/s");
        println!(
            "  target p99 <= 20 ms: {}",
            if misses == 0 && p99 <= Duration::from_millis(20) {
                "PASS"
            } else {
                "MISS"
            }
        );
    }
    Ok(())
}

/// Pause between two GETs of one probe on the RO: the lag is measured to
/// within this plus one round trip.
const POLL_PAUSE: Duration = Duration::from_micros(200);

/// What the probe loop measured.
struct Probed {
    /// Visible on RO minus acknowledged by RW, per probe seen.
    lags: Vec<Duration>,
    /// The probe SET's round trip on the RW.
    acks: Vec<Duration>,
    misses: u64,
    polls: u64,
}

/// The probe: SET on the RW, then GET on the RO until the value shows,
/// until `duration` has passed. Runs on its own runtime (see the module
/// doc).
async fn probe_loop(
    rw: &str,
    ro: &str,
    duration: Duration,
    probe_timeout: Duration,
) -> anyhow::Result<Probed> {
    let mut probe_rw = Conn::connect(rw).await?;
    let mut probe_ro = Conn::connect(ro).await?;
    let run = rand::random::<u32>();
    let start = Instant::now();
    let mut lags = Vec::new();
    let mut acks = Vec::new();
    let mut misses = 0u64;
    let mut polls = 0u64;
    let mut i = 0u64;
    while start.elapsed() < duration {
        let key = format!("probe:{run}:{i}");
        let val = i.to_string();
        let t0 = Instant::now();
        probe_rw
            .call(&[b"SET", key.as_bytes(), val.as_bytes()])
            .await
            .context("probe SET on the RW")?;
        let acked = Instant::now();
        acks.push(acked - t0);
        let seen = loop {
            polls += 1;
            match probe_ro.call(&[b"GET", key.as_bytes()]).await? {
                Resp::Bulk(Some(v)) if v == val.as_bytes() => break Some(Instant::now()),
                _ => {}
            }
            if acked.elapsed() > probe_timeout {
                break None;
            }
            // Not a busy loop: back to back, the polls are a load of their
            // own (tens of thousands of GETs a second, a whole core of a
            // small machine, taken from the nodes being measured). A
            // blocking sleep is fine here: this runtime has nothing else
            // to run, and it is finer than tokio's 1 ms timer.
            std::thread::sleep(POLL_PAUSE);
        };
        match seen {
            Some(t) => lags.push(t - acked),
            None => misses += 1,
        }
        i += 1;
        // Probes sample the lag; they should not be the load. A random
        // pause, so probes do not phase-lock to a periodic catch-up (a
        // probe sent right after one would always wait a full period).
        let pause = rand::random::<u64>() % 20_000;
        tokio::time::sleep(Duration::from_micros(2_000 + pause)).await;
    }
    Ok(Probed {
        lags,
        acks,
        misses,
        polls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_sorted_ranks() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(pct(&v, 0.5), Duration::from_millis(51));
        assert_eq!(pct(&v, 0.99), Duration::from_millis(99));
        assert_eq!(pct(&v, 1.0), Duration::from_millis(100));
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
    }
}
