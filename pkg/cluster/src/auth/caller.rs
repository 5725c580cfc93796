//! Who made a call, what an API key allows, and how API keys are verified.

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;

use super::AuthError;

/// The right an external Application Server needs to link to the Network Server.
pub const RIGHT_APPLICATION_LINK: &str = "application:link";

/// An entity an API key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// An application, by application ID.
    Application(String),
    /// A gateway, by gateway ID.
    Gateway(String),
    /// A user, by user ID.
    User(String),
    /// An organization, by organization ID.
    Organization(String),
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Application(id) => write!(f, "application `{id}`"),
            Self::Gateway(id) => write!(f, "gateway `{id}`"),
            Self::User(id) => write!(f, "user `{id}`"),
            Self::Organization(id) => write!(f, "organization `{id}`"),
        }
    }
}

/// What a verified API key may do: the entity it belongs to and its rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// The entity the key belongs to.
    pub entity: Entity,
    /// Rights such as `application:link`.
    pub rights: BTreeSet<String>,
}

impl AuthInfo {
    /// An API key of `entity` with `rights`.
    pub fn new<I, S>(entity: Entity, rights: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            entity,
            rights: rights.into_iter().map(Into::into).collect(),
        }
    }

    /// Checks that the key belongs to `entity` and has `right`.
    pub fn require(&self, entity: &Entity, right: &str) -> Result<(), AuthError> {
        if &self.entity != entity {
            return Err(AuthError::WrongEntity {
                expected: entity.to_string(),
                actual: self.entity.to_string(),
            });
        }
        if !self.rights.contains(right) {
            return Err(AuthError::MissingRight {
                entity: self.entity.to_string(),
                right: right.to_owned(),
            });
        }
        Ok(())
    }
}

/// The authenticated caller of a gRPC call, set in the request extensions by the
/// authentication layer (see [`super::Authenticator::layer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A role of this cluster, authenticated by a cluster key: trusted for every call.
    Cluster,
    /// A caller outside the cluster, authenticated by an API key.
    ApiKey(AuthInfo),
}

impl Caller {
    /// The caller of a request that went through the authentication layer.
    ///
    /// Fails with [`AuthError::MissingCredentials`] when the optional layer let an
    /// unauthenticated call through, and with [`AuthError::NotAuthenticated`] when no layer ran.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, AuthError> {
        match request.extensions().get::<Authenticated>() {
            Some(Authenticated(Some(caller))) => Ok(caller),
            Some(Authenticated(None)) => Err(AuthError::MissingCredentials),
            None => Err(AuthError::NotAuthenticated),
        }
    }

    /// Whether the caller is a role of the cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster)
    }

    /// Allows roles of the cluster only; `what` names the call in the error, e.g.
    /// `tern.v3.GsNs/HandleUplink`.
    pub fn require_cluster(&self, what: &str) -> Result<(), AuthError> {
        match self {
            Self::Cluster => Ok(()),
            Self::ApiKey(_) => Err(AuthError::ClusterOnly(what.to_owned())),
        }
    }

    /// Allows roles of the cluster, and API keys of `entity` that have `right`.
    pub fn require(&self, entity: &Entity, right: &str) -> Result<(), AuthError> {
        match self {
            Self::Cluster => Ok(()),
            Self::ApiKey(info) => info.require(entity, right),
        }
    }

    /// Allows roles of the cluster, and API keys of application `application_id` that have
    /// `right` (e.g. [`RIGHT_APPLICATION_LINK`]).
    pub fn require_application(&self, application_id: &str, right: &str) -> Result<(), AuthError> {
        self.require(&Entity::Application(application_id.to_owned()), right)
    }
}

/// The outcome of the authentication layer, stored in the request extensions: `None` when the
/// optional layer let a call without credentials through.
#[derive(Debug, Clone)]
pub(super) struct Authenticated(pub(super) Option<Caller>);

/// Why an API key was not verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// The key is not known.
    #[error("unknown API key")]
    Unknown,
    /// The key is known but expired.
    #[error("expired API key")]
    Expired,
    /// The key could not be checked now (e.g. the store or Identity Server is unreachable).
    #[error("{0}")]
    Unavailable(String),
}

impl From<ApiKeyError> for AuthError {
    fn from(e: ApiKeyError) -> Self {
        match e {
            ApiKeyError::Unknown => AuthError::ApiKeyUnknown,
            ApiKeyError::Expired => AuthError::ApiKeyExpired,
            ApiKeyError::Unavailable(why) => AuthError::VerifierUnavailable(why),
        }
    }
}

/// Resolves an API key to the entity it belongs to and its rights. The Identity Server
/// implements it.
#[async_trait]
pub trait ApiKeyVerifier: Send + Sync + fmt::Debug {
    /// Verifies `api_key` (the secret after `Bearer `).
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError>;
}
