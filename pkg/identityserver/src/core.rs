//! The state every part of the IS shares: the store, the event bus, hashing, the verified-key
//! cache and the rights computation.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::{ApiKeyError, ApiKeyVerifier, AuthInfo, Entity};
use tern_events::EventBus;
use tern_store::{AccountRef, EntityRef, RegistryStore, Store, StoreError};
use tokio::sync::OnceCell;

use crate::cache::RegistryCache;
use crate::config::IsConfig;
use crate::metrics::Metrics;
use crate::rights;
use crate::secrets::{self, API_KEY_PREFIX};
use crate::tokens::TokenKeys;

/// What the IS parts share.
pub(crate) struct Core {
    pub store: Store,
    pub events: Option<EventBus>,
    pub config: IsConfig,
    pub keys: KeyCache,
    pub registry: RegistryCache,
    pub token_keys: OnceCell<TokenKeys>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

impl Core {
    pub fn new(store: Store, events: Option<EventBus>, config: IsConfig) -> Self {
        let keys = KeyCache::new(config.api_key_cache_ttl);
        let registry = RegistryCache::new(config.registry_cache_ttl);
        Self {
            store,
            events,
            config,
            keys,
            registry,
            token_keys: OnceCell::new(),
            metrics: Metrics::default(),
        }
    }

    /// Publishes an event (when a bus is attached) and applies it to this process's caches
    /// at once, so a change is visible here before the event comes back.
    pub fn publish(&self, event: v3::Event) {
        crate::cache::invalidate(self, &event);
        if let Some(bus) = &self.events {
            bus.publish(event);
        }
    }

    /// Verifies an API key `TERN.<id>.<secret>`: from the cache, else one slow hash.
    async fn verify_api_key(&self, token: &str) -> Result<AuthInfo, ApiKeyError> {
        let Some((id, secret)) = secrets::split_token(API_KEY_PREFIX, token) else {
            return Err(ApiKeyError::Unknown);
        };
        let digest = secrets::sha256(secret);
        if let Some(hit) = self.keys.get(id, &digest) {
            return hit;
        }
        let generation = self.keys.generation();
        let stored = self
            .store
            .get_api_key(id)
            .await
            .map_err(|e| ApiKeyError::Unavailable(e.to_string()))?
            .ok_or(ApiKeyError::Unknown)?
            .value;
        let hash = stored.api_key.key.clone();
        let secret = secret.to_owned();
        // argon2 takes milliseconds of CPU: off the async workers.
        let ok = tokio::task::spawn_blocking(move || secrets::verify_hash(&secret, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(ApiKeyError::Unknown);
        }
        let entity = to_entity(&stored.entity).ok_or(ApiKeyError::Unknown)?;
        let rights = rights::strings("rights", &stored.api_key.rights).unwrap_or_default();
        // A user's key with every right (`all`) carries the user's admin flag.
        let mut is_admin = false;
        if let Entity::User(user_id) = &entity
            && rights.contains("all")
        {
            let user = self
                .store
                .get_user(user_id)
                .await
                .map_err(|e| ApiKeyError::Unavailable(e.to_string()))?
                .ok_or(ApiKeyError::Unknown)?;
            is_admin = user.value.admin;
        }
        let mut info = AuthInfo::new(entity, rights).with_credential_id(id);
        info.is_admin = is_admin;
        let expires = stored
            .api_key
            .expires_at
            .and_then(|t| t.to_datetime())
            .map(SystemTime::from);
        self.keys
            .insert(id, digest, info.clone(), expires, generation);
        check_expiry(expires)?;
        Ok(info)
    }

    /// The rights `holder` (with its credentials' `holder_rights`) has on `target` through
    /// ownership, membership and collaboration, limited to `holder_rights`.
    pub async fn rights_on(
        &self,
        holder: &Entity,
        holder_rights: &BTreeSet<String>,
        target: &Entity,
    ) -> Result<BTreeSet<String>, StoreError> {
        let target_ref = to_ref(target);
        let mut found = BTreeSet::new();
        match holder {
            Entity::User(user_id) => {
                let memberships = self
                    .store
                    .list_memberships(&AccountRef::User(user_id.clone()))
                    .await?;
                for m in &memberships {
                    let held = rights::strings("rights", &m.rights).unwrap_or_default();
                    if m.entity == target_ref {
                        found.extend(held.iter().cloned());
                    }
                    // Through an organization: what the organization has on the target,
                    // limited to what the member may do in the organization.
                    if let EntityRef::Organization(org) = &m.entity
                        && !matches!(target, Entity::Organization(_) | Entity::User(_))
                        && let Some(c) = self
                            .store
                            .get_collaborator(&target_ref, &AccountRef::Organization(org.clone()))
                            .await?
                    {
                        let org_rights = rights::strings("rights", &c.rights).unwrap_or_default();
                        found.extend(rights::intersect(&held, &org_rights));
                    }
                }
            }
            Entity::Organization(org) => {
                if let Some(c) = self
                    .store
                    .get_collaborator(&target_ref, &AccountRef::Organization(org.clone()))
                    .await?
                {
                    found.extend(rights::strings("rights", &c.rights).unwrap_or_default());
                }
            }
            Entity::Application(_) | Entity::Gateway(_) => {}
        }
        Ok(rights::intersect(holder_rights, &found))
    }
}

/// Whether an expiry has passed.
fn check_expiry(expires: Option<SystemTime>) -> Result<(), ApiKeyError> {
    match expires {
        Some(t) if t <= SystemTime::now() => Err(ApiKeyError::Expired),
        _ => Ok(()),
    }
}

/// The store's form of an entity.
pub(crate) fn to_ref(e: &Entity) -> EntityRef {
    match e {
        Entity::Application(id) => EntityRef::Application(id.clone()),
        Entity::Gateway(id) => EntityRef::Gateway(id.clone()),
        Entity::User(id) => EntityRef::User(id.clone()),
        Entity::Organization(id) => EntityRef::Organization(id.clone()),
    }
}

/// The auth form of an entity; end devices have none (their application holds the rights).
pub(crate) fn to_entity(e: &EntityRef) -> Option<Entity> {
    Some(match e {
        EntityRef::Application(id) => Entity::Application(id.clone()),
        EntityRef::Gateway(id) => Entity::Gateway(id.clone()),
        EntityRef::User(id) => Entity::User(id.clone()),
        EntityRef::Organization(id) => Entity::Organization(id.clone()),
        EntityRef::EndDevice { .. } => return None,
    })
}

/// API keys verified recently, by key ID, with the SHA-256 digest of the secret that
/// matched: a later call with the same secret skips the slow hash.
pub(crate) struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, CachedKey>>,
    // Bumped by every invalidation: a verification that started before one does not cache.
    generation: AtomicU64,
}

struct CachedKey {
    digest: [u8; 32],
    info: AuthInfo,
    expires: Option<SystemTime>,
    cached_at: Instant,
}

impl KeyCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn get(&self, id: &str, digest: &[u8; 32]) -> Option<Result<AuthInfo, ApiKeyError>> {
        let entries = self.entries.lock().expect("key cache lock");
        let e = entries.get(id)?;
        if e.cached_at.elapsed() > self.ttl || !secrets::ct_eq(&e.digest, digest) {
            return None;
        }
        Some(check_expiry(e.expires).map(|()| e.info.clone()))
    }

    fn insert(
        &self,
        id: &str,
        digest: [u8; 32],
        info: AuthInfo,
        expires: Option<SystemTime>,
        generation: u64,
    ) {
        let mut entries = self.entries.lock().expect("key cache lock");
        if self.generation() != generation {
            return;
        }
        entries.insert(
            id.to_owned(),
            CachedKey {
                digest,
                info,
                expires,
                cached_at: Instant::now(),
            },
        );
    }

    /// Forgets one key.
    pub fn remove(&self, id: &str) {
        let mut entries = self.entries.lock().expect("key cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.remove(id);
    }

    /// Forgets every key (a user's admin flag changed, an entity was deleted, events lost).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().expect("key cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("key cache lock").len()
    }
}

/// The IS's [`ApiKeyVerifier`]: API keys (`TERN.…`) and access tokens (JWTs), in-process.
#[derive(Debug, Clone)]
pub struct IsVerifier(pub(crate) Arc<Core>);

#[async_trait]
impl ApiKeyVerifier for IsVerifier {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        let result = if api_key.starts_with("TERN.") {
            self.0.verify_api_key(api_key).await
        } else if api_key.starts_with("eyJ") {
            crate::tokens::verify_access_token(&self.0, api_key).await
        } else {
            Err(ApiKeyError::Unknown)
        };
        if let Err(e) = &result {
            let reason = match e {
                ApiKeyError::Unknown => "unknown_credentials",
                ApiKeyError::Expired => "expired_credentials",
                ApiKeyError::Unavailable(_) => "verifier_unavailable",
            };
            self.0.metrics.reject(reason);
        }
        result
    }

    async fn rights_on(
        &self,
        info: &AuthInfo,
        entity: &Entity,
    ) -> Result<BTreeSet<String>, ApiKeyError> {
        self.0
            .rights_on(&info.entity, &info.rights, entity)
            .await
            .map_err(|e| ApiKeyError::Unavailable(e.to_string()))
    }
}
