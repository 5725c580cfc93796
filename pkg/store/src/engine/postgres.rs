//! The PostgreSQL backend: tokio-postgres with a deadpool connection pool.
//!
//! Concurrency between processes: writes run in READ COMMITTED transactions that lock the
//! rows they check (`SELECT ... FOR UPDATE`), so a version check and the write after it
//! cannot interleave with another process's write of the same row. Creating a row that
//! did not exist cannot lock it beforehand; two processes racing to create the same key
//! (or take the same unique index key) make one of them fail on the primary key or unique
//! index, and that transaction is retried, when its check then sees the winner's row.
//! Deadlocks and serialization failures are retried the same way.

use std::time::Duration;

use deadpool_postgres::{Manager, Object, Pool, Runtime, Transaction};
use tokio_postgres::error::SqlState;

use super::pg_tls;
use crate::config::PostgresConfig;
use crate::error::{Result, StoreError};
use crate::kv::{Batch, Op, Record, Table, index_diff, key_from_bytes, prefix_end};
use crate::migrations::{self, CREATE_SCHEMA_MIGRATIONS};

const BACKEND: &str = "postgres";
/// Attempts of a transaction that keeps hitting retryable errors.
const MAX_ATTEMPTS: u32 = 20;

fn db_err(e: &tokio_postgres::Error) -> StoreError {
    StoreError::backend(BACKEND, e)
}

/// Why a transaction failed: the database (maybe retryable) or the pool.
enum Failure {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Self::Db(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::UNIQUE_VIOLATION
            ),
            Self::Store(_) => false,
        }
    }

    fn into_store(self) -> StoreError {
        match self {
            Self::Db(e) => db_err(&e),
            Self::Store(e) => e,
        }
    }
}

/// The PostgreSQL engine.
pub(crate) struct PgEngine {
    pool: Pool,
    schema: String,
    /// The URL with its password masked, for error messages.
    url: String,
}

impl PgEngine {
    /// Builds the pool (connections are opened on first use).
    pub(crate) fn new(cfg: &PostgresConfig) -> Result<Self> {
        let url_error = |reason: String| StoreError::Config {
            key: "store.postgres.url",
            reason: format!("{:?}: {reason}", cfg.masked_url()),
        };
        let (url, tls) = pg_tls::split_url(&cfg.url).map_err(url_error)?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| url_error(format!("not a PostgreSQL URL: {e}")))?;
        if !cfg.schema.is_empty() {
            // Unqualified table names then resolve to the schema on every connection.
            let opt = format!("-c search_path={}", cfg.schema);
            let options = match pg.get_options() {
                Some(o) if !o.is_empty() => format!("{o} {opt}"),
                _ => opt,
            };
            pg.options(options);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(cfg.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("tern");
        }
        let connector = pg_tls::connector(&tls).map_err(url_error)?;
        let pool = Pool::builder(Manager::new(pg, connector))
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(|e| StoreError::backend(BACKEND, &e))?;
        Ok(Self {
            pool,
            schema: cfg.schema.clone(),
            url: cfg.masked_url(),
        })
    }

    async fn client(&self) -> Result<Object> {
        self.pool
            .get()
            .await
            .map_err(|e| match StoreError::backend(BACKEND, &e) {
                // Say which server could not be reached: the key and the (masked) URL.
                StoreError::Backend { backend, message } => StoreError::Backend {
                    backend,
                    message: format!("store.postgres.url = {:?}: {message}", self.url),
                },
                other => other,
            })
    }

    /// Applies the pending migrations under an advisory lock; returns their names.
    pub(crate) async fn migrate(&self) -> Result<Vec<String>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| db_err(&e))?;
        let run = async {
            // Held until commit: a second process waits here, then finds nothing to do.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key(&self.schema)],
            )
            .await?;
            if !self.schema.is_empty() {
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                        &[&self.schema],
                    )
                    .await?
                    .is_some();
                if !exists {
                    // The name was validated as a plain identifier.
                    tx.batch_execute(&format!("CREATE SCHEMA {}", self.schema))
                        .await?;
                }
            }
            tx.batch_execute(CREATE_SCHEMA_MIGRATIONS).await?;
            let applied: Vec<String> = tx
                .query("SELECT name FROM schema_migrations ORDER BY name", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok::<_, tokio_postgres::Error>(applied)
        };
        let applied = run.await.map_err(|e| {
            StoreError::Migration(format!(
                "cannot read the applied migrations: {}",
                db_err(&e)
            ))
        })?;
        let mut done = Vec::new();
        for m in migrations::pending(migrations::POSTGRES, &applied)? {
            tx.batch_execute(m.sql)
                .await
                .map_err(|e| StoreError::Migration(format!("{} failed: {}", m.name, db_err(&e))))?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, now()::text)",
                &[&m.name],
            )
            .await
            .map_err(|e| db_err(&e))?;
            done.push(m.name.to_owned());
        }
        tx.commit().await.map_err(|e| db_err(&e))?;
        Ok(done)
    }

    /// Commits each batch atomically, all in one transaction; see `Engine::commit_group`.
    pub(crate) async fn commit_group(&self, batches: Vec<Batch>) -> Vec<Result<Vec<u64>>> {
        // Invalid batches never reach the database.
        let mut results: Vec<Option<Result<Vec<u64>>>> = batches
            .iter()
            .map(|b| b.validate().err().map(Err))
            .collect();
        let valid: Vec<&Batch> = batches
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(b, _)| b)
            .collect();
        let outcome = if valid.is_empty() {
            Ok(Vec::new())
        } else {
            self.commit_with_retries(&valid).await
        };
        let mut outcome = match outcome {
            Ok(v) => v.into_iter(),
            Err(e) => vec![Err(e); valid.len()].into_iter(),
        };
        for slot in &mut results {
            if slot.is_none() {
                *slot = outcome.next();
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
            .collect()
    }

    async fn commit_with_retries(&self, batches: &[&Batch]) -> Result<Vec<Result<Vec<u64>>>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_commit(batches).await {
                Ok(r) => return Ok(r),
                Err(f) if f.retryable() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, "store transaction raced another writer; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(f) => return Err(f.into_store()),
            }
        }
    }

    async fn try_commit(&self, batches: &[&Batch]) -> Result<Vec<Result<Vec<u64>>>, Failure> {
        let mut client = self.client().await.map_err(Failure::Store)?;
        let tx = client.transaction().await?;
        if let [batch] = batches {
            // One batch: the transaction is the batch, no savepoint needed.
            return match apply_batch(&tx, batch).await? {
                Ok(v) => {
                    tx.commit().await?;
                    Ok(vec![Ok(v)])
                }
                Err(e) => {
                    tx.rollback().await?;
                    Ok(vec![Err(e)])
                }
            };
        }
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            tx.batch_execute("SAVEPOINT batch").await?;
            match apply_batch(&tx, batch).await? {
                Ok(v) => {
                    tx.batch_execute("RELEASE SAVEPOINT batch").await?;
                    results.push(Ok(v));
                }
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT batch; RELEASE SAVEPOINT batch")
                        .await?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Reads one record.
    pub(crate) async fn get(&self, table: &'static Table, key: &str) -> Result<Option<Record>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT value, version FROM kv WHERE tbl = $1 AND key = $2")
            .await
            .map_err(|e| db_err(&e))?;
        let row = client
            .query_opt(&stmt, &[&table.name, &key.as_bytes()])
            .await
            .map_err(|e| db_err(&e))?;
        Ok(row.map(|r| Record {
            key: key.to_owned(),
            value: r.get(0),
            version: r.get::<_, i64>(1) as u64,
        }))
    }

    /// Reads the records of `table` that have `ikey` in `index`.
    pub(crate) async fn lookup(
        &self,
        table: &'static Table,
        index: &'static str,
        ikey: &str,
    ) -> Result<Vec<Record>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT k.key, k.value, k.version FROM kv_index i \
                 JOIN kv k ON k.tbl = i.tbl AND k.key = i.pkey \
                 WHERE i.idx = $1 AND i.ikey = $2 AND i.tbl = $3 ORDER BY i.pkey",
            )
            .await
            .map_err(|e| db_err(&e))?;
        let rows = client
            .query(&stmt, &[&index, &ikey.as_bytes(), &table.name])
            .await
            .map_err(|e| db_err(&e))?;
        rows_to_records(table, rows)
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
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT key, value, version FROM kv \
                 WHERE tbl = $1 AND key >= $2 AND key < $3 AND key > $4 \
                 ORDER BY key LIMIT $5",
            )
            .await
            .map_err(|e| db_err(&e))?;
        let hi = prefix_end(prefix);
        let after = after.unwrap_or("").as_bytes();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &stmt,
                &[
                    &table.name,
                    &prefix.as_bytes(),
                    &hi.as_slice(),
                    &after,
                    &limit,
                ],
            )
            .await
            .map_err(|e| db_err(&e))?;
        rows_to_records(table, rows)
    }

    /// Counts the records of `table` whose key starts with `prefix`.
    pub(crate) async fn count(&self, table: &'static Table, prefix: &str) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT count(*) FROM kv WHERE tbl = $1 AND key >= $2 AND key < $3")
            .await
            .map_err(|e| db_err(&e))?;
        let hi = prefix_end(prefix);
        let row = client
            .query_one(&stmt, &[&table.name, &prefix.as_bytes(), &hi.as_slice()])
            .await
            .map_err(|e| db_err(&e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Checks that a connection can be had and answers.
    pub(crate) async fn health(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| db_err(&e))
    }

    /// Closes the pool: idle connections now, busy ones when returned.
    pub(crate) fn close(&self) {
        self.pool.close();
    }
}

/// Applies one batch. Outer error: the database failed; inner: a check failed.
async fn apply_batch(tx: &Transaction<'_>, batch: &Batch) -> Result<Result<Vec<u64>>, Failure> {
    let mut versions = Vec::with_capacity(batch.ops.len());
    for op in &batch.ops {
        let (table, key) = op.table_and_key();
        let kb = key.as_bytes();
        let stmt = tx
            .prepare_cached("SELECT version FROM kv WHERE tbl = $1 AND key = $2 FOR UPDATE")
            .await?;
        let current = tx
            .query_opt(&stmt, &[&table.name, &kb])
            .await?
            .map(|r| r.get::<_, i64>(0) as u64);
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
                    let stmt = tx
                        .prepare_cached("DELETE FROM kv WHERE tbl = $1 AND key = $2")
                        .await?;
                    tx.execute(&stmt, &[&table.name, &kb]).await?;
                    let stmt = tx
                        .prepare_cached("DELETE FROM kv_index WHERE tbl = $1 AND pkey = $2")
                        .await?;
                    tx.execute(&stmt, &[&table.name, &kb]).await?;
                }
                versions.push(current.unwrap_or(0));
            }
            Op::Put { value, indexes, .. } => {
                let stmt = tx
                    .prepare_cached("SELECT idx, ikey FROM kv_index WHERE tbl = $1 AND pkey = $2")
                    .await?;
                let mut old = Vec::new();
                for row in tx.query(&stmt, &[&table.name, &kb]).await? {
                    let ikey = key_from_bytes(table, row.get(1)).map_err(Failure::Store)?;
                    old.push((row.get::<_, String>(0), ikey));
                }
                let (removed, added) = index_diff(&old, indexes);
                for e in added.iter().filter(|e| e.index.unique) {
                    let stmt = tx
                        .prepare_cached(
                            "SELECT tbl, pkey FROM kv_index WHERE idx = $1 AND ikey = $2 AND uniq",
                        )
                        .await?;
                    let owner = tx
                        .query_opt(&stmt, &[&e.index.name, &e.key.as_bytes()])
                        .await?;
                    if let Some(row) = owner {
                        let (t, k): (String, Vec<u8>) = (row.get(0), row.get(1));
                        if t != table.name || k != kb {
                            return Ok(Err(StoreError::AlreadyExists {
                                what: e.index.what,
                                key: e.key.clone(),
                            }));
                        }
                    }
                }
                let version = current.map_or(1, |v| v + 1);
                let sql = if current.is_some() {
                    "UPDATE kv SET value = $3, version = $4 WHERE tbl = $1 AND key = $2"
                } else {
                    // Fails on a concurrent create of the same key: the transaction is retried.
                    "INSERT INTO kv (tbl, key, value, version) VALUES ($1, $2, $3, $4)"
                };
                let stmt = tx.prepare_cached(sql).await?;
                tx.execute(
                    &stmt,
                    &[&table.name, &kb, &value.as_slice(), &(version as i64)],
                )
                .await?;
                if !removed.is_empty() {
                    let stmt = tx
                        .prepare_cached(
                            "DELETE FROM kv_index WHERE idx = $1 AND ikey = $2 AND tbl = $3 AND pkey = $4",
                        )
                        .await?;
                    for (idx, ikey) in removed {
                        tx.execute(&stmt, &[idx, &ikey.as_bytes(), &table.name, &kb])
                            .await?;
                    }
                }
                if !added.is_empty() {
                    let stmt = tx
                        .prepare_cached(
                            "INSERT INTO kv_index (idx, ikey, tbl, pkey, uniq) VALUES ($1, $2, $3, $4, $5)",
                        )
                        .await?;
                    for e in added {
                        tx.execute(
                            &stmt,
                            &[
                                &e.index.name,
                                &e.key.as_bytes(),
                                &table.name,
                                &kb,
                                &e.index.unique,
                            ],
                        )
                        .await?;
                    }
                }
                versions.push(version);
            }
        }
    }
    Ok(Ok(versions))
}

fn rows_to_records(table: &Table, rows: Vec<tokio_postgres::Row>) -> Result<Vec<Record>> {
    rows.into_iter()
        .map(|r| {
            Ok(Record {
                key: key_from_bytes(table, r.get(0))?,
                value: r.get(1),
                version: r.get::<_, i64>(2) as u64,
            })
        })
        .collect()
}

/// The advisory lock of the migrations of one schema: a stable 64-bit FNV-1a hash.
fn lock_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "tern-store/migrate/".bytes().chain(schema.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Grows with the attempt, jittered so that two racing processes spread apart.
fn backoff(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = u64::from(attempt.min(10)) * 2;
    Duration::from_millis(base + u64::from(nanos % 5))
}

/// TLS against a live server: the test PostgreSQL (`scripts/test-postgres.sh`) serves TLS
/// with a certificate for `localhost` and `127.0.0.1` signed by its own CA, whose file is in
/// `TERN_TEST_POSTGRES_CA` (`scripts/test-postgres.sh ca`).
#[cfg(test)]
mod tls_tests {
    use super::*;

    /// The test server's URL and CA file; `None` (skipped loudly) outside CI without them.
    fn server() -> Option<(String, String)> {
        let url = std::env::var("TERN_TEST_POSTGRES_URL").unwrap_or_default();
        let ca = std::env::var("TERN_TEST_POSTGRES_CA").unwrap_or_default();
        if url.is_empty() || ca.is_empty() || !std::path::Path::new(&ca).exists() {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "CI is set but TERN_TEST_POSTGRES_URL/TERN_TEST_POSTGRES_CA do not name the test \
                 server and its CA (url {url:?}, ca {ca:?}): see scripts/test-postgres.sh"
            );
            eprintln!(
                "!!!!!!!! SKIPPED PostgreSQL TLS tests: set TERN_TEST_POSTGRES_URL and TERN_TEST_POSTGRES_CA"
            );
            return None;
        }
        Some((url, ca))
    }

    /// Whether the server sees this connection encrypted, or the connection error.
    async fn ssl_in_use(url: String) -> std::result::Result<bool, String> {
        let engine = PgEngine::new(&PostgresConfig {
            url,
            pool_size: 1,
            ..PostgresConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let client = engine.client().await.map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    /// `url` with `params` appended to its query.
    fn with(url: &str, params: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{params}")
    }

    /// A CA certificate the server's certificate does not chain to.
    fn other_ca(dir: &std::path::Path) -> String {
        let path = dir.join("other-ca.crt");
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=not the test CA", "-keyout"])
            .arg(dir.join("other-ca.key"))
            .arg("-out")
            .arg(&path)
            .output()
            .expect("openssl is installed (scripts/ensure-tools.sh)");
        assert!(out.status.success(), "{out:?}");
        path.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn verify_full_encrypts_and_checks_chain_and_host_name() {
        let Some((url, ca)) = server() else { return };
        let ok = ssl_in_use(with(&url, &format!("sslmode=verify-full&sslrootcert={ca}"))).await;
        assert_eq!(ok, Ok(true));

        // Another CA: refused, naming the certificate problem.
        let dir = tempfile::tempdir().unwrap();
        let other = other_ca(dir.path());
        let err = ssl_in_use(with(
            &url,
            &format!("sslmode=verify-full&sslrootcert={other}"),
        ))
        .await
        .unwrap_err();
        assert!(err.contains("certificate"), "{err}");

        // The right CA but a host name the certificate is not for (reached through its IP).
        let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
        let db = url.rsplit_once('/').unwrap().1;
        let wrong_host = format!("postgres://postgres@db.invalid:{port}/{db}?hostaddr=127.0.0.1");
        let err = ssl_in_use(with(
            &wrong_host,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .await
        .unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        // verify-ca checks the chain only, as in libpq: the same connection is accepted.
        let ok = ssl_in_use(with(
            &wrong_host,
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ))
        .await;
        assert_eq!(ok, Ok(true));
    }

    #[tokio::test]
    async fn require_encrypts_without_a_root_certificate_and_disable_does_not() {
        let Some((url, _)) = server() else { return };
        assert_eq!(ssl_in_use(with(&url, "sslmode=require")).await, Ok(true));
        assert_eq!(ssl_in_use(with(&url, "sslmode=disable")).await, Ok(false));
        // The default (prefer) takes TLS when the server offers it.
        assert_eq!(ssl_in_use(url).await, Ok(true));
    }
}
