//! Sequential throughput through FUSE against the native [`Fs`] API on
//! the same fs and device, in the same run (issue 3's "FUSE ≥ 50% of
//! native" target).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use pikafs_fs::{Fs, FsError, OpenFlags};

/// IO size of every step, for both paths.
const IO: usize = 1 << 20;

/// MiB/s of each pass.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub bytes: u64,
    pub native_write_mibs: f64,
    pub native_read_mibs: f64,
    pub fuse_write_mibs: f64,
    pub fuse_read_mibs: f64,
}

impl BenchReport {
    /// FUSE write throughput as a fraction of native.
    pub fn write_ratio(&self) -> f64 {
        self.fuse_write_mibs / self.native_write_mibs
    }
    /// FUSE read throughput as a fraction of native.
    pub fn read_ratio(&self) -> f64 {
        self.fuse_read_mibs / self.native_read_mibs
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sequential {} MiB, {} KiB IOs",
            self.bytes >> 20,
            IO >> 10
        )?;
        writeln!(f, "| path | write MiB/s | read MiB/s |")?;
        writeln!(f, "|---|---|---|")?;
        writeln!(
            f,
            "| native Fs API | {:.0} | {:.0} |",
            self.native_write_mibs, self.native_read_mibs
        )?;
        writeln!(
            f,
            "| FUSE | {:.0} | {:.0} |",
            self.fuse_write_mibs, self.fuse_read_mibs
        )?;
        write!(
            f,
            "| FUSE / native | {:.0}% | {:.0}% |",
            self.write_ratio() * 100.0,
            self.read_ratio() * 100.0
        )
    }
}

fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

fn pattern(i: u64) -> Vec<u8> {
    (0..IO).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Writes (then fsyncs) and reads back `bytes` sequentially, first with
/// the native API on `fs`, then through the FUSE mount of the same `fs`
/// at `mountpoint`; removes both files.
///
/// # Errors
/// Any fs or IO error, or a read-back mismatch (`InvalidData`).
pub fn bench(fs: &Fs, mountpoint: &Path, bytes: u64) -> std::io::Result<BenchReport> {
    let steps = bytes.div_ceil(IO as u64);
    let bytes = steps * IO as u64;
    let buf: Vec<Vec<u8>> = (0..4).map(pattern).collect();
    let fserr = |e: FsError| std::io::Error::other(e.to_string());
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());

    let native = "/.pikafs-bench-native";
    let t = Instant::now();
    {
        let f = fs.open(native, OpenFlags::create()).map_err(fserr)?;
        f.truncate(0).map_err(fserr)?;
        for i in 0..steps {
            f.pwrite(i * IO as u64, &buf[(i % 4) as usize])
                .map_err(fserr)?;
        }
        f.fsync().map_err(fserr)?;
    }
    let native_write = t.elapsed();
    let t = Instant::now();
    {
        let f = fs.open(native, OpenFlags::read()).map_err(fserr)?;
        for i in 0..steps {
            let got = f.pread(i * IO as u64, IO).map_err(fserr)?;
            if got != buf[(i % 4) as usize] {
                return Err(bad("native read-back mismatch"));
            }
        }
    }
    let native_read = t.elapsed();
    fs.unlink(native).map_err(fserr)?;

    let path = mountpoint.join(".pikafs-bench-fuse");
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&path)?;
        for i in 0..steps {
            f.write_all(&buf[(i % 4) as usize])?;
        }
        f.sync_all()?;
    }
    let fuse_write = t.elapsed();
    {
        // The RW mount keeps written pages cached; drop them so the read
        // pass goes through FUSE to the fs like the native one does.
        let f = std::fs::File::open(&path)?;
        // SAFETY: a valid fd and plain integers.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    let t = Instant::now();
    {
        let mut f = std::fs::File::open(&path)?;
        let mut got = vec![0u8; IO];
        for i in 0..steps {
            f.read_exact(&mut got)?;
            if got != buf[(i % 4) as usize] {
                return Err(bad("FUSE read-back mismatch"));
            }
        }
    }
    let fuse_read = t.elapsed();
    std::fs::remove_file(&path)?;

    Ok(BenchReport {
        bytes,
        native_write_mibs: mibs(bytes, native_write),
        native_read_mibs: mibs(bytes, native_read),
        fuse_write_mibs: mibs(bytes, fuse_write),
        fuse_read_mibs: mibs(bytes, fuse_read),
    })
}
