//! [`RemoteVerifier`]: an [`ApiKeyVerifier`] for processes without the Identity Server, which
//! asks an IS over gRPC.
//!
//! - `verify` forwards the bearer credentials unchanged to `tern.v3.Auth/GetAuthInfo`: the IS
//!   answers with the entity and rights of the key or access token.
//! - `rights_on` asks the cluster-only `tern.v3.EntityAccess/GetRightsOn` with the cluster
//!   key: the rights of the holder (limited to the credentials' rights) on another entity.
//!
//! Positive answers are cached for [`RemoteVerifier::DEFAULT_CACHE_TTL`] (a few seconds, set
//! with [`RemoteVerifier::with_cache_ttl`]): a revoked key or removed collaborator keeps
//! working in this process at most that long. Refusals are never cached. The IS is found
//! through the peer directory (static `cluster.identity-server` or etcd), the first peer
//! with the IS role.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tern_api::v3;
use tern_api::v3::entity_identifiers::Ids;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::{ApiKeyError, ApiKeyVerifier, AuthInfo, CallCredentials, Entity};
use crate::directory::{PeerDirectory, PeerRole};
use crate::links::grpc::CONNECT_TIMEOUT;

/// Where a [`RemoteVerifier`] finds the Identity Server.
pub enum IsAddress {
    /// Through the peer directory: the first peer with the IS role.
    Directory(Arc<dyn PeerDirectory>),
    /// A fixed gRPC URL (`http://host:1884`).
    Static(String),
}

/// Verifies credentials by asking an Identity Server in another process.
pub struct RemoteVerifier {
    address: IsAddress,
    cluster: CallCredentials,
    ttl: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    verified: Mutex<HashMap<[u8; 32], (AuthInfo, Instant)>>,
    relations: Mutex<HashMap<RelationKey, (BTreeSet<String>, Instant)>>,
}

type RelationKey = (Entity, Vec<String>, Entity);

/// Entries the caches may hold before they are emptied (bounds memory under key spraying).
const MAX_CACHED: usize = 100_000;

impl std::fmt::Debug for RemoteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteVerifier")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RemoteVerifier {
    /// How long positive answers are cached by default.
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5);

    /// Asks the IS at `address`; `cluster` (the cluster key credentials) authenticates the
    /// cluster-only `GetRightsOn`.
    pub fn new(address: IsAddress, cluster: CallCredentials) -> Self {
        Self {
            address,
            cluster,
            ttl: Self::DEFAULT_CACHE_TTL,
            channels: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            relations: Mutex::new(HashMap::new()),
        }
    }

    /// Caches positive answers for `ttl` (zero: no cache).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn channel(&self) -> Result<Channel, ApiKeyError> {
        let address = match &self.address {
            IsAddress::Static(a) => a.clone(),
            IsAddress::Directory(d) => d
                .peers(PeerRole::IdentityServer)
                .into_iter()
                .next()
                .map(|p| p.address)
                .ok_or_else(|| {
                    ApiKeyError::Unavailable(
                        "no Identity Server is known: check cluster.identity-server or etcd".into(),
                    )
                })?,
        };
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(c) = channels.get(&address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(address.clone())
            .map_err(|e| ApiKeyError::Unavailable(format!("IS address {address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address, channel.clone());
        Ok(channel)
    }

    fn fresh<K: std::hash::Hash + Eq, V: Clone>(
        &self,
        map: &Mutex<HashMap<K, (V, Instant)>>,
        key: &K,
    ) -> Option<V> {
        let map = map.lock().expect("verifier cache lock");
        map.get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    fn remember<K: std::hash::Hash + Eq, V>(
        &self,
        map: &Mutex<HashMap<K, (V, Instant)>>,
        key: K,
        value: V,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = map.lock().expect("verifier cache lock");
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(key, (value, Instant::now()));
    }
}

fn status_error(status: tonic::Status) -> ApiKeyError {
    match status.code() {
        Code::Unauthenticated if status.message().contains("expired") => ApiKeyError::Expired,
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound => ApiKeyError::Unknown,
        _ => ApiKeyError::Unavailable(format!("Identity Server: {}", status.message())),
    }
}

/// The auth form of API entity identifiers; `None` for end devices and unset ones.
fn entity(ids: Option<&v3::EntityIdentifiers>) -> Option<Entity> {
    Some(match ids?.ids.as_ref()? {
        Ids::ApplicationIds(a) => Entity::Application(a.application_id.clone()),
        Ids::GatewayIds(g) => Entity::Gateway(g.gateway_id.clone()),
        Ids::OrganizationIds(o) => Entity::Organization(o.organization_id.clone()),
        Ids::UserIds(u) => Entity::User(u.user_id.clone()),
        Ids::DeviceIds(_) => return None,
    })
}

/// The API form of an entity.
fn entity_ids(e: &Entity) -> v3::EntityIdentifiers {
    let ids = match e.clone() {
        Entity::Application(application_id) => {
            Ids::ApplicationIds(v3::ApplicationIdentifiers { application_id })
        }
        Entity::Gateway(gateway_id) => Ids::GatewayIds(v3::GatewayIdentifiers {
            gateway_id,
            ..Default::default()
        }),
        Entity::Organization(organization_id) => {
            Ids::OrganizationIds(v3::OrganizationIdentifiers { organization_id })
        }
        Entity::User(user_id) => Ids::UserIds(v3::UserIdentifiers {
            user_id,
            ..Default::default()
        }),
    };
    v3::EntityIdentifiers { ids: Some(ids) }
}

#[async_trait]
impl ApiKeyVerifier for RemoteVerifier {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        let digest: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        if let Some(info) = self.fresh(&self.verified, &digest) {
            return Ok(info);
        }
        let bearer = CallCredentials::api_key(api_key).map_err(|_| ApiKeyError::Unknown)?;
        let mut client = v3::auth_client::AuthClient::with_interceptor(self.channel()?, bearer);
        let answer = client
            .get_auth_info(pbjson_types::Empty {})
            .await
            .map_err(status_error)?
            .into_inner();
        let entity = entity(answer.entity_ids.as_ref()).ok_or(ApiKeyError::Unknown)?;
        let mut info =
            AuthInfo::new(entity, answer.right_names).with_credential_id(answer.credential_id);
        info.is_admin = answer.is_admin;
        self.remember(&self.verified, digest, info.clone());
        Ok(info)
    }

    async fn rights_on(
        &self,
        info: &AuthInfo,
        target: &Entity,
    ) -> Result<BTreeSet<String>, ApiKeyError> {
        let held: Vec<String> = info.rights.iter().cloned().collect();
        let key = (info.entity.clone(), held.clone(), target.clone());
        if let Some(rights) = self.fresh(&self.relations, &key) {
            return Ok(rights);
        }
        let mut client = v3::entity_access_client::EntityAccessClient::with_interceptor(
            self.channel()?,
            self.cluster.clone(),
        );
        let answer = client
            .get_rights_on(v3::GetRightsOnRequest {
                holder_ids: Some(entity_ids(&info.entity)),
                holder_rights: held,
                entity_ids: Some(entity_ids(target)),
            })
            .await
            .map_err(|s| ApiKeyError::Unavailable(format!("Identity Server: {}", s.message())))?
            .into_inner();
        let rights: BTreeSet<String> = answer.rights.into_iter().collect();
        self.remember(&self.relations, key, rights.clone());
        Ok(rights)
    }
}
