//! kv nodes (`pikafs kv --volume`) on a test cluster's volume.

use std::path::Path;

use crate::process::Proc;

/// Starts `pikafs kv --role <role> --volume <volume>` listening on
/// 127.0.0.1:`port`, with its node-private files in `local` (created) and
/// its log beside it (`<local>.<port>.<role>.log`). A small memory budget
/// keeps many nodes per test affordable; `extra` flags are appended.
///
/// # Errors
/// `local` cannot be created or the process cannot be started.
pub fn spawn_kv(
    ctrl: &str,
    volume: &str,
    role: &str,
    port: u16,
    local: &Path,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(local)?;
    let listen = format!("127.0.0.1:{port}");
    let local_dir = local.display().to_string();
    let args: Vec<String> = [
        "--ctrl",
        ctrl,
        "kv",
        "--role",
        role,
        "--volume",
        volume,
        "--listen",
        &listen,
        "--local-dir",
        &local_dir,
        "--memory",
        "64MiB",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let log = local.with_extension(format!("{port}.{role}.log"));
    Proc::spawn(&format!("kv-{role}-{port}"), &args, &log)
}
