//! Why a join or a key request was refused, with its gRPC code and metric/event reason.

use lorawan::{DevNonce, Eui64};
use tern_store::{DevNonceRejection, StoreError};
use tonic::{Code, Status};

use crate::seal::SealError;

/// Why the Join Server refused a join-request or rejoin-request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidRequest {
        /// The field of `JoinRequest`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The PHYPayload is not a valid join-request or rejoin-request.
    #[error("raw_payload: {0}")]
    InvalidPayload(String),
    /// The JoinEUI is outside `join-server.join-euis`.
    #[error("JoinEUI {0} is not served by this Join Server")]
    JoinEuiNotServed(Eui64),
    /// No root keys for these EUIs.
    #[error("no device with JoinEUI {join_eui} and DevEUI {dev_eui} on this Join Server")]
    UnknownDevice {
        /// The JoinEUI.
        join_eui: Eui64,
        /// The DevEUI.
        dev_eui: Eui64,
    },
    /// A rejoin-request type 0/2 from a device without a session this Join Server made.
    #[error(
        "rejoin-request type {rejoin_type}: no session of DevEUI {dev_eui} is known to this Join Server"
    )]
    UnknownSession {
        /// The rejoin type.
        rejoin_type: u8,
        /// The DevEUI.
        dev_eui: Eui64,
    },
    /// The device lacks the root key this join needs.
    #[error("device JoinEUI {join_eui} DevEUI {dev_eui} has no {key}")]
    MissingRootKey {
        /// Which key.
        key: &'static str,
        /// The JoinEUI.
        join_eui: Eui64,
        /// The DevEUI.
        dev_eui: Eui64,
    },
    /// A rejoin-request from a device registered as LoRaWAN 1.0.x.
    #[error("rejoin-request from device DevEUI {0}, which is registered as LoRaWAN 1.0.x")]
    RejoinNotSupported(Eui64),
    /// The MIC does not verify with the device's key.
    #[error("MIC mismatch: the {what} MIC does not verify with the {key}")]
    MicMismatch {
        /// "join-request" or "rejoin-request type N".
        what: String,
        /// Which key was used.
        key: &'static str,
    },
    /// The DevNonce was used before (1.0.x) or is not increasing (1.1).
    #[error("DevNonce {nonce} of JoinEUI {join_eui} DevEUI {dev_eui}: {reason}", nonce = nonce.0)]
    DevNonce {
        /// The JoinEUI.
        join_eui: Eui64,
        /// The DevEUI.
        dev_eui: Eui64,
        /// The refused nonce.
        nonce: DevNonce,
        /// Why.
        reason: DevNonceRejection,
    },
    /// The rejoin counter (RJcount0/RJcount1) is not greater than the last accepted one.
    #[error(
        "RJcount{counter} {value} of DevEUI {dev_eui} not greater than the last accepted {last}"
    )]
    RejoinCount {
        /// 0 or 1.
        counter: u8,
        /// The refused value.
        value: u16,
        /// The last accepted value.
        last: u32,
        /// The DevEUI.
        dev_eui: Eui64,
    },
    /// The device's 24-bit JoinNonce is used up.
    #[error("JoinNonce of JoinEUI {join_eui} DevEUI {dev_eui} exhausted")]
    JoinNonceExhausted {
        /// The JoinEUI.
        join_eui: Eui64,
        /// The DevEUI.
        dev_eui: Eui64,
    },
    /// Stored keys could not be opened.
    #[error("stored keys: {0}")]
    Keys(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

impl JoinError {
    /// A short stable name: the `result` label of `tern_js_joins_total` and the event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::JoinEuiNotServed(_) => "join_eui_not_served",
            Self::UnknownDevice { .. } => "unknown_device",
            Self::UnknownSession { .. } => "unknown_session",
            Self::MissingRootKey { .. } => "missing_root_key",
            Self::RejoinNotSupported(_) => "rejoin_not_supported",
            Self::MicMismatch { .. } => "mic_mismatch",
            Self::DevNonce {
                reason: DevNonceRejection::Reused,
                ..
            } => "dev_nonce_reused",
            Self::DevNonce { .. } => "dev_nonce_too_low",
            Self::RejoinCount { .. } => "rejoin_count_replay",
            Self::JoinNonceExhausted { .. } => "join_nonce_exhausted",
            Self::Keys(_) => "key_error",
            Self::Store(_) => "store_error",
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidPayload(_) | Self::MicMismatch { .. } => {
                Code::InvalidArgument
            }
            Self::JoinEuiNotServed(_)
            | Self::UnknownDevice { .. }
            | Self::UnknownSession { .. } => Code::NotFound,
            Self::MissingRootKey { .. } | Self::RejoinNotSupported(_) => Code::FailedPrecondition,
            Self::DevNonce { .. } | Self::RejoinCount { .. } => Code::AlreadyExists,
            Self::JoinNonceExhausted { .. } => Code::ResourceExhausted,
            Self::Keys(_) => Code::Internal,
            Self::Store(_) => Code::Unavailable,
        }
    }
}

impl From<JoinError> for Status {
    fn from(e: JoinError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for JoinError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DevNonce {
                join_eui,
                dev_eui,
                nonce,
                reason,
            } => Self::DevNonce {
                join_eui,
                dev_eui,
                nonce,
                reason,
            },
            StoreError::JoinNonceExhausted { join_eui, dev_eui } => {
                Self::JoinNonceExhausted { join_eui, dev_eui }
            }
            other => Self::Store(other.to_string()),
        }
    }
}

impl From<SealError> for JoinError {
    fn from(e: SealError) -> Self {
        Self::Keys(e.to_string())
    }
}

/// A store error as a gRPC status, for the registry and key requests.
pub(crate) fn store_status(e: StoreError) -> Status {
    let code = match &e {
        StoreError::NotFound { .. } => Code::NotFound,
        StoreError::AlreadyExists { .. } => Code::AlreadyExists,
        StoreError::Conflict { .. } | StoreError::Contention { .. } => Code::Aborted,
        StoreError::InvalidArgument { .. } => Code::InvalidArgument,
        StoreError::Corrupt { .. } => Code::DataLoss,
        _ => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}
