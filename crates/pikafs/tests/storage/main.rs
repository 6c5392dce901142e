//! Integration tests of the storage core: real `pikafs ctrl` and
//! `pikafs chunkserver` processes on 127.0.0.1, driven through the volume
//! client, the CLI and the raw wire protocol. Faults are real signals.

mod bad_input;
mod cli;
mod corruption;
mod fencing;
mod playground;
mod replication;
mod workload;
