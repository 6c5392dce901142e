//! `pikafs volume ...`: volume administration at ctrl, and raw IO through
//! the volume client.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use pikafs_proto::ctrlpb::{CreateVolumeRequest, Empty, GrowVolumeRequest, VolumeInfo, VolumeName};
use pikafs_volume::{OpenOptions, VolumeClient};

use crate::cluster::{connect, status_err, volume_json};
use crate::units::{fmt_size, parse_size};

/// Bytes moved per volume-client call by `read` and `write`, so memory stays
/// bounded whatever `--len` is.
const IO_STEP: usize = 16 << 20;

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        name: String,
        /// Size, e.g. 10GiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Grow a volume online to a new, larger size.
    Grow {
        name: String,
        /// New size, e.g. 20GiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// List volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a volume and its routing table.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume.
    Rm { name: String },
    /// Raise the volume's epoch, fencing older writers; prints the new epoch.
    BumpEpoch { name: String },
    /// Read raw bytes (to stdout by default).
    Read {
        name: String,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        len: u64,
        /// Write the bytes to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write raw bytes (from stdin by default); prints nothing on success.
    Write {
        name: String,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Read the bytes from this file instead of stdin.
        #[arg(long = "in")]
        input: Option<PathBuf>,
        /// Write with this epoch instead of ctrl's current one.
        #[arg(long)]
        epoch: Option<u64>,
        /// Fence every copyset with our epoch before writing.
        #[arg(long)]
        fence: bool,
    },
}

fn print_volume(v: &VolumeInfo) {
    println!("volume     {} (id {})", v.name, v.volume_id);
    println!(
        "size       {} ({} bytes)",
        fmt_size(v.size_bytes),
        v.size_bytes
    );
    println!("chunk size {}", fmt_size(v.chunk_size));
    println!("epoch      {}", v.epoch);
    println!("copysets   {}", v.copysets.len());
    println!("{:>10}  {:>8}  members", "copyset", "leader");
    for c in &v.copysets {
        let members: Vec<String> = c
            .members
            .iter()
            .map(|m| format!("{}@{}", m.server_id, m.addr))
            .collect();
        let leader = if c.leader_id == 0 {
            "-".to_string()
        } else {
            c.leader_id.to_string()
        };
        println!("{:>10}  {:>8}  {}", c.copyset_id, leader, members.join(" "));
    }
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encode json")?
    );
    Ok(())
}

/// Runs one `pikafs volume` subcommand against ctrl at `ctrl_url`.
pub async fn run(cmd: VolumeCmd, ctrl_url: &str) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create { name, size } => {
            let v = connect(ctrl_url)
                .await?
                .create_volume(CreateVolumeRequest {
                    name: name.clone(),
                    size_bytes: size,
                })
                .await
                .map_err(|s| status_err(&format!("create volume {name:?}"), s))?
                .into_inner();
            println!(
                "created volume {} (id {}, {})",
                v.name,
                v.volume_id,
                fmt_size(v.size_bytes)
            );
        }
        VolumeCmd::Grow { name, size } => {
            let v = connect(ctrl_url)
                .await?
                .grow_volume(GrowVolumeRequest {
                    name: name.clone(),
                    new_size_bytes: size,
                })
                .await
                .map_err(|s| status_err(&format!("grow volume {name:?}"), s))?
                .into_inner();
            println!("volume {} is now {}", v.name, fmt_size(v.size_bytes));
        }
        VolumeCmd::Ls { json } => {
            let list = connect(ctrl_url)
                .await?
                .list_volumes(Empty {})
                .await
                .map_err(|s| status_err("list volumes", s))?
                .into_inner()
                .volumes;
            if json {
                // Shaped like ListVolumesResponse.
                print_json(&serde_json::json!({
                    "volumes": list.iter().map(volume_json).collect::<Vec<_>>()
                }))?;
            } else {
                println!(
                    "{:>6}  {:<24}  {:>12}  {:>6}  {:>8}",
                    "id", "name", "size", "epoch", "copysets"
                );
                for v in &list {
                    println!(
                        "{:>6}  {:<24}  {:>12}  {:>6}  {:>8}",
                        v.volume_id,
                        v.name,
                        fmt_size(v.size_bytes),
                        v.epoch,
                        v.copysets.len()
                    );
                }
            }
        }
        VolumeCmd::Info { name, json } => {
            let v = get_volume(ctrl_url, &name).await?;
            if json {
                print_json(&volume_json(&v))?;
            } else {
                print_volume(&v);
            }
        }
        VolumeCmd::Rm { name } => {
            connect(ctrl_url)
                .await?
                .delete_volume(VolumeName { name: name.clone() })
                .await
                .map_err(|s| status_err(&format!("delete volume {name:?}"), s))?;
            println!("deleted volume {name}");
        }
        VolumeCmd::BumpEpoch { name } => {
            let v = connect(ctrl_url)
                .await?
                .bump_epoch(VolumeName { name: name.clone() })
                .await
                .map_err(|s| status_err(&format!("bump epoch of {name:?}"), s))?
                .into_inner();
            println!("{}", v.epoch);
        }
        VolumeCmd::Read {
            name,
            offset,
            len,
            out,
        } => {
            let client = open(ctrl_url, &name, None).await?;
            let mut sink: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut pos = 0u64;
            while pos < len {
                let n = (len - pos).min(IO_STEP as u64) as usize;
                let data = client
                    .read(offset + pos, n)
                    .await
                    .with_context(|| format!("read {n} bytes at {}", offset + pos))?;
                sink.write_all(&data).context("write output")?;
                pos += n as u64;
            }
            sink.flush().context("flush output")?;
        }
        VolumeCmd::Write {
            name,
            offset,
            input,
            epoch,
            fence,
        } => {
            let mut data = Vec::new();
            match &input {
                Some(p) => {
                    data = std::fs::read(p).with_context(|| format!("read {}", p.display()))?
                }
                None => {
                    std::io::stdin()
                        .lock()
                        .read_to_end(&mut data)
                        .context("read stdin")?;
                }
            }
            let client = open(ctrl_url, &name, epoch).await?;
            if fence {
                client.fence().await.context("fence volume")?;
            }
            for (i, part) in data.chunks(IO_STEP).enumerate() {
                let at = offset + (i * IO_STEP) as u64;
                client
                    .write(at, part)
                    .await
                    .with_context(|| format!("write {} bytes at {at}", part.len()))?;
            }
        }
    }
    Ok(())
}

async fn get_volume(ctrl_url: &str, name: &str) -> anyhow::Result<VolumeInfo> {
    Ok(connect(ctrl_url)
        .await?
        .get_volume(VolumeName {
            name: name.to_string(),
        })
        .await
        .map_err(|s| status_err(&format!("get volume {name:?}"), s))?
        .into_inner())
}

/// Opens `name` with the volume client.
///
/// # Errors
/// The volume does not exist or ctrl cannot be reached.
pub async fn open(ctrl_url: &str, name: &str, epoch: Option<u64>) -> anyhow::Result<VolumeClient> {
    let opts = OpenOptions {
        epoch,
        ..OpenOptions::default()
    };
    VolumeClient::open(ctrl_url, name, opts)
        .await
        .with_context(|| format!("open volume {name:?}"))
}
