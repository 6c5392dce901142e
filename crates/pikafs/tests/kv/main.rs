//! Integration tests of `pikafs kv`: real processes on free ports, driven
//! through the Rust `redis` client, raw TCP, `redis-cli` and
//! `redis-benchmark`. Expected replies follow the Redis 7 documentation.

mod blocking;
mod common;
mod durability;
mod hash;
mod keys;
mod list;
mod ro;
mod scan_churn;
mod seq;
mod server;
mod set;
mod strings;
mod txn;
mod volume;
mod zset;
