//! [`PikaEnv`]: a RocksDB `Env` whose file system is pikafs under a path
//! prefix and the local disk elsewhere.

use std::ffi::c_void;
use std::sync::Arc;

use crate::error::RocksFsError;
use crate::shim::{self, Context};

/// Anything that owns a mounted pikafs file system: an [`pikafs_fs::Fs`]
/// (tests, tools) or a [`pikafs_fs::Mounted`] (a mount through ctrl, which
/// also holds the lease). The Env keeps it alive as long as RocksDB uses it.
pub trait FsProvider: Send + Sync + 'static {
    /// The mounted file system every pikafs path goes to.
    fn fs(&self) -> &pikafs_fs::Fs;
}

impl FsProvider for pikafs_fs::Fs {
    fn fs(&self) -> &pikafs_fs::Fs {
        self
    }
}

impl FsProvider for pikafs_fs::Mounted {
    fn fs(&self) -> &pikafs_fs::Fs {
        pikafs_fs::Mounted::fs(self)
    }
}

/// A RocksDB Env over pikafs. Paths under `prefix` (for example
/// `/pikafs/db/000012.sst`) are pikafs paths with the prefix stripped
/// (`/db/000012.sst`); all other paths are local files, so a secondary's
/// `secondary_path` and any local `db_log_dir` stay on the local disk.
///
/// Give [`PikaEnv::env`] to `Options::set_env`; the `Options` (and every
/// DB opened with them) keep the Env, and through it the fs, alive. The
/// Env is also findable as `env=pikafs:<prefix>` in a RocksDB options
/// string while this `PikaEnv` lives.
pub struct PikaEnv {
    env: rocksdb::Env,
    prefix: String,
    /// The `rocksdb_env_t*` (for unregistering); owned by `env`.
    raw: usize,
    stats: Arc<crate::stats::Stats>,
}

impl std::fmt::Debug for PikaEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PikaEnv")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl PikaEnv {
    /// Builds the FileSystem and Env. `prefix` is an absolute path such as
    /// `<data_dir>/pikafs` (a trailing `/` is ignored). It must be a path
    /// this process may create on the local disk: the `rocksdb` crate runs
    /// `std::fs::create_dir_all` on every DB path before RocksDB sees it
    /// (those local directories stay empty). It hides any local tree below
    /// it.
    ///
    /// # Errors
    /// [`RocksFsError::InvalidPrefix`] for `/`, a relative path, a NUL, `.`
    /// or `..`; [`RocksFsError::EnvCreate`] when the shim fails.
    pub fn new(provider: Arc<dyn FsProvider>, prefix: &str) -> Result<PikaEnv, RocksFsError> {
        let prefix = normalize_prefix(prefix)?;
        let cx = Context::new(provider);
        let stats = cx.stats.clone();
        let cbs = shim::callbacks(Box::new(cx));
        // SAFETY: the callbacks match cpp/shim.h; the shim copies the table
        // and takes ownership of the context (freeing it through drop_ctx
        // even on failure); the strings are valid for the call.
        let raw = unsafe {
            shim::pikafs_env_create(
                &cbs,
                prefix.as_ptr().cast(),
                prefix.len(),
                prefix.as_ptr().cast(),
                prefix.len(),
            )
        };
        if raw.is_null() {
            return Err(RocksFsError::EnvCreate);
        }
        // SAFETY: `raw` is a fresh `rocksdb_env_t` (layout of db/c.cc,
        // `is_default` false) that nobody else owns; `rocksdb::Env` frees it
        // with `rocksdb_env_destroy`.
        let env = unsafe { rocksdb::Env::from_raw(raw.cast()) };
        tracing::debug!(prefix, "pikafs RocksDB env created");
        Ok(PikaEnv {
            env,
            prefix,
            raw: raw as usize,
            stats,
        })
    }

    /// This Env's file-operation counters since it was created (every DB
    /// using it together).
    pub fn op_stats(&self) -> crate::OpStats {
        self.stats.snapshot()
    }

    /// The Env, for `Options::set_env`.
    pub fn env(&self) -> &rocksdb::Env {
        &self.env
    }

    /// The prefix, as normalised (`/pikafs`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The RocksDB path of fs path `fs_path`: `"/db"` → `"/pikafs/db"`.
    pub fn path(&self, fs_path: &str) -> String {
        let rest = fs_path.trim_start_matches('/');
        if rest.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The options-string value that names this Env: `pikafs:<prefix>`,
    /// as in `"env=pikafs:/pikafs;create_if_missing=true"`.
    pub fn uri(&self) -> String {
        format!("pikafs:{}", self.prefix)
    }
}

impl Drop for PikaEnv {
    fn drop(&mut self) {
        // SAFETY: `raw` is still alive (`self.env` is dropped after this);
        // the shim only compares it with its registry entry.
        unsafe {
            shim::pikafs_env_unregister(
                self.prefix.as_ptr().cast(),
                self.prefix.len(),
                self.raw as *mut c_void,
            )
        };
    }
}

fn normalize_prefix(p: &str) -> Result<String, RocksFsError> {
    let bad = |why| RocksFsError::InvalidPrefix {
        prefix: p.to_string(),
        why,
    };
    if !p.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if p.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return Err(bad(
            "cannot be the root: every local path would be routed to pikafs",
        ));
    }
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(bad("must not contain . or .."));
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_normalised_and_validated() {
        assert_eq!(normalize_prefix("/pikafs/").unwrap(), "/pikafs");
        assert_eq!(normalize_prefix("//a//b").unwrap(), "/a/b");
        for bad in ["", "/", "pikafs", "/a/../b", "/a/./b", "/a\0"] {
            assert!(normalize_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }
}
