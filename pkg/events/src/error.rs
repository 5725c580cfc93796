//! Errors of the event bus.

use std::path::PathBuf;

/// Why the event bus could not start, subscribe or flush.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A configuration value is invalid.
    #[error("events.{key} = {value:?}: {reason}")]
    Config {
        /// The key under `[events]`, e.g. `nats.url`.
        key: &'static str,
        /// The value (passwords redacted).
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The NATS credentials file could not be read.
    #[error("events.nats.credentials = {path:?}: cannot read the NATS credentials file: {error}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The NATS server could not be reached or refused the connection at start.
    #[error("events.nats.url = {url:?}: cannot connect to NATS: {error}")]
    Connect {
        /// The URL (passwords redacted).
        url: String,
        /// The client's error.
        error: async_nats::ConnectError,
    },
    /// A subscription filter is invalid.
    #[error("events filter: {0}")]
    Filter(String),
    /// NATS refused a subscription.
    #[error("events: cannot subscribe to NATS subject {subject:?}: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client's error.
        reason: String,
    },
    /// NATS refused a raw publication (or the bus is in-process).
    #[error("events: cannot publish to NATS subject {subject:?}: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// Flushing published events to NATS failed.
    #[error("events: cannot flush events to NATS at {url:?}: {reason}")]
    Flush {
        /// The URL (passwords redacted).
        url: String,
        /// Why.
        reason: String,
    },
}

impl EventsError {
    pub(crate) fn config(
        key: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Config {
            key,
            value: value.into(),
            reason: reason.into(),
        }
    }
}
