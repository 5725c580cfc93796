//! The embedded backend: SQLite in `<data-dir>/tern.db`.
//!
//! - One dedicated writer thread owns the only writing connection: every commit (a group
//!   of batches) is one `BEGIN IMMEDIATE` transaction on it, so writes of this process
//!   never contend with each other and need no retry loop. `BEGIN IMMEDIATE` plus the busy
//!   timeout serialise writers of other processes that open the same file.
//! - Reads run on tokio's blocking pool with a few pooled read connections; WAL mode lets
//!   them read while the writer writes.
//! - `synchronous=FULL`: in WAL mode, NORMAL may lose the last commits on power loss or
//!   an OS crash (the WAL is not synced at commit). The store acknowledges a write only
//!   when it is durable (the NS relies on it for frame counters, the JS for nonces), so it
//!   pays one fsync per commit; group commit makes that one fsync per batch of writes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::kv::{Batch, Op, Record, Table, index_diff, key_from_bytes, prefix_end};
use crate::migrations::{self, CREATE_SCHEMA_MIGRATIONS};

const BACKEND: &str = "embedded";
/// Reads at once, each on a connection kept open between reads. Without the bound, a burst
/// of reads opened (and then closed) connections beyond the pool, and preparing their
/// schema and statements took more time than the reads.
const READERS: usize = 8;
/// The records of a table with a given index key. `CROSS JOIN` fixes the join order and
/// the order is by `i.pkey` (equal to `k.key`): with `JOIN ... ORDER BY k.key` SQLite's
/// planner, without statistics, walks the whole table in key order and probes the index
/// for each record, which made every lookup (e.g. a join-request's device by DevEUI) cost
/// a scan of all devices.
const LOOKUP_SQL: &str = "SELECT k.key, k.value, k.version FROM kv_index i \
     CROSS JOIN kv k ON k.tbl = i.tbl AND k.key = i.pkey \
     WHERE i.idx = ?1 AND i.ikey = ?2 AND i.tbl = ?3 ORDER BY i.pkey";
/// One record by key.
const GET_SQL: &str = "SELECT value, version FROM kv WHERE tbl = ?1 AND key = ?2";
/// The owner of a unique index key.
const UNIQUE_OWNER_SQL: &str =
    "SELECT tbl, pkey FROM kv_index WHERE idx = ?1 AND ikey = ?2 AND uniq = 1";
/// The index entries of a record.
const ENTRIES_OF_SQL: &str = "SELECT idx, ikey FROM kv_index WHERE tbl = ?1 AND pkey = ?2";
/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::backend(BACKEND, &e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

enum WriterMsg {
    Commit(Vec<Batch>, oneshot::Sender<Vec<Result<Vec<u64>>>>),
    Ping(oneshot::Sender<()>),
    TrackKeys(&'static Table, oneshot::Sender<Result<()>>),
}

/// The keys of the tables whose key sets are kept in memory (see
/// [`SqliteEngine::track_keys`]): always a superset of the stored keys, because the writer
/// adds a put's key before its commit and removes a delete's only after it.
type KeySets = Arc<RwLock<HashMap<&'static str, HashSet<String>>>>;

/// The embedded engine.
pub(crate) struct SqliteEngine {
    path: PathBuf,
    writer: Mutex<Option<std_mpsc::Sender<WriterMsg>>>,
    thread: Mutex<Option<JoinHandle<Result<()>>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per reader connection.
    read_slots: Arc<tokio::sync::Semaphore>,
    key_sets: KeySets,
}

impl SqliteEngine {
    /// Opens (creating if needed) `<data_dir>/tern.db`, migrates it, starts the writer.
    pub(crate) async fn open(data_dir: &Path) -> Result<(Self, Vec<String>)> {
        let path = data_dir.join("tern.db");
        let dir = data_dir.to_owned();
        let p = path.clone();
        let (conn, applied) = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::Config {
                key: "data-dir",
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
            let mut conn = open_connection(&p, false)?;
            let applied = migrate(&mut conn)?;
            Ok((conn, applied))
        })
        .await?;
        let (tx, rx) = std_mpsc::channel();
        let key_sets = KeySets::default();
        let writer_key_sets = Arc::clone(&key_sets);
        let thread = std::thread::Builder::new()
            .name("tern-store-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_key_sets))
            .map_err(|e| StoreError::backend(BACKEND, &e))?;
        Ok((
            Self {
                path,
                writer: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                readers: Arc::new(Mutex::new(Vec::new())),
                read_slots: Arc::new(tokio::sync::Semaphore::new(READERS)),
                key_sets,
            },
            applied,
        ))
    }

    /// Migrates `<data_dir>/tern.db` and closes it.
    pub(crate) async fn migrate_only(data_dir: &Path) -> Result<Vec<String>> {
        let dir = data_dir.to_owned();
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::Config {
                key: "data-dir",
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
            let mut conn = open_connection(&dir.join("tern.db"), false)?;
            let applied = migrate(&mut conn)?;
            conn.close().map_err(|(_, e)| db_err(e))?;
            Ok(applied)
        })
        .await
    }

    fn sender(&self) -> Result<std_mpsc::Sender<WriterMsg>> {
        lock(&self.writer).clone().ok_or(StoreError::Closed)
    }

    /// Commits each batch atomically, all in one transaction; see `Engine::commit_group`.
    pub(crate) async fn commit_group(&self, batches: Vec<Batch>) -> Vec<Result<Vec<u64>>> {
        let n = batches.len();
        let (reply, rx) = oneshot::channel();
        let sent = self.sender().and_then(|s| {
            s.send(WriterMsg::Commit(batches, reply))
                .map_err(|_| writer_gone())
        });
        if let Err(e) = sent {
            return vec![Err(e); n];
        }
        rx.await.unwrap_or_else(|_| vec![Err(writer_gone()); n])
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        let slot = Arc::clone(&self.read_slots)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        blocking(move || {
            let _slot = slot;
            let pooled = lock(&readers).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path, true)?,
            };
            let result = f(&conn);
            let mut pool = lock(&readers);
            if pool.len() < READERS {
                pool.push(conn);
            }
            result
        })
        .await
    }

    /// Keeps the key set of `table` in memory from now on, so that reading a key it does
    /// not hold costs no database read. Loaded by the writer, so no commit slips between.
    pub(crate) async fn track_keys(&self, table: &'static Table) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(WriterMsg::TrackKeys(table, reply))
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    /// Reads one record.
    pub(crate) async fn get(&self, table: &'static Table, key: &str) -> Result<Option<Record>> {
        let absent = read_lock(&self.key_sets)
            .get(table.name)
            .is_some_and(|keys| !keys.contains(key));
        if absent {
            return Ok(None);
        }
        let key = key.to_owned();
        self.read(move |c| {
            let row = c
                .prepare_cached(GET_SQL)
                .and_then(|mut s| {
                    s.query_row(params![table.name, key.as_bytes()], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()
                })
                .map_err(db_err)?;
            Ok(row.map(|(value, version)| Record {
                key,
                value,
                version: version as u64,
            }))
        })
        .await
    }

    /// Reads the records of `table` that have `ikey` in `index`.
    pub(crate) async fn lookup(
        &self,
        table: &'static Table,
        index: &'static str,
        ikey: &str,
    ) -> Result<Vec<Record>> {
        let ikey = ikey.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(LOOKUP_SQL).map_err(db_err)?;
            let rows = stmt
                .query_map(params![index, ikey.as_bytes(), table.name], row_to_raw)
                .map_err(db_err)?;
            collect_records(table, rows)
        })
        .await
    }

    /// Reads up to `limit` records of `table` whose key starts with `prefix` and sorts
    /// after `after`.
    pub(crate) async fn scan(
        &self,
        table: &'static Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>> {
        let hi = prefix_end(prefix);
        // One lower bound, the tighter of the two: with both, SQLite seeks to the prefix
        // and walks every key up to `after`, which makes paging a large table quadratic.
        let (sql, lo) = match after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => (
                "SELECT key, value, version FROM kv \
                 WHERE tbl = ?1 AND key > ?2 AND key < ?3 ORDER BY key LIMIT ?4",
                after.as_bytes().to_vec(),
            ),
            _ => (
                "SELECT key, value, version FROM kv \
                 WHERE tbl = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4",
                prefix.as_bytes().to_vec(),
            ),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql).map_err(db_err)?;
            let rows = stmt
                .query_map(params![table.name, lo, hi, limit], row_to_raw)
                .map_err(db_err)?;
            collect_records(table, rows)
        })
        .await
    }

    /// Counts the records of `table` whose key starts with `prefix`.
    pub(crate) async fn count(&self, table: &'static Table, prefix: &str) -> Result<u64> {
        let lo = prefix.as_bytes().to_vec();
        let hi = prefix_end(prefix);
        self.read(move |c| {
            c.prepare_cached("SELECT count(*) FROM kv WHERE tbl = ?1 AND key >= ?2 AND key < ?3")
                .and_then(|mut s| s.query_row(params![table.name, lo, hi], |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }

    /// Checks that a read connection works and the writer thread answers.
    pub(crate) async fn health(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await?;
        let (tx, rx) = oneshot::channel();
        self.sender()?
            .send(WriterMsg::Ping(tx))
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())
    }

    /// Stops the writer after the commits already sent to it, and closes every connection.
    pub(crate) async fn close(&self) -> Result<()> {
        lock(&self.readers).clear();
        // Dropping the last sender ends the writer loop once its queue is empty.
        drop(lock(&self.writer).take());
        let thread = lock(&self.thread).take();
        match thread {
            Some(t) => blocking(move || t.join().unwrap_or_else(|_| Err(writer_gone()))).await,
            None => Ok(()),
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        message: "the writer thread stopped".into(),
    }
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::backend(BACKEND, &e))?
}

fn open_connection(path: &Path, reader: bool) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Backend {
        backend: BACKEND,
        message: format!("cannot open {}: {e}", path.display()),
    })?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    if reader {
        conn.pragma_update(None, "query_only", true)
            .map_err(db_err)?;
    } else {
        // Switching a new database to WAL takes an exclusive lock for which SQLite does not
        // call the busy handler: when another process opens the same new file at the same
        // moment, retry until the busy timeout instead of failing at once.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other.map_err(db_err)?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend {
                backend: BACKEND,
                message: format!(
                    "{} cannot use write-ahead logging (journal mode stays {mode:?}); \
                     is the data directory on a network file system?",
                    path.display()
                ),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<Vec<String>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute_batch(CREATE_SCHEMA_MIGRATIONS).map_err(db_err)?;
    let applied: Vec<String> = {
        let mut stmt = tx
            .prepare("SELECT name FROM schema_migrations ORDER BY name")
            .map_err(db_err)?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<_>>())
            .map_err(db_err)?
    };
    let mut done = Vec::new();
    for m in migrations::pending(migrations::SQLITE, &applied)? {
        tx.execute_batch(m.sql)
            .map_err(|e| StoreError::Migration(format!("{} failed: {e}", m.name)))?;
        tx.execute(
            "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, datetime('now'))",
            params![m.name],
        )
        .map_err(db_err)?;
        done.push(m.name.to_owned());
    }
    tx.commit().map_err(db_err)?;
    Ok(done)
}

fn writer_loop(
    mut conn: Connection,
    rx: std_mpsc::Receiver<WriterMsg>,
    key_sets: KeySets,
) -> Result<()> {
    while let Ok(msg) = rx.recv() {
        match msg {
            WriterMsg::Commit(batches, reply) => {
                track_ops(&key_sets, &batches, None);
                let results = match commit_group(&mut conn, &batches) {
                    Ok(r) => r,
                    Err(e) => vec![Err(e); batches.len()],
                };
                track_ops(&key_sets, &batches, Some(&results));
                // The caller may have gone away; its write is committed all the same.
                let _ = reply.send(results);
            }
            WriterMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            WriterMsg::TrackKeys(table, reply) => {
                let _ = reply.send(load_keys(&conn, table).map(|keys| {
                    write_lock(&key_sets).entry(table.name).or_insert(keys);
                }));
            }
        }
    }
    conn.close().map_err(|(_, e)| db_err(e))
}

/// Updates the tracked key sets around a commit: before it (`results` None) adds every
/// put's key; after it removes the keys whose last committed operation was a delete (a
/// batch may delete a key and put it again).
fn track_ops(key_sets: &KeySets, batches: &[Batch], results: Option<&[Result<Vec<u64>>]>) {
    if read_lock(key_sets).is_empty() {
        return;
    }
    let mut sets = write_lock(key_sets);
    let Some(results) = results else {
        for op in batches.iter().flat_map(|b| &b.ops) {
            if let Op::Put { table, key, .. } = op
                && let Some(keys) = sets.get_mut(table.name)
            {
                keys.insert(key.clone());
            }
        }
        return;
    };
    let mut deleted: HashMap<(&str, &str), bool> = HashMap::new();
    let committed = batches
        .iter()
        .zip(results)
        .filter(|(_, r)| r.is_ok())
        .flat_map(|(b, _)| &b.ops);
    for op in committed {
        match op {
            Op::Put { table, key, .. } if sets.contains_key(table.name) => {
                deleted.insert((table.name, key), false);
            }
            Op::Delete { table, key, .. } if sets.contains_key(table.name) => {
                deleted.insert((table.name, key), true);
            }
            _ => {}
        }
    }
    for ((table, key), gone) in deleted {
        if gone && let Some(keys) = sets.get_mut(table) {
            keys.remove(key);
        }
    }
}

/// Every key of `table`.
fn load_keys(conn: &Connection, table: &'static Table) -> Result<HashSet<String>> {
    let mut stmt = conn
        .prepare("SELECT key FROM kv WHERE tbl = ?1")
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![table.name], |r| r.get::<_, Vec<u8>>(0))
        .map_err(db_err)?;
    let mut keys = HashSet::new();
    for row in rows {
        keys.insert(key_from_bytes(table, row.map_err(db_err)?)?);
    }
    Ok(keys)
}

/// One transaction; each batch inside its own savepoint so that a batch whose checks fail
/// is undone alone. An `Err` means the database failed and nothing was committed.
fn commit_group(conn: &mut Connection, batches: &[Batch]) -> Result<Vec<Result<Vec<u64>>>> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        if let Err(e) = batch.validate() {
            results.push(Err(e));
            continue;
        }
        let sp = tx.savepoint().map_err(db_err)?;
        match apply_batch(&sp, batch)? {
            Ok(versions) => {
                sp.commit().map_err(db_err)?;
                results.push(Ok(versions));
            }
            Err(e) => {
                // Default drop behaviour of a savepoint: roll back to it.
                sp.finish().map_err(db_err)?;
                results.push(Err(e));
            }
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(results)
}

/// Applies one batch. Outer error: the database failed; inner: a check failed.
fn apply_batch(c: &Connection, batch: &Batch) -> Result<Result<Vec<u64>>> {
    let mut versions = Vec::with_capacity(batch.ops.len());
    for op in &batch.ops {
        let (table, key) = op.table_and_key();
        let kb = key.as_bytes();
        let current: Option<u64> = c
            .prepare_cached("SELECT version FROM kv WHERE tbl = ?1 AND key = ?2")
            .and_then(|mut s| {
                s.query_row(params![table.name, kb], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map_err(db_err)?
            .map(|v| v as u64);
        let expect = match op {
            Op::Put { expect, .. } | Op::Delete { expect, .. } | Op::Check { expect, .. } => {
                *expect
            }
        };
        if let Err(e) = expect.check(table, key, current) {
            return Ok(Err(e));
        }
        match op {
            Op::Check { .. } => versions.push(current.unwrap_or(0)),
            Op::Delete { .. } => {
                if current.is_some() {
                    c.prepare_cached("DELETE FROM kv WHERE tbl = ?1 AND key = ?2")
                        .and_then(|mut s| s.execute(params![table.name, kb]))
                        .map_err(db_err)?;
                    c.prepare_cached("DELETE FROM kv_index WHERE tbl = ?1 AND pkey = ?2")
                        .and_then(|mut s| s.execute(params![table.name, kb]))
                        .map_err(db_err)?;
                }
                versions.push(current.unwrap_or(0));
            }
            Op::Put { value, indexes, .. } => {
                let old: Vec<(String, String)> = {
                    let mut stmt = c.prepare_cached(ENTRIES_OF_SQL).map_err(db_err)?;
                    let rows = stmt
                        .query_map(params![table.name, kb], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                        })
                        .map_err(db_err)?;
                    let mut out = Vec::new();
                    for row in rows {
                        let (idx, ikey) = row.map_err(db_err)?;
                        out.push((idx, key_from_bytes(table, ikey)?));
                    }
                    out
                };
                let (removed, added) = index_diff(&old, indexes);
                for e in added.iter().filter(|e| e.index.unique) {
                    let owner: Option<(String, Vec<u8>)> = c
                        .prepare_cached(UNIQUE_OWNER_SQL)
                        .and_then(|mut s| {
                            s.query_row(params![e.index.name, e.key.as_bytes()], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })
                            .optional()
                        })
                        .map_err(db_err)?;
                    if let Some((t, k)) = owner
                        && (t != table.name || k != kb)
                    {
                        return Ok(Err(StoreError::AlreadyExists {
                            what: e.index.what,
                            key: e.key.clone(),
                        }));
                    }
                }
                let version = current.map_or(1, |v| v + 1);
                let sql = if current.is_some() {
                    "UPDATE kv SET value = ?3, version = ?4 WHERE tbl = ?1 AND key = ?2"
                } else {
                    "INSERT INTO kv (tbl, key, value, version) VALUES (?1, ?2, ?3, ?4)"
                };
                c.prepare_cached(sql)
                    .and_then(|mut s| s.execute(params![table.name, kb, value, version as i64]))
                    .map_err(db_err)?;
                for (idx, ikey) in removed {
                    c.prepare_cached(
                        "DELETE FROM kv_index WHERE idx = ?1 AND ikey = ?2 AND tbl = ?3 AND pkey = ?4",
                    )
                    .and_then(|mut s| s.execute(params![idx, ikey.as_bytes(), table.name, kb]))
                    .map_err(db_err)?;
                }
                for e in added {
                    c.prepare_cached(
                        "INSERT INTO kv_index (idx, ikey, tbl, pkey, uniq) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![e.index.name, e.key.as_bytes(), table.name, kb, e.index.unique])
                    })
                    .map_err(db_err)?;
                }
                versions.push(version);
            }
        }
    }
    Ok(Ok(versions))
}

type RawRecord = (Vec<u8>, Vec<u8>, i64);

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn collect_records(
    table: &Table,
    rows: impl Iterator<Item = rusqlite::Result<RawRecord>>,
) -> Result<Vec<Record>> {
    rows.map(|row| {
        let (key, value, version) = row.map_err(db_err)?;
        Ok(Record {
            key: key_from_bytes(table, key)?,
            value,
            version: version as u64,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of `sql` (with `n` parameters), one line per step.
    fn plan(conn: &Connection, sql: &str, n: usize) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let args: Vec<&dyn rusqlite::ToSql> = (0..n).map(|_| &"x" as _).collect();
        stmt.query_map(args.as_slice(), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Reads seek with every equality they have, in the order that narrows first: none
    /// walks a table's range or sorts.
    #[test]
    fn reads_seek_with_all_their_keys() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let reads: [(&str, usize, &[&str]); 4] = [
            (
                LOOKUP_SQL,
                3,
                &[
                    "SEARCH i USING PRIMARY KEY (idx=? AND ikey=? AND tbl=?)",
                    "SEARCH k USING PRIMARY KEY (tbl=? AND key=?)",
                ],
            ),
            (
                GET_SQL,
                2,
                &["SEARCH kv USING PRIMARY KEY (tbl=? AND key=?)"],
            ),
            (
                UNIQUE_OWNER_SQL,
                2,
                &["SEARCH kv_index USING COVERING INDEX kv_index_unique (idx=? AND ikey=?)"],
            ),
            (
                ENTRIES_OF_SQL,
                2,
                &["SEARCH kv_index USING COVERING INDEX kv_index_owner (tbl=? AND pkey=?)"],
            ),
        ];
        for (sql, n, want) in reads {
            assert_eq!(plan(&conn, sql, n), want, "plan of {sql}");
        }
    }
}
