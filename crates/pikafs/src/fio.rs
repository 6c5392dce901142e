//! The `fio` reference runs of `pikafs bench volume --fio-dir`: the same
//! patterns on a local file, so our numbers read as ratios to the disk.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// One fio job's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FioResult {
    pub iops: f64,
    pub bytes_per_sec: f64,
    /// Per-IO latency. For synced writes this is completion latency plus the
    /// fdatasync latency at the same percentile, because fio reports the two
    /// apart and an acknowledged pikafs write includes its fsync.
    pub p50: Duration,
    pub p99: Duration,
}

/// The reference jobs, named after the bench rows they stand beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FioJob {
    /// 4 KiB random write, psync, QD1, O_DIRECT, fdatasync after each write.
    RandWriteSyncQd1,
    /// 4 KiB random read, psync, QD1, O_DIRECT.
    RandReadQd1,
    /// 4 KiB random read, libaio, QD32, O_DIRECT.
    RandReadQd32,
    /// 1 MiB sequential write, O_DIRECT, one fsync at the end.
    SeqWrite,
    /// 1 MiB sequential read, O_DIRECT.
    SeqRead,
}

impl FioJob {
    fn args(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    ) {
        // (rw, bs, ioengine, iodepth, extra)
        match self {
            FioJob::RandWriteSyncQd1 => ("randwrite", "4k", "psync", "1", &["--fdatasync=1"]),
            FioJob::RandReadQd1 => ("randread", "4k", "psync", "1", &[]),
            FioJob::RandReadQd32 => ("randread", "4k", "libaio", "32", &[]),
            FioJob::SeqWrite => ("write", "1M", "psync", "1", &["--end_fsync=1"]),
            FioJob::SeqRead => ("read", "1M", "psync", "1", &[]),
        }
    }

    fn is_write(self) -> bool {
        matches!(self, FioJob::RandWriteSyncQd1 | FioJob::SeqWrite)
    }
}

/// True when `fio` can be run.
pub fn available() -> bool {
    std::process::Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs one job on `dir/fio.dat` for `runtime`.
///
/// # Errors
/// fio fails or prints JSON we cannot read.
pub async fn run(
    job: FioJob,
    dir: &Path,
    span: u64,
    runtime: Duration,
) -> anyhow::Result<FioResult> {
    let (rw, bs, engine, depth, extra) = job.args();
    let file = dir.join("fio.dat");
    let mut cmd = tokio::process::Command::new("fio");
    cmd.arg("--name=x")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={span}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--rw={rw}"))
        .arg("--direct=1")
        .arg(format!("--iodepth={depth}"))
        .arg(format!("--ioengine={engine}"))
        .args(extra)
        .arg("--time_based")
        .arg(format!("--runtime={}", runtime.as_secs().max(1)))
        .arg("--output-format=json");
    let out = cmd.output().await.context("run fio (is it on PATH?)")?;
    if !out.status.success() {
        anyhow::bail!(
            "fio {rw} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text, job.is_write()).with_context(|| format!("parse fio {rw} output"))
}

/// Writes all of `dir/fio.dat` (`span` bytes) so fio's read jobs read data
/// that is on the disk.
///
/// # Errors
/// fio fails.
pub async fn prefill(dir: &Path, span: u64) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("fio")
        .arg("--name=fill")
        .arg(format!("--filename={}", dir.join("fio.dat").display()))
        .arg(format!("--size={span}"))
        .arg("--bs=1M")
        .arg("--rw=write")
        .arg("--direct=1")
        .arg("--end_fsync=1")
        .arg("--output-format=json")
        .output()
        .await
        .context("run fio prefill (is it on PATH?)")?;
    anyhow::ensure!(
        out.status.success(),
        "fio prefill exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn pct(v: &Value, key: &str) -> Option<f64> {
    v.get("percentile")?.get(key)?.as_f64()
}

/// Parses fio's `--output-format=json` (any text before the JSON, such as
/// warnings, is skipped).
///
/// # Errors
/// No JSON, or a missing field.
pub fn parse(text: &str, write: bool) -> anyhow::Result<FioResult> {
    let start = text.find('{').context("no JSON in fio output")?;
    let v: Value = serde_json::from_str(&text[start..]).context("decode fio JSON")?;
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .context("no jobs in fio output")?;
    let dir = job
        .get(if write { "write" } else { "read" })
        .context("no io section")?;
    let clat = dir.get("clat_ns").context("no clat_ns")?;
    let mut p50 = pct(clat, "50.000000").context("no clat p50")?;
    let mut p99 = pct(clat, "99.000000").context("no clat p99")?;
    // fdatasync latency is reported apart; a synced write costs both.
    if let Some(sync) = job.get("sync").and_then(|s| s.get("lat_ns")) {
        if sync.get("N").and_then(Value::as_u64).unwrap_or(0) > 1 {
            p50 += pct(sync, "50.000000").unwrap_or(0.0);
            p99 += pct(sync, "99.000000").unwrap_or(0.0);
        }
    }
    Ok(FioResult {
        iops: dir.get("iops").and_then(Value::as_f64).context("no iops")?,
        bytes_per_sec: dir
            .get("bw_bytes")
            .and_then(Value::as_f64)
            .context("no bw_bytes")?,
        p50: Duration::from_nanos(p50 as u64),
        p99: Duration::from_nanos(p99 as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"note: a warning line
{"jobs":[{"jobname":"x",
  "read":{"iops":0.0,"bw_bytes":0,"clat_ns":{"percentile":{"50.000000":0,"99.000000":0}}},
  "write":{"iops":311.75,"bw_bytes":1276940,
     "clat_ns":{"percentile":{"50.000000":92672,"99.000000":150000}}},
  "sync":{"total_ios":0,"lat_ns":{"N":313,"percentile":{"50.000000":3883008,"99.000000":4947968}}}}]}"#;

    #[test]
    fn parses_synced_write_with_sync_latency_added() {
        let r = parse(SAMPLE, true).unwrap();
        assert_eq!(r.iops, 311.75);
        assert_eq!(r.bytes_per_sec, 1276940.0);
        assert_eq!(r.p50, Duration::from_nanos(92672 + 3883008));
        assert_eq!(r.p99, Duration::from_nanos(150000 + 4947968));
    }

    #[test]
    fn rejects_output_without_json() {
        assert!(parse("fio: command failed", false).is_err());
    }
}
