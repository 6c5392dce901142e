//! A slog drain that forwards raft-rs logs to `tracing`.

use std::fmt::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// Forwards every slog record to `tracing` with its key-values flattened into
/// the message. raft's own "error" level covers expected events (a dropped
/// message, a rejected proposal), so it maps to WARN; only Critical is ERROR.
pub struct TracingDrain;

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // raft logs whole entries at debug level; formatting a 1 MiB entry
        // costs milliseconds, so check before formatting anything.
        let enabled = match record.level() {
            Level::Critical => tracing::enabled!(target: "raft", tracing::Level::ERROR),
            Level::Error | Level::Warning => {
                tracing::enabled!(target: "raft", tracing::Level::WARN)
            }
            Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
            Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            Level::Critical => tracing::error!(target: "raft", "{msg}{}", kv.0),
            Level::Error | Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            Level::Info => tracing::info!(target: "raft", "{msg}{}", kv.0),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// The root logger handed to every `RawNode`.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}
