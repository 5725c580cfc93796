//! Administration that works on the store directly, without a running server (`tern admin
//! ...`), and the record-level steps the gRPC services share with it.

use std::collections::BTreeSet;

use tern_api::{Timestamp, v3};
use tern_store::{EntityRef, RegistryStore, Store, Versioned};
use tonic::Status;

use crate::config::IsConfig;
use crate::core::Core;
use crate::grpc::{check_id, check_password, store_status};
use crate::rights;
use crate::secrets::{self, HashCost, NewApiKey};

/// Hashes off the async workers.
async fn hash(cost: HashCost, secret: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || cost.hash(&secret))
        .await
        .map_err(|e| Status::internal(format!("hashing: {e}")))?
        .map_err(Status::internal)
}

/// Validates and stores a new user (the password hashed); returns it without the password.
pub(crate) async fn create_user_record(
    core: &Core,
    mut user: v3::User,
) -> Result<v3::User, Status> {
    let id = user
        .ids
        .as_ref()
        .map(|i| i.user_id.clone())
        .unwrap_or_default();
    check_id("user.ids.user_id", &id)?;
    check_password("user.password", &user.password)?;
    let now = Timestamp::now();
    user.password = hash(core.config.hash_cost(), std::mem::take(&mut user.password)).await?;
    user.password_updated_at = Some(now);
    user.created_at = Some(now);
    user.updated_at = Some(now);
    core.store.create_user(&user).await.map_err(store_status)?;
    user.password.clear();
    Ok(user)
}

/// Replaces a user's password hash.
pub(crate) async fn set_password_record(
    core: &Core,
    current: Versioned<v3::User>,
    password: &str,
) -> Result<(), Status> {
    check_password("password", password)?;
    let mut user = current.value;
    user.password = hash(core.config.hash_cost(), password.to_owned()).await?;
    let now = Timestamp::now();
    user.password_updated_at = Some(now);
    user.updated_at = Some(now);
    core.store
        .update_user(&user, Some(current.version))
        .await
        .map_err(store_status)?;
    Ok(())
}

/// Stores a new API key of `entity`; returns the stored key (with its hash in `key`) and
/// the token to show once.
pub(crate) async fn new_api_key(
    core: &Core,
    entity: &EntityRef,
    name: &str,
    rights: &[i32],
    expires_at: Option<Timestamp>,
) -> Result<(v3::ApiKey, String), Status> {
    let generated = NewApiKey::generate();
    let now = Timestamp::now();
    let mut rights = rights.to_vec();
    rights.sort_unstable();
    rights.dedup();
    let key = v3::ApiKey {
        id: generated.id.clone(),
        key: hash(core.config.hash_cost(), generated.secret.clone()).await?,
        name: name.to_owned(),
        rights,
        created_at: Some(now),
        updated_at: Some(now),
        expires_at,
    };
    core.store
        .create_api_key(entity, &key)
        .await
        .map_err(store_status)?;
    Ok((key, generated.token()))
}

/// Offline administration on a store, for `tern admin ...`: no event bus (a running IS
/// learns of the change when its caches expire, or at once for new entities).
pub struct Admin {
    core: Core,
}

impl Admin {
    /// Administration of `store` with the IS configuration (for the hash cost).
    pub fn new(store: Store, config: IsConfig) -> Self {
        Self {
            core: Core::new(store, None, config),
        }
    }

    /// Creates a user; a random password when `password` is `None`. Returns the password.
    pub async fn create_user(
        &self,
        user_id: &str,
        password: Option<String>,
        email: &str,
        admin: bool,
    ) -> anyhow::Result<String> {
        let password = password.unwrap_or_else(secrets::random_password);
        let user = v3::User {
            ids: Some(v3::UserIdentifiers {
                user_id: user_id.to_owned(),
                ..Default::default()
            }),
            primary_email_address: email.to_owned(),
            admin,
            password: password.clone(),
            ..Default::default()
        };
        create_user_record(&self.core, user)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(password)
    }

    /// Sets a user's password.
    pub async fn set_password(&self, user_id: &str, password: &str) -> anyhow::Result<()> {
        check_id("user_id", user_id).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let current = self
            .core
            .store
            .get_user(user_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("user `{user_id}` not found"))?;
        set_password_record(&self.core, current, password)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
    }

    /// Creates an API key for `entity` (e.g. `user:admin`, `application:app-1`) with
    /// `rights` (strings such as `all`, `application:info`). Returns the key's ID and the
    /// token to show once.
    pub async fn create_api_key(
        &self,
        entity: &str,
        name: &str,
        rights_list: &[String],
        expires_at: Option<std::time::SystemTime>,
    ) -> anyhow::Result<(String, String)> {
        let entity = parse_entity(entity)?;
        let exists = match &entity {
            EntityRef::User(id) => self.core.store.get_user(id).await?.is_some(),
            EntityRef::Organization(id) => self.core.store.get_organization(id).await?.is_some(),
            EntityRef::Application(id) => self.core.store.get_application(id).await?.is_some(),
            EntityRef::Gateway(id) => self.core.store.get_gateway(id).await?.is_some(),
            EntityRef::EndDevice { .. } => false,
        };
        if !exists {
            anyhow::bail!("{} not found", entity.key()?);
        }
        let set: BTreeSet<String> = rights_list.iter().map(|r| r.trim().to_owned()).collect();
        let mut enums = Vec::new();
        for r in &set {
            let right = rights::from_str(r).ok_or_else(|| {
                anyhow::anyhow!("--rights: {r:?} is not a right (e.g. all, application:info)")
            })?;
            enums.push(right as i32);
        }
        if enums.is_empty() {
            anyhow::bail!("--rights: at least one right is needed");
        }
        let (key, token) = new_api_key(
            &self.core,
            &entity,
            name,
            &enums,
            expires_at.map(Timestamp::from),
        )
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok((key.id, token))
    }
}

/// Parses `<kind>:<id>` (`user:admin`); a bare ID is a user.
pub fn parse_entity(s: &str) -> anyhow::Result<EntityRef> {
    let (kind, id) = s.split_once(':').unwrap_or(("user", s));
    check_id("entity", id).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    Ok(match kind {
        "user" => EntityRef::User(id.to_owned()),
        "organization" | "org" => EntityRef::Organization(id.to_owned()),
        "application" | "app" => EntityRef::Application(id.to_owned()),
        "gateway" | "gw" => EntityRef::Gateway(id.to_owned()),
        other => anyhow::bail!(
            "entity {s:?}: unknown kind {other:?}; use user:ID, organization:ID, application:ID or gateway:ID"
        ),
    })
}
