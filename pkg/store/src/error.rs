//! The one error type of the store.

use std::fmt;

use lorawan::{DevNonce, Eui64};

/// Why a DevNonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevNonceRejection {
    /// The nonce was already used by an earlier join of this device (LoRaWAN 1.0.x).
    Reused,
    /// The nonce is not greater than the last accepted one (LoRaWAN 1.1).
    NotIncreasing {
        /// The last accepted DevNonce.
        last: DevNonce,
    },
}

impl fmt::Display for DevNonceRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reused => f.write_str("already used by an earlier join (1.0.x: never reused)"),
            Self::NotIncreasing { last } => write!(
                f,
                "not greater than the last accepted DevNonce {} (1.1: strictly increasing)",
                last.0
            ),
        }
    }
}

/// An error of any store operation. Cloneable so that one failed group commit can be
/// reported to every caller whose write was in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A record, or a unique index entry, is already taken by another record.
    #[error("{what} {key:?} already exists")]
    AlreadyExists {
        /// What kind of record or unique attribute, e.g. "application" or "gateway EUI".
        what: &'static str,
        /// The key that is taken.
        key: String,
    },
    /// The record does not exist.
    #[error("{what} {key:?} not found")]
    NotFound {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// An optimistic write found another version than the one it was based on.
    #[error(
        "{what} {key:?} was changed concurrently: expected version {expected}, found version {actual}"
    )]
    Conflict {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        key: String,
        /// The version the write expected.
        expected: u64,
        /// The version in the store.
        actual: u64,
    },
    /// An atomic read-modify-write lost too many races in a row.
    #[error(
        "{what} {key:?}: gave up after {attempts} attempts, every one raced a concurrent write"
    )]
    Contention {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        key: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A join-request's DevNonce was refused.
    #[error("DevNonce {} of device JoinEUI {join_eui} DevEUI {dev_eui} refused: {reason}", nonce.0)]
    DevNonce {
        /// The device's JoinEUI.
        join_eui: Eui64,
        /// The device's DevEUI.
        dev_eui: Eui64,
        /// The refused nonce.
        nonce: DevNonce,
        /// Why.
        reason: DevNonceRejection,
    },
    /// The 24-bit JoinNonce counter of a device has no value left.
    #[error(
        "JoinNonce of device JoinEUI {join_eui} DevEUI {dev_eui} exhausted: the 24-bit counter reached 0xFFFFFF"
    )]
    JoinNonceExhausted {
        /// The device's JoinEUI.
        join_eui: Eui64,
        /// The device's DevEUI.
        dev_eui: Eui64,
    },
    /// A caller passed a value the store cannot key or index.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, e.g. "ids.application_id".
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The store configuration is not usable.
    #[error("store configuration {key}: {reason}")]
    Config {
        /// The configuration key, e.g. "store.postgres.url".
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// A schema migration failed or the database schema is not one this binary knows.
    #[error("schema migration: {0}")]
    Migration(String),
    /// A stored value could not be decoded.
    #[error("{what} {key:?} is corrupt: {reason}")]
    Corrupt {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The database failed (I/O, connection, timeout, constraint).
    #[error("{backend} store: {message}")]
    Backend {
        /// "embedded" or "postgres".
        backend: &'static str,
        /// The database's error, with its causes.
        message: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// A backend error from any error, keeping its causes in the message.
    pub(crate) fn backend(backend: &'static str, err: &dyn std::error::Error) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            let text = s.to_string();
            // Several drivers repeat the cause in their own message.
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Self::Backend { backend, message }
    }

    /// True for errors that say the record or key does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// True for errors that say the record or a unique attribute is taken.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
    }

    /// True for optimistic-concurrency failures: re-read and try again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::Contention { .. })
    }
}

/// The result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
