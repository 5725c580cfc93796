//! The primitive layer both backends implement: tables of key → (value, version),
//! secondary indexes, atomic write batches with optimistic version checks, and ordered
//! prefix scans with a cursor.
//!
//! Keys are UTF-8 strings compared bytewise. Every record carries a version that starts
//! at 1 and grows by one on every write, so a read-modify-write can name the version it
//! read ([`Expect::Version`]) and fail with a conflict instead of losing another write.
//!
//! An index entry maps an index key to the record that wrote it. The entries of a record
//! are replaced on every put and removed with the record. A unique index refuses an entry
//! whose index key another record (of any table) already holds.

use crate::error::StoreError;

/// A table: a namespace of records.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    /// Stored name; never change it once data exists.
    pub name: &'static str,
    /// What a record is, for error messages ("application").
    pub what: &'static str,
}

/// A secondary index.
#[derive(Debug, PartialEq, Eq)]
pub struct Index {
    /// Stored name; never change it once data exists.
    pub name: &'static str,
    /// What the indexed attribute is, for error messages ("gateway EUI").
    pub what: &'static str,
    /// Whether one index key may belong to one record only.
    pub unique: bool,
}

/// One entry of a record in a secondary index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The index.
    pub index: &'static Index,
    /// The index key.
    pub key: String,
}

impl IndexEntry {
    /// An entry of `index` under `key`.
    pub fn new(index: &'static Index, key: impl Into<String>) -> Self {
        Self {
            index,
            key: key.into(),
        }
    }
}

/// What a write expects to find under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything: create or overwrite.
    Any,
    /// No record: create only (else `AlreadyExists`).
    Absent,
    /// Some record, whatever its version (else `NotFound`).
    Exists,
    /// The record at exactly this version (else `Conflict`, or `NotFound` when absent).
    Version(u64),
}

impl Expect {
    /// Checks the expectation against the current version (`None`: absent).
    pub(crate) fn check(
        self,
        table: &Table,
        key: &str,
        current: Option<u64>,
    ) -> Result<(), StoreError> {
        match (self, current) {
            (Self::Any, _) | (Self::Absent, None) | (Self::Exists, Some(_)) => Ok(()),
            (Self::Version(v), Some(c)) if v == c => Ok(()),
            (Self::Absent, Some(_)) => Err(StoreError::AlreadyExists {
                what: table.what,
                key: key.to_owned(),
            }),
            (Self::Exists | Self::Version(_), None) => Err(StoreError::NotFound {
                what: table.what,
                key: key.to_owned(),
            }),
            (Self::Version(expected), Some(actual)) => Err(StoreError::Conflict {
                what: table.what,
                key: key.to_owned(),
                expected,
                actual,
            }),
        }
    }
}

/// One operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes a record and replaces its index entries.
    Put {
        /// The table.
        table: &'static Table,
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// What must be there before.
        expect: Expect,
        /// The record's index entries after the write.
        indexes: Vec<IndexEntry>,
    },
    /// Removes a record and its index entries (absent and `Expect::Any`: nothing to do).
    Delete {
        /// The table.
        table: &'static Table,
        /// The key.
        key: String,
        /// What must be there before.
        expect: Expect,
    },
    /// Writes nothing; fails the batch unless the expectation holds.
    Check {
        /// The table.
        table: &'static Table,
        /// The key.
        key: String,
        /// What must be there.
        expect: Expect,
    },
}

impl Op {
    pub(crate) fn table_and_key(&self) -> (&'static Table, &str) {
        match self {
            Self::Put { table, key, .. }
            | Self::Delete { table, key, .. }
            | Self::Check { table, key, .. } => (table, key),
        }
    }
}

/// Operations applied atomically: all or none. Checks see the writes of earlier operations
/// of the same batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The operations, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(
        &mut self,
        table: &'static Table,
        key: impl Into<String>,
        value: Vec<u8>,
        expect: Expect,
        indexes: Vec<IndexEntry>,
    ) -> &mut Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value,
            expect,
            indexes,
        });
        self
    }

    /// Adds a delete.
    pub fn delete(
        &mut self,
        table: &'static Table,
        key: impl Into<String>,
        expect: Expect,
    ) -> &mut Self {
        self.ops.push(Op::Delete {
            table,
            key: key.into(),
            expect,
        });
        self
    }

    /// Adds a check.
    pub fn check(
        &mut self,
        table: &'static Table,
        key: impl Into<String>,
        expect: Expect,
    ) -> &mut Self {
        self.ops.push(Op::Check {
            table,
            key: key.into(),
            expect,
        });
        self
    }

    /// Rejects keys the backends cannot order or bound: empty ones.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        for op in &self.ops {
            let (_, key) = op.table_and_key();
            if key.is_empty() {
                return Err(StoreError::InvalidArgument {
                    field: "key",
                    reason: "record keys must not be empty".into(),
                });
            }
            if let Op::Put { indexes, .. } = op
                && indexes.iter().any(|e| e.key.is_empty())
            {
                return Err(StoreError::InvalidArgument {
                    field: "index key",
                    reason: "index keys must not be empty".into(),
                });
            }
        }
        Ok(())
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
    /// Its version (1 after the first write).
    pub version: u64,
}

/// A page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// Converts the items, keeping the cursor.
    pub fn try_map<U, E>(self, f: impl FnMut(T) -> Result<U, E>) -> Result<Page<U>, E> {
        Ok(Page {
            items: self.items.into_iter().map(f).collect::<Result<_, _>>()?,
            next: self.next,
        })
    }
}

/// The exclusive upper bound of the keys that start with `prefix`. UTF-8 never contains
/// 0xFF, so the successor always exists and `[0xFF]` bounds every key.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    match end.last_mut() {
        // UTF-8 bytes are at most 0xF4, so this never overflows into the next byte.
        Some(last) => *last += 1,
        None => end.push(0xFF),
    }
    end
}

/// Decodes a key read back from the database.
pub(crate) fn key_from_bytes(table: &Table, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| StoreError::Corrupt {
        what: table.what,
        key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        reason: "key is not UTF-8".into(),
    })
}

/// Which index entries to add and remove to go from `old` to `new` (both deduplicated).
pub(crate) fn index_diff<'a>(
    old: &'a [(String, String)],
    new: &'a [IndexEntry],
) -> (Vec<&'a (String, String)>, Vec<&'a IndexEntry>) {
    let mut added: Vec<&IndexEntry> = Vec::new();
    for e in new {
        let dup = added
            .iter()
            .any(|a| a.index.name == e.index.name && a.key == e.key);
        let present = old.iter().any(|(i, k)| i == e.index.name && *k == e.key);
        if !dup && !present {
            added.push(e);
        }
    }
    let removed = old
        .iter()
        .filter(|(i, k)| !new.iter().any(|e| e.index.name == i && e.key == *k))
        .collect();
    (removed, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    static T: Table = Table {
        name: "t",
        what: "thing",
    };
    static I: Index = Index {
        name: "i",
        what: "attr",
        unique: true,
    };

    #[test]
    fn prefix_end_bounds_prefix() {
        assert_eq!(prefix_end("app/"), b"app0".to_vec());
        assert_eq!(prefix_end(""), vec![0xFF]);
        assert!(b"app/zzz".as_slice() < prefix_end("app/").as_slice());
    }

    #[test]
    fn expectations() {
        assert!(Expect::Any.check(&T, "k", None).is_ok());
        assert!(
            Expect::Absent
                .check(&T, "k", Some(1))
                .unwrap_err()
                .is_already_exists()
        );
        assert!(
            Expect::Exists
                .check(&T, "k", None)
                .unwrap_err()
                .is_not_found()
        );
        assert_eq!(
            Expect::Version(2).check(&T, "k", Some(3)).unwrap_err(),
            StoreError::Conflict {
                what: "thing",
                key: "k".into(),
                expected: 2,
                actual: 3
            }
        );
    }

    #[test]
    fn diff_dedups() {
        let old = vec![
            ("i".to_owned(), "a".to_owned()),
            ("i".to_owned(), "b".to_owned()),
        ];
        let new = vec![
            IndexEntry::new(&I, "b"),
            IndexEntry::new(&I, "c"),
            IndexEntry::new(&I, "c"),
        ];
        let (removed, added) = index_diff(&old, &new);
        assert_eq!(removed, vec![&old[0]]);
        assert_eq!(added, vec![&new[1]]);
    }
}
