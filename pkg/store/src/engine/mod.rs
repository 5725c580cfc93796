//! The two implementations of the primitive layer ([`crate::kv`]) and the dispatch
//! between them. Both offer exactly the same operations with the same semantics; the
//! conformance suite checks that.

pub(crate) mod pg_tls;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::error::Result;
use crate::kv::{Batch, Record, Table};

/// An open backend.
pub(crate) enum Engine {
    Sqlite(sqlite::SqliteEngine),
    Postgres(postgres::PgEngine),
}

impl Engine {
    /// Commits each batch atomically (all of its operations or none), all of them in one
    /// transaction, and returns one result per batch in order. A batch whose checks fail
    /// changes nothing and does not affect the others; a database failure fails all.
    pub(crate) async fn commit_group(&self, batches: Vec<Batch>) -> Vec<Result<Vec<u64>>> {
        match self {
            Self::Sqlite(e) => e.commit_group(batches).await,
            Self::Postgres(e) => e.commit_group(batches).await,
        }
    }

    /// Keeps `table`'s key set in memory where that saves reads of absent keys: the
    /// embedded engine, whose writes all go through this process. PostgreSQL is shared
    /// with other processes, so it reads as before.
    pub(crate) async fn track_keys(&self, table: &'static Table) -> Result<()> {
        match self {
            Self::Sqlite(e) => e.track_keys(table).await,
            Self::Postgres(_) => Ok(()),
        }
    }

    pub(crate) async fn get(&self, table: &'static Table, key: &str) -> Result<Option<Record>> {
        match self {
            Self::Sqlite(e) => e.get(table, key).await,
            Self::Postgres(e) => e.get(table, key).await,
        }
    }

    pub(crate) async fn lookup(
        &self,
        table: &'static Table,
        index: &'static str,
        ikey: &str,
    ) -> Result<Vec<Record>> {
        match self {
            Self::Sqlite(e) => e.lookup(table, index, ikey).await,
            Self::Postgres(e) => e.lookup(table, index, ikey).await,
        }
    }

    pub(crate) async fn scan(
        &self,
        table: &'static Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>> {
        match self {
            Self::Sqlite(e) => e.scan(table, prefix, after, limit).await,
            Self::Postgres(e) => e.scan(table, prefix, after, limit).await,
        }
    }

    pub(crate) async fn count(&self, table: &'static Table, prefix: &str) -> Result<u64> {
        match self {
            Self::Sqlite(e) => e.count(table, prefix).await,
            Self::Postgres(e) => e.count(table, prefix).await,
        }
    }

    pub(crate) async fn health(&self) -> Result<()> {
        match self {
            Self::Sqlite(e) => e.health().await,
            Self::Postgres(e) => e.health().await,
        }
    }

    pub(crate) async fn close(&self) -> Result<()> {
        match self {
            Self::Sqlite(e) => e.close().await,
            Self::Postgres(e) => {
                e.close();
                Ok(())
            }
        }
    }
}
