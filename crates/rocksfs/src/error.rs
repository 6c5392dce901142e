//! Errors of building a pikafs Env.

/// What [`crate::PikaEnv::new`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RocksFsError {
    /// The prefix is not an absolute path of at least one name (`/pikafs`),
    /// or contains a NUL, `.` or `..`.
    #[error("invalid pikafs path prefix {prefix:?}: {why}")]
    InvalidPrefix { prefix: String, why: &'static str },
    /// The C++ shim could not build the FileSystem or the Env (it caught a
    /// C++ exception, in practice an allocation failure).
    #[error("the RocksDB shim failed to create the pikafs Env")]
    EnvCreate,
}
