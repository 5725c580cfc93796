//! [`Store`]: an open backend, its group committer, and the primitive operations.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Backend, StoreConfig};
use crate::engine::{Engine, postgres::PgEngine, sqlite::SqliteEngine};
use crate::error::{Result, StoreError};
use crate::group_commit::{GroupCommitStats, GroupCommitter};
use crate::kv::{Batch, Index, Page, Record, Table};

/// An open store. Cheap to clone: clones share the connections and the group committer.
///
/// Every role's repository trait is implemented on it ([`crate::RegistryStore`],
/// [`crate::NsDeviceStore`], [`crate::JoinStore`], [`crate::DownlinkQueueStore`],
/// [`crate::AsStore`]); the primitive operations below are there for state that no trait
/// covers.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    engine: Arc<Engine>,
    committer: GroupCommitter,
    closed: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Store {
    /// Opens the configured backend (the embedded one in `<data_dir>/tern.db`), applies
    /// pending migrations, and starts the group committer. Needs a tokio runtime.
    pub async fn open(config: &StoreConfig, data_dir: &Path) -> Result<Store> {
        config.validate()?;
        let (engine, applied) = match config.backend {
            Backend::Embedded => {
                let (e, applied) = SqliteEngine::open(data_dir).await?;
                (Engine::Sqlite(e), applied)
            }
            Backend::Postgres => {
                let e = PgEngine::new(&config.postgres)?;
                let applied = e.migrate().await?;
                (Engine::Postgres(e), applied)
            }
        };
        if !applied.is_empty() {
            tracing::info!(backend = %config.backend, migrations = ?applied, "store schema migrated");
        }
        let engine = Arc::new(engine);
        let committer = GroupCommitter::start(Arc::clone(&engine), &config.group_commit);
        Ok(Store {
            inner: Arc::new(Inner {
                backend: config.backend,
                engine,
                committer,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Applies pending migrations and closes the database (for `tern migrate`). Returns
    /// the names of the migrations this call applied, empty when the schema was current.
    pub async fn migrate_only(config: &StoreConfig, data_dir: &Path) -> Result<Vec<String>> {
        config.validate()?;
        match config.backend {
            Backend::Embedded => SqliteEngine::migrate_only(data_dir).await,
            Backend::Postgres => {
                let e = PgEngine::new(&config.postgres)?;
                let applied = e.migrate().await;
                e.close();
                applied
            }
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// How many group commits and writes the hot path made so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.inner.committer.stats()
    }

    /// A cheap check that the database answers (for `/readyz`).
    pub async fn health(&self) -> Result<()> {
        self.engine()?.health().await
    }

    /// Commits the writes waiting for a group commit, then closes the database. Later
    /// calls on this store (and its clones) fail with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.committer.close().await;
        self.inner.engine.close().await
    }

    fn engine(&self) -> Result<&Engine> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(&self.inner.engine)
    }

    /// Keeps the keys of `table` in memory (embedded store only), so that [`Store::get`] of
    /// a key the table does not hold answers without a read. For tables with few records
    /// read on a hot path, such as downlink queues: one entry per stored record.
    pub async fn track_keys(&self, table: &'static Table) -> Result<()> {
        self.engine()?.track_keys(table).await
    }

    /// Reads one record.
    pub async fn get(&self, table: &'static Table, key: &str) -> Result<Option<Record>> {
        self.engine()?.get(table, key).await
    }

    /// Reads the records of `table` that have `key` in `index`, in key order.
    pub async fn lookup(
        &self,
        table: &'static Table,
        index: &'static Index,
        key: &str,
    ) -> Result<Vec<Record>> {
        self.engine()?.lookup(table, index.name, key).await
    }

    /// Reads up to `limit` records of `table` whose key starts with `prefix`, in key order,
    /// starting after the cursor `after` (from a previous page's `next`).
    pub async fn scan(
        &self,
        table: &'static Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Record>> {
        let limit = limit.max(1);
        let mut items = self
            .engine()?
            .scan(table, prefix, after, limit.saturating_add(1))
            .await?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|r| r.key.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Counts the records of `table` whose key starts with `prefix`.
    pub async fn count(&self, table: &'static Table, prefix: &str) -> Result<u64> {
        self.engine()?.count(table, prefix).await
    }

    /// Commits a batch atomically, now, in its own transaction. Returns per operation the
    /// record's version after it (puts), before it (deletes) or now (checks); 0 for absent.
    pub async fn commit(&self, batch: Batch) -> Result<Vec<u64>> {
        let mut results = self.engine()?.commit_group(vec![batch]).await;
        results.pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Like [`Store::commit`], but shares a transaction with other callers' batches (group
    /// commit; see the `group_commit` module for what a crash can lose). For the hot path.
    pub async fn commit_grouped(&self, batch: Batch) -> Result<Vec<u64>> {
        self.engine()?;
        self.inner.committer.submit(batch).await
    }
}
