//! Versioned schema migrations, embedded in the binary.
//!
//! Each backend has the same list of names with its own SQL. A migration is applied once,
//! in order, inside the transaction that records its name in `schema_migrations`; the
//! whole run holds a lock (SQLite: the write lock of `BEGIN IMMEDIATE`; PostgreSQL: a
//! transaction-scoped advisory lock), so processes starting together do not race.

use crate::error::StoreError;

/// One schema migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its name: a zero-padded sequence number and a word, e.g. `0001_kv`.
    pub name: &'static str,
    /// The SQL it runs.
    pub sql: &'static str,
}

/// The embedded (SQLite) migrations, in order.
pub const SQLITE: &[Migration] = &[Migration {
    name: "0001_kv",
    sql: include_str!("../migrations/sqlite/0001_kv.sql"),
}];

/// The PostgreSQL migrations, in order.
pub const POSTGRES: &[Migration] = &[Migration {
    name: "0001_kv",
    sql: include_str!("../migrations/postgres/0001_kv.sql"),
}];

/// The SQL that creates the bookkeeping table (same on both backends).
pub(crate) const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     name TEXT PRIMARY KEY, \
     applied_at TEXT NOT NULL)";

/// The migrations still to apply, given the names already applied. Refuses a database that
/// has migrations this binary does not know: it was migrated by a newer version.
pub(crate) fn pending<'a>(
    known: &'a [Migration],
    applied: &[String],
) -> Result<Vec<&'a Migration>, StoreError> {
    if let Some(unknown) = applied.iter().find(|a| !known.iter().any(|m| m.name == *a)) {
        return Err(StoreError::Migration(format!(
            "the database has migration {unknown:?}, which this binary does not know: it was \
             migrated by a newer version of Tern; run that version or restore a backup"
        )));
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|a| a == m.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_have_the_same_migrations_in_order() {
        let names = |l: &[Migration]| l.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
        let mut sorted = names(SQLITE);
        sorted.sort_unstable();
        assert_eq!(sorted, names(SQLITE));
    }

    #[test]
    fn pending_skips_applied_and_refuses_unknown() {
        assert_eq!(pending(SQLITE, &[]).unwrap().len(), SQLITE.len());
        assert!(pending(SQLITE, &["0001_kv".into()]).unwrap().is_empty());
        let err = pending(SQLITE, &["9999_future".into()]).unwrap_err();
        assert!(err.to_string().contains("9999_future"), "{err}");
    }
}
