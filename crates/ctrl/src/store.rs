//! Durable cluster map in redb: counters, servers, copysets, volumes.
//!
//! Every mutation is a batch of [`Mutation`]s applied in one write
//! transaction with redb's default (immediate) durability, so when
//! [`Store::apply`] returns the change survives a crash. The whole map is
//! small and is loaded into memory once at start ([`Store::open`]).

use std::collections::BTreeMap;
use std::path::Path;

use pikafs_proto::{CopysetId, ServerId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StoreError;
use crate::record::{CopysetRecord, ServerRecord, VolumeRecord};

const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const SERVERS: TableDefinition<u64, &[u8]> = TableDefinition::new("servers");
const COPYSETS: TableDefinition<u64, &[u8]> = TableDefinition::new("copysets");
const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");

/// Names of the id counters in the `counters` table. Each holds the next id
/// to hand out (ids start at 1; 0 means "none" on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    Server,
    Copyset,
    Volume,
}

impl Counter {
    fn key(self) -> &'static str {
        match self {
            Counter::Server => "next_server_id",
            Counter::Copyset => "next_copyset_id",
            Counter::Volume => "next_volume_id",
        }
    }
}

/// Next ids to hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub next_server: u64,
    pub next_copyset: u64,
    pub next_volume: u64,
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        match c {
            Counter::Server => self.next_server,
            Counter::Copyset => self.next_copyset,
            Counter::Volume => self.next_volume,
        }
    }

    pub fn set(&mut self, c: Counter, v: u64) {
        match c {
            Counter::Server => self.next_server = v,
            Counter::Copyset => self.next_copyset = v,
            Counter::Volume => self.next_volume = v,
        }
    }
}

/// One change to the persistent map.
#[derive(Debug, Clone)]
pub enum Mutation {
    Counter(Counter, u64),
    Server(ServerId, ServerRecord),
    Copyset(CopysetId, CopysetRecord),
    Volume(String, VolumeRecord),
    DeleteVolume(String),
}

/// Everything persisted, as loaded at start.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub servers: BTreeMap<ServerId, ServerRecord>,
    pub copysets: BTreeMap<CopysetId, CopysetRecord>,
    pub volumes: BTreeMap<String, VolumeRecord>,
}

/// The redb database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path` and loads it.
    ///
    /// # Errors
    /// redb cannot open the file (for example another ctrl holds it), or a
    /// record does not decode.
    pub fn open(path: &Path) -> Result<(Store, Snapshot), StoreError> {
        let db = Database::create(path)?;
        // Create the tables on first start so reads never see them missing.
        let txn = db.begin_write()?;
        {
            txn.open_table(COUNTERS)?;
            txn.open_table(SERVERS)?;
            txn.open_table(COPYSETS)?;
            txn.open_table(VOLUMES)?;
        }
        txn.commit()?;
        let store = Store { db };
        let snap = store.load()?;
        Ok((store, snap))
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read()?;
        let counters_t = txn.open_table(COUNTERS)?;
        let mut counters = Counters {
            next_server: 1,
            next_copyset: 1,
            next_volume: 1,
        };
        for c in [Counter::Server, Counter::Copyset, Counter::Volume] {
            if let Some(v) = counters_t.get(c.key())? {
                let v = v.value();
                if v == 0 {
                    return Err(StoreError::Corrupt {
                        table: "counters",
                        key: c.key().into(),
                        source: crate::error::RecordError {
                            what: "counter",
                            detail: "next id is 0".into(),
                        },
                    });
                }
                counters.set(c, v);
            }
        }

        let mut servers = BTreeMap::new();
        for row in txn.open_table(SERVERS)?.iter()? {
            let (k, v) = row?;
            let rec = ServerRecord::decode(v.value()).map_err(|source| StoreError::Corrupt {
                table: "servers",
                key: k.value().to_string(),
                source,
            })?;
            servers.insert(k.value(), rec);
        }
        let mut copysets = BTreeMap::new();
        for row in txn.open_table(COPYSETS)?.iter()? {
            let (k, v) = row?;
            let rec = CopysetRecord::decode(v.value()).map_err(|source| StoreError::Corrupt {
                table: "copysets",
                key: k.value().to_string(),
                source,
            })?;
            copysets.insert(k.value(), rec);
        }
        let mut volumes = BTreeMap::new();
        for row in txn.open_table(VOLUMES)?.iter()? {
            let (k, v) = row?;
            let rec = VolumeRecord::decode(v.value()).map_err(|source| StoreError::Corrupt {
                table: "volumes",
                key: k.value().to_string(),
                source,
            })?;
            volumes.insert(k.value().to_owned(), rec);
        }
        Ok(Snapshot {
            counters,
            servers,
            copysets,
            volumes,
        })
    }

    /// Applies `batch` atomically and durably.
    ///
    /// # Errors
    /// redb fails to write or sync; nothing of the batch is applied then.
    pub fn apply(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut counters = txn.open_table(COUNTERS)?;
            let mut servers = txn.open_table(SERVERS)?;
            let mut copysets = txn.open_table(COPYSETS)?;
            let mut volumes = txn.open_table(VOLUMES)?;
            for m in batch {
                match m {
                    Mutation::Counter(c, v) => {
                        counters.insert(c.key(), *v)?;
                    }
                    Mutation::Server(id, rec) => {
                        servers.insert(*id, rec.encode().as_slice())?;
                    }
                    Mutation::Copyset(id, rec) => {
                        copysets.insert(*id, rec.encode().as_slice())?;
                    }
                    Mutation::Volume(name, rec) => {
                        volumes.insert(name.as_str(), rec.encode().as_slice())?;
                    }
                    Mutation::DeleteVolume(name) => {
                        volumes.remove(name.as_str())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctrl.redb");
        {
            let (store, snap) = Store::open(&path).unwrap();
            assert_eq!(snap.counters.next_server, 1);
            assert!(snap.servers.is_empty());
            store
                .apply(&[
                    Mutation::Counter(Counter::Server, 2),
                    Mutation::Server(
                        1,
                        ServerRecord {
                            addr: "a:1".into(),
                            capacity_bytes: 9,
                        },
                    ),
                    Mutation::Copyset(
                        1,
                        CopysetRecord {
                            members: vec![1],
                            bootstrapped: false,
                        },
                    ),
                    Mutation::Volume(
                        "v".into(),
                        VolumeRecord {
                            id: 1,
                            size_bytes: 1,
                            epoch: 1,
                            created_unix_secs: 0,
                            copysets: vec![1],
                        },
                    ),
                    Mutation::Volume(
                        "gone".into(),
                        VolumeRecord {
                            id: 2,
                            size_bytes: 1,
                            epoch: 1,
                            created_unix_secs: 0,
                            copysets: vec![1],
                        },
                    ),
                ])
                .unwrap();
            store
                .apply(&[Mutation::DeleteVolume("gone".into())])
                .unwrap();
        }
        let (_store, snap) = Store::open(&path).unwrap();
        assert_eq!(snap.counters.next_server, 2);
        assert_eq!(snap.servers[&1].addr, "a:1");
        assert_eq!(snap.copysets[&1].members, vec![1]);
        assert_eq!(snap.volumes.len(), 1);
        assert_eq!(snap.volumes["v"].id, 1);
    }

    #[test]
    fn undecodable_record_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctrl.redb");
        drop(Store::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(COPYSETS).unwrap();
                // Version 1, no flags, 2 members but only one id present.
                let mut bad = vec![1u8, 0, 2];
                bad.extend_from_slice(&5u64.to_le_bytes());
                t.insert(7, bad.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::Corrupt { table, key, .. }) => {
                assert_eq!((table, key.as_str()), ("copysets", "7"));
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a corrupt record must not load"),
        }
    }
}
