//! Why a call was refused, with the gRPC status it maps to.

use tonic::{Code, Status};

/// Why a call was not authenticated or not authorized.
///
/// The `Display` text is the message the caller sees in the gRPC status; it never contains a
/// key. [`AuthError::reason`] is a stable label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The call carried no `authorization` metadata.
    #[error("no credentials: expected `authorization: ClusterKey …` or `Bearer …`")]
    MissingCredentials,
    /// The `authorization` metadata could not be read.
    #[error("malformed `authorization` metadata: {0}")]
    MalformedCredentials(&'static str),
    /// The `authorization` metadata used a scheme other than `ClusterKey` or `Bearer`.
    #[error("unsupported authorization scheme `{0}`: expected `ClusterKey …` or `Bearer …`")]
    UnsupportedScheme(String),
    /// The cluster key matched none of the configured keys.
    #[error("cluster key not accepted")]
    ClusterKeyRejected,
    /// An API key was presented to a server that only accepts cluster keys.
    #[error("API keys are not accepted by this server: use `authorization: ClusterKey …`")]
    ApiKeysNotAccepted,
    /// The API key is not known (never issued, or deleted).
    #[error("API key not accepted: unknown API key")]
    ApiKeyUnknown,
    /// The API key was known but has expired.
    #[error("API key not accepted: the API key has expired")]
    ApiKeyExpired,
    /// The API key could not be checked, e.g. the Identity Server is unreachable.
    #[error("cannot verify the API key now: {0}")]
    VerifierUnavailable(String),
    /// The API key belongs to another entity than the one the call is about.
    #[error("API key of {actual} may not act on {expected}")]
    WrongEntity {
        /// The entity the call is about, e.g. ``application `app-1` ``.
        expected: String,
        /// The entity the API key belongs to.
        actual: String,
    },
    /// The API key belongs to the right entity but lacks a right the call needs.
    #[error("API key of {entity} lacks the right `{right}`")]
    MissingRight {
        /// The entity the API key belongs to.
        entity: String,
        /// The missing right, e.g. `application:link`.
        right: String,
    },
    /// The credentials carry no right `right` on `entity`, neither as their own entity nor
    /// through ownership, membership or collaboration.
    #[error("credentials of {holder} lack the right `{right}` on {entity}")]
    MissingRightOn {
        /// The entity the credentials belong to.
        holder: String,
        /// The entity the call is about.
        entity: String,
        /// The missing right.
        right: String,
    },
    /// The call is reserved to the roles of the cluster.
    #[error("{0} is reserved to the roles of the cluster: use `authorization: ClusterKey …`")]
    ClusterOnly(String),
    /// A handler asked for the caller but no authentication layer ran before it.
    #[error("the request did not pass through the authentication layer")]
    NotAuthenticated,
}

impl AuthError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::MalformedCredentials(_) => "malformed_credentials",
            Self::UnsupportedScheme(_) => "unsupported_scheme",
            Self::ClusterKeyRejected => "cluster_key_rejected",
            Self::ApiKeysNotAccepted => "api_keys_not_accepted",
            Self::ApiKeyUnknown => "api_key_unknown",
            Self::ApiKeyExpired => "api_key_expired",
            Self::VerifierUnavailable(_) => "verifier_unavailable",
            Self::WrongEntity { .. } => "wrong_entity",
            Self::MissingRight { .. } | Self::MissingRightOn { .. } => "missing_right",
            Self::ClusterOnly(_) => "cluster_only",
            Self::NotAuthenticated => "not_authenticated",
        }
    }

    /// The gRPC status code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::MissingCredentials
            | Self::MalformedCredentials(_)
            | Self::UnsupportedScheme(_)
            | Self::ClusterKeyRejected
            | Self::ApiKeysNotAccepted
            | Self::ApiKeyUnknown
            | Self::ApiKeyExpired => Code::Unauthenticated,
            Self::WrongEntity { .. }
            | Self::MissingRight { .. }
            | Self::MissingRightOn { .. }
            | Self::ClusterOnly(_) => Code::PermissionDenied,
            Self::VerifierUnavailable(_) => Code::Unavailable,
            // A wiring bug on the server, not the caller's fault.
            Self::NotAuthenticated => Code::Internal,
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
