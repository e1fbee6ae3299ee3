//! Optional persistence for the embedded manager: every accepted item and
//! stored result in a redb database (an embedded, crash-safe B-tree store),
//! committed before the manager answers, so a restarted manager loses
//! nothing that was accepted. Leases are not stored: after a restart every
//! unacknowledged item is simply waiting again (at least once).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

/// (queue, item id) → (body, deliveries).
const ITEMS: TableDefinition<'_, (&str, u64), (&[u8], u32)> = TableDefinition::new("items");
/// result key → body.
const RESULTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("results");
/// client id → the highest put message id accepted from it.
const CLIENTS: TableDefinition<'_, u64, u64> = TableDefinition::new("clients");

/// What a restarted manager finds.
pub(crate) struct Loaded {
    /// Items by queue, in id order (the order they were put).
    pub(crate) items: Vec<(String, u64, Vec<u8>, u32)>,
    pub(crate) results: Vec<(String, Vec<u8>)>,
    pub(crate) clients: Vec<(u64, u64)>,
}

/// One change, applied in a transaction with the others of a request.
pub(crate) enum Change<'a> {
    Put {
        queue: &'a str,
        id: u64,
        body: &'a [u8],
        deliveries: u32,
    },
    Remove {
        queue: &'a str,
        id: u64,
    },
    Result {
        key: &'a str,
        body: &'a [u8],
    },
    Client {
        client: u64,
        last: u64,
    },
}

#[derive(Debug)]
pub(crate) struct Store {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("persistence: {e}")
}

impl Store {
    /// Opens (or creates) the database at `path` and reads what it holds.
    pub(crate) fn open(path: &Path) -> Result<(Self, Loaded), String> {
        let db = Database::create(path).map_err(err)?;
        // Make sure both tables exist before the first read.
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(ITEMS).map_err(err)?;
            txn.open_table(RESULTS).map_err(err)?;
            txn.open_table(CLIENTS).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        let read = db.begin_read().map_err(err)?;
        let mut loaded = Loaded {
            items: Vec::new(),
            results: Vec::new(),
            clients: Vec::new(),
        };
        let items = read.open_table(ITEMS).map_err(err)?;
        for entry in items.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let (queue, id) = k.value();
            let (body, deliveries) = v.value();
            loaded
                .items
                .push((queue.to_owned(), id, body.to_vec(), deliveries));
        }
        loaded.items.sort_by_key(|(_, id, _, _)| *id);
        let results = read.open_table(RESULTS).map_err(err)?;
        for entry in results.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            loaded
                .results
                .push((k.value().to_owned(), v.value().to_vec()));
        }
        let clients = read.open_table(CLIENTS).map_err(err)?;
        for entry in clients.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            loaded.clients.push((k.value(), v.value()));
        }
        drop((items, results, clients, read));
        Ok((Self { db }, loaded))
    }

    /// Applies `changes` in one durable transaction.
    pub(crate) fn apply(&self, changes: &[Change<'_>]) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut items = txn.open_table(ITEMS).map_err(err)?;
            let mut results = txn.open_table(RESULTS).map_err(err)?;
            let mut clients = txn.open_table(CLIENTS).map_err(err)?;
            for c in changes {
                match c {
                    Change::Put {
                        queue,
                        id,
                        body,
                        deliveries,
                    } => {
                        items
                            .insert((*queue, *id), (*body, *deliveries))
                            .map_err(err)?;
                    }
                    Change::Remove { queue, id } => {
                        items.remove((*queue, *id)).map_err(err)?;
                    }
                    Change::Result { key, body } => {
                        results.insert(*key, *body).map_err(err)?;
                    }
                    Change::Client { client, last } => {
                        clients.insert(*client, *last).map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }
}
