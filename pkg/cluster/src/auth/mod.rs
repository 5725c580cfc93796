//! Authentication of gRPC calls between roles, and of external callers.
//!
//! Every call carries one `authorization` metadata value:
//!
//! - `ClusterKey <key>`: a role of this cluster. The key is one of [`ClusterKeys`], compared
//!   in constant time; the caller is [`Caller::Cluster`].
//! - `Bearer <api-key>`: an external Application Server or another API caller. The key is
//!   resolved by an [`ApiKeyVerifier`] (the Identity Server) to [`Caller::ApiKey`], which is
//!   limited to its entity and rights (see [`Caller::require_application`]).
//!
//! Clients add their credentials with [`CallCredentials`] (a tonic interceptor or tower
//! layer). Servers put [`Authenticator::layer`] in front of their services and read
//! [`Caller::of`] in handlers. Refusals are [`AuthError`]s: `UNAUTHENTICATED` when the
//! credentials are missing or wrong, `PERMISSION_DENIED` when they are valid but not enough.

mod caller;
mod error;
mod keys;
mod remote;
mod server;

pub use caller::{
    ApiKeyError, ApiKeyVerifier, AuthInfo, Caller, Entity, RIGHT_APPLICATION_LINK, grants, require,
};
pub use error::AuthError;
pub use keys::{CallCredentials, ClusterKeys, KeyError, MIN_CLUSTER_KEY_LEN};
pub use remote::{IsAddress, RemoteVerifier};
pub use server::{AuthLayer, AuthService, Authenticator};

/// The metadata key carrying the credentials.
pub const AUTHORIZATION: &str = "authorization";
