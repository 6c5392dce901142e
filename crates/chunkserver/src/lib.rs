//! pikafs chunkserver (placeholder docs, rewritten below).
pub mod config;
pub mod error;
pub mod logger;
pub mod metrics;
pub mod wal;
