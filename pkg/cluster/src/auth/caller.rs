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

/// What verified credentials (an API key or a user's access token) may do: the entity they
/// belong to and their rights on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// The entity the credentials belong to (the key's entity, or the logged-in user).
    pub entity: Entity,
    /// Rights on `entity`, such as `application:link`; `all` and `<kind>:all` imply others
    /// (see [`grants`]).
    pub rights: BTreeSet<String>,
    /// Administrators may do everything on every entity.
    pub is_admin: bool,
    /// The ID of the API key or token, for logs and revocation; never the secret.
    pub credential_id: String,
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
            is_admin: false,
            credential_id: String::new(),
        }
    }

    /// The same credentials, of an administrator.
    pub fn admin(mut self) -> Self {
        self.is_admin = true;
        self
    }

    /// The same credentials, named `id` in logs.
    pub fn with_credential_id(mut self, id: impl Into<String>) -> Self {
        self.credential_id = id.into();
        self
    }

    /// Checks that the key belongs to `entity` and has `right` (administrators pass).
    pub fn require(&self, entity: &Entity, right: &str) -> Result<(), AuthError> {
        if self.is_admin {
            return Ok(());
        }
        if &self.entity != entity {
            return Err(AuthError::WrongEntity {
                expected: entity.to_string(),
                actual: self.entity.to_string(),
            });
        }
        if !grants(&self.rights, right) {
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

/// Allows roles of the cluster, administrators, and credentials with `right` on `entity`:
/// held on their own entity, or through the Identity Server's relations (a user's key on an
/// application of an organization the user belongs to). The refusal names the missing right.
pub async fn require<T>(
    request: &tonic::Request<T>,
    entity: &Entity,
    right: &str,
) -> Result<(), AuthError> {
    let info = match Caller::of(request)? {
        Caller::Cluster => return Ok(()),
        Caller::ApiKey(info) => info,
    };
    if info.is_admin {
        return Ok(());
    }
    if &info.entity == entity {
        return info.require(entity, right);
    }
    let verifier = request
        .extensions()
        .get::<super::server::VerifierHandle>()
        .and_then(|h| h.0.clone());
    let rights = match verifier {
        Some(verifier) => verifier.rights_on(info, entity).await?,
        None => BTreeSet::new(),
    };
    if grants(&rights, right) {
        Ok(())
    } else {
        Err(AuthError::MissingRightOn {
            holder: info.entity.to_string(),
            entity: entity.to_string(),
            right: right.to_owned(),
        })
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

/// Whether `rights` grant `right`: held as such, or implied by `all` or by `<kind>:all`
/// (`application:all` implies every `application:…` right).
pub fn grants(rights: &BTreeSet<String>, right: &str) -> bool {
    if rights.contains(right) || rights.contains("all") {
        return true;
    }
    match right.split_once(':') {
        Some((kind, _)) => rights.contains(&format!("{kind}:all")),
        None => false,
    }
}

/// Resolves bearer credentials (an API key or an access token) to the entity they belong to
/// and their rights, and answers what rights they carry on other entities (a user's key on
/// the applications the user collaborates on). The Identity Server implements it, in-process
/// or over gRPC.
#[async_trait]
pub trait ApiKeyVerifier: Send + Sync + fmt::Debug {
    /// Verifies `api_key` (the secret after `Bearer `).
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError>;

    /// The rights `info` carries on `entity`, another entity than its own: through
    /// ownership, organization membership or collaboration, limited to the key's own rights.
    /// The default knows no such relations.
    async fn rights_on(
        &self,
        _info: &AuthInfo,
        _entity: &Entity,
    ) -> Result<BTreeSet<String>, ApiKeyError> {
        Ok(BTreeSet::new())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::server::VerifierHandle;

    /// A verifier that knows one relation: user `alice` collaborates on application `app-1`
    /// with `application:devices:read`.
    #[derive(Debug)]
    struct Relations;

    #[async_trait]
    impl ApiKeyVerifier for Relations {
        async fn verify(&self, _api_key: &str) -> Result<AuthInfo, ApiKeyError> {
            Err(ApiKeyError::Unknown)
        }

        async fn rights_on(
            &self,
            info: &AuthInfo,
            entity: &Entity,
        ) -> Result<BTreeSet<String>, ApiKeyError> {
            let mut rights = BTreeSet::new();
            if info.entity == Entity::User("alice".into())
                && *entity == Entity::Application("app-1".into())
            {
                rights.insert("application:devices:read".to_owned());
            }
            Ok(rights)
        }
    }

    fn request(caller: Caller) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(Authenticated(Some(caller)));
        request
            .extensions_mut()
            .insert(VerifierHandle(Some(Arc::new(Relations))));
        request
    }

    #[test]
    fn all_and_kind_all_imply_rights() {
        let set = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(grants(&set(&["all"]), "gateway:link"));
        assert!(grants(
            &set(&["application:all"]),
            "application:devices:write"
        ));
        assert!(!grants(&set(&["application:all"]), "gateway:link"));
        assert!(grants(&set(&["gateway:link"]), "gateway:link"));
        assert!(!grants(&set(&["gateway:info"]), "gateway:link"));
    }

    #[tokio::test]
    async fn require_checks_own_entity_relations_and_admin() {
        let app1 = Entity::Application("app-1".into());
        let app2 = Entity::Application("app-2".into());

        let own = Caller::ApiKey(AuthInfo::new(app1.clone(), ["application:link"]));
        require(&request(own.clone()), &app1, "application:link")
            .await
            .unwrap();
        let err = require(&request(own), &app1, "application:devices:write")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.to_string().contains("application:devices:write"),
            "{err}"
        );

        let alice = Caller::ApiKey(AuthInfo::new(Entity::User("alice".into()), ["user:all"]));
        require(&request(alice.clone()), &app1, "application:devices:read")
            .await
            .unwrap();
        let err = require(&request(alice.clone()), &app1, "application:devices:write")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "credentials of user `alice` lack the right `application:devices:write` on \
             application `app-1`"
        );
        assert!(
            require(&request(alice), &app2, "application:info")
                .await
                .is_err()
        );

        let admin =
            Caller::ApiKey(AuthInfo::new(Entity::User("root".into()), ["user:all"]).admin());
        require(&request(admin), &app2, "application:delete")
            .await
            .unwrap();
        require(&request(Caller::Cluster), &app2, "application:delete")
            .await
            .unwrap();
    }
}
