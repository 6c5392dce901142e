//! Integration tests of the file system on a real cluster: `pikafs ctrl`
//! and `pikafs chunkserver` processes via testkit, mounts through ctrl
//! leases ([`pikafs_fs::Mounted`]) in this process, and `pikafs fs`
//! processes (the tools, and `fs stress` as a writer to SIGKILL or
//! SIGSTOP).

mod cli;
mod common;
mod crash;
mod follow;
mod orphans;
mod ro_lease;
mod space;
