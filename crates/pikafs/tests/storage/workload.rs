//! A write-and-verify workload with a model of what may be on disk.
//!
//! The volume is divided into slots of one 4 KiB block each. Every write
//! stores a block that names its slot and a generation and is otherwise a
//! pseudo-random fill of both, so a torn, misplaced or corrupt block is
//! recognised. Per slot the model keeps the generations that may legally be
//! read back: the last acknowledged one plus any later writes whose outcome
//! is unknown (they failed or timed out). A slot's lock is held across each
//! write and each verifying read, so readers never race writers of the
//! same slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pikafs_volume::VolumeClient;
use tokio::sync::Mutex;

pub const BLOCK: usize = 4096;

#[derive(Default, Debug, Clone)]
pub struct Slot {
    /// Generations that may be read back; empty = never acknowledged,
    /// which also allows zeros.
    pub possible: Vec<u64>,
    pub acked: bool,
    next_gen: u64,
}

pub struct Workload {
    pub slots: Vec<Mutex<Slot>>,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub verified_reads: AtomicU64,
    stop: AtomicBool,
    volume_size: u64,
}

/// Deterministic content of block (slot, gen).
pub fn block(slot: u64, gen: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(&slot.to_le_bytes());
    b[8..16].copy_from_slice(&gen.to_le_bytes());
    let mut x = slot.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.wrapping_add(1);
    for chunk in b[16..].chunks_mut(8) {
        // xorshift64*: cheap and good enough to make every block distinct.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    b
}

impl Workload {
    pub fn new(slots: usize, volume_size: u64) -> Arc<Workload> {
        Arc::new(Workload {
            slots: (0..slots).map(|_| Mutex::new(Slot::default())).collect(),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            verified_reads: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            volume_size,
        })
    }

    /// Byte offset of slot `k`: spread over the whole volume so that every
    /// chunk, and so every copyset, gets traffic.
    pub fn offset(&self, k: usize) -> u64 {
        let blocks = self.volume_size / BLOCK as u64;
        (k as u64 * 1025 % blocks) * BLOCK as u64
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Writes one new generation to slot `k` and records the outcome.
    pub async fn write_slot(&self, client: &VolumeClient, k: usize) -> bool {
        let mut s = self.slots[k].lock().await;
        s.next_gen += 1;
        let gen = s.next_gen;
        let data = block(k as u64, gen);
        let res =
            tokio::time::timeout(Duration::from_secs(40), client.write(self.offset(k), &data))
                .await;
        match res {
            Ok(Ok(())) => {
                s.possible = vec![gen];
                s.acked = true;
                self.acked.fetch_add(1, Ordering::SeqCst);
                true
            }
            _ => {
                s.possible.push(gen);
                self.failed.fetch_add(1, Ordering::SeqCst);
                false
            }
        }
    }

    /// Reads slot `k` and checks it against the model. Returns an error
    /// describing any violation; a read error is returned as such.
    pub async fn verify_slot(&self, client: &VolumeClient, k: usize) -> anyhow::Result<()> {
        let s = self.slots[k].lock().await;
        let got = client
            .read(self.offset(k), BLOCK)
            .await
            .map_err(|e| anyhow::anyhow!("read slot {k}: {e}"))?;
        check_block(k, &s, &got)?;
        self.verified_reads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Starts `writers` tasks writing random slots until [`Workload::stop`].
    pub fn spawn_writers(
        self: &Arc<Self>,
        client: &VolumeClient,
        writers: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..writers)
            .map(|w| {
                let me = self.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let mut i = w;
                    while !me.stopped() {
                        // Each writer owns the slots congruent to w.
                        i = (i + writers * 7) % me.slots.len();
                        let k = i - i % writers + w;
                        if k < me.slots.len() && !me.write_slot(&client, k).await {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect()
    }

    /// Starts one reader that verifies random slots until stopped; it
    /// returns the first violation it saw, if any. Read *errors* during a
    /// failover are tolerated (counted), wrong data never is.
    pub fn spawn_verifier(
        self: &Arc<Self>,
        client: &VolumeClient,
    ) -> tokio::task::JoinHandle<Result<u64, String>> {
        let me = self.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut k = 0usize;
            let mut read_errors = 0;
            while !me.stopped() {
                k = (k + 13) % me.slots.len();
                let s = me.slots[k].lock().await;
                match client.read(me.offset(k), BLOCK).await {
                    Ok(got) => {
                        if let Err(e) = check_block(k, &s, &got) {
                            return Err(format!("{e:#}"));
                        }
                        me.verified_reads.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => read_errors += 1,
                }
                drop(s);
                tokio::task::yield_now().await;
            }
            Ok(read_errors)
        })
    }

    /// Verifies every slot; all reads must succeed.
    pub async fn verify_all(&self, client: &VolumeClient) -> anyhow::Result<()> {
        for k in 0..self.slots.len() {
            self.verify_slot(client, k).await?;
        }
        Ok(())
    }

    pub fn acked_count(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
}

fn check_block(k: usize, s: &Slot, got: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(got.len() == BLOCK, "slot {k}: read {} bytes", got.len());
    if got.iter().all(|&b| b == 0) {
        anyhow::ensure!(
            !s.acked,
            "slot {k}: acknowledged generation {:?} lost (read zeros)",
            s.possible
        );
        return Ok(());
    }
    let slot = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
    let gen = u64::from_le_bytes(got[8..16].try_into().expect("8 bytes"));
    anyhow::ensure!(slot == k as u64, "slot {k}: holds a block of slot {slot}");
    anyhow::ensure!(
        got == block(slot, gen).as_slice(),
        "slot {k}: generation {gen} is corrupt or torn"
    );
    anyhow::ensure!(
        s.possible.contains(&gen),
        "slot {k}: read generation {gen}, allowed {:?}",
        s.possible
    );
    Ok(())
}

#[test]
fn blocks_are_distinct_and_checked() {
    let mut s = Slot {
        possible: vec![2],
        acked: true,
        next_gen: 2,
    };
    check_block(5, &s, &block(5, 2)).unwrap();
    assert!(
        check_block(5, &s, &block(5, 1)).is_err(),
        "stale generation"
    );
    assert!(check_block(5, &s, &block(6, 2)).is_err(), "wrong slot");
    assert!(check_block(5, &s, &vec![0; BLOCK]).is_err(), "lost ack");
    let mut torn = block(5, 2);
    torn[3000] ^= 1;
    assert!(check_block(5, &s, &torn).is_err(), "corrupt byte");
    s.acked = false;
    s.possible.clear();
    check_block(5, &s, &vec![0; BLOCK]).unwrap();
}
