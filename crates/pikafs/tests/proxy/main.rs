//! Integration tests of `pikafs proxy`: real `pikafs kv` nodes (RW + RO
//! secondaries on one temp dir) behind a real proxy with a static topology
//! (`ctrl.rs`: the topology from a real ctrl), driven through the `redis`
//! crate, raw TCP and `redis-cli`.

mod common;
mod ctrl;
mod routing;
mod ryw;
mod topology;
