//! The Identity Server's registry: users, organizations, applications, gateways, end
//! devices, API keys and collaborators.

use async_trait::async_trait;
use lorawan::Eui64;
use prost::Message;
use tern_api::v3;
use tern_api::v3::entity_identifiers::Ids as EntityIds;
use tern_api::v3::organization_or_user_identifiers::Ids as AccountIds;

use super::{
    Versioned, check_id, decode, device_key, euis_key, expect_existing, get, list, list_all,
    opt_eui,
};
use crate::error::{Result, StoreError};
use crate::kv::{Batch, Expect, Index, IndexEntry, Page, Table};
use crate::store::Store;

/// Users, by user ID.
pub static USERS: Table = Table {
    name: "is.user",
    what: "user",
};
/// Organizations, by organization ID.
pub static ORGANIZATIONS: Table = Table {
    name: "is.organization",
    what: "organization",
};
/// Applications, by application ID.
pub static APPLICATIONS: Table = Table {
    name: "is.application",
    what: "application",
};
/// Gateways, by gateway ID.
pub static GATEWAYS: Table = Table {
    name: "is.gateway",
    what: "gateway",
};
/// End devices, by `application_id/device_id`.
pub static END_DEVICES: Table = Table {
    name: "is.end-device",
    what: "end device",
};
/// API keys, by key ID.
pub static API_KEYS: Table = Table {
    name: "is.api-key",
    what: "API key",
};
/// Collaborators, by `entity#account`.
pub static COLLABORATORS: Table = Table {
    name: "is.collaborator",
    what: "collaborator",
};

/// User and organization IDs share one namespace.
pub static ACCOUNT_ID: Index = Index {
    name: "is.account-id",
    what: "user or organization ID",
    unique: true,
};
/// A user's primary e-mail address, lowercased.
pub static USER_EMAIL: Index = Index {
    name: "is.user-email",
    what: "e-mail address",
    unique: true,
};
/// A gateway's EUI.
pub static GATEWAY_EUI: Index = Index {
    name: "is.gateway-eui",
    what: "gateway EUI",
    unique: true,
};
/// An end device's `joineui/deveui`, unique across the deployment.
pub static END_DEVICE_EUIS: Index = Index {
    name: "is.end-device-euis",
    what: "end device JoinEUI/DevEUI",
    unique: true,
};
/// The entity an API key belongs to.
pub static API_KEY_ENTITY: Index = Index {
    name: "is.api-key-entity",
    what: "API key entity",
    unique: false,
};
/// The account of a collaborator entry.
pub static COLLABORATOR_ACCOUNT: Index = Index {
    name: "is.collaborator-account",
    what: "collaborator account",
    unique: false,
};

/// Any entity that can have API keys, collaborators or rights.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntityRef {
    /// An application.
    Application(String),
    /// A gateway.
    Gateway(String),
    /// An organization.
    Organization(String),
    /// A user.
    User(String),
    /// An end device.
    EndDevice {
        /// Its application.
        application_id: String,
        /// Its ID within the application.
        device_id: String,
    },
}

impl EntityRef {
    /// The stored form, e.g. `application:my-app`.
    pub fn key(&self) -> Result<String> {
        Ok(match self {
            Self::Application(id) => {
                check_id("application_id", id)?;
                format!("application:{id}")
            }
            Self::Gateway(id) => {
                check_id("gateway_id", id)?;
                format!("gateway:{id}")
            }
            Self::Organization(id) => {
                check_id("organization_id", id)?;
                format!("organization:{id}")
            }
            Self::User(id) => {
                check_id("user_id", id)?;
                format!("user:{id}")
            }
            Self::EndDevice {
                application_id,
                device_id,
            } => format!("end-device:{}", device_key(application_id, device_id)?),
        })
    }

    /// Parses the stored form back.
    fn from_key(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once(':')?;
        let id = id.to_owned();
        Some(match kind {
            "application" => Self::Application(id),
            "gateway" => Self::Gateway(id),
            "organization" => Self::Organization(id),
            "user" => Self::User(id),
            "end-device" => {
                let (a, d) = id.split_once('/')?;
                Self::EndDevice {
                    application_id: a.to_owned(),
                    device_id: d.to_owned(),
                }
            }
            _ => return None,
        })
    }

    /// The API form.
    pub fn to_ids(&self) -> v3::EntityIdentifiers {
        let ids = match self.clone() {
            Self::Application(application_id) => {
                EntityIds::ApplicationIds(v3::ApplicationIdentifiers { application_id })
            }
            Self::Gateway(gateway_id) => EntityIds::GatewayIds(v3::GatewayIdentifiers {
                gateway_id,
                ..Default::default()
            }),
            Self::Organization(organization_id) => {
                EntityIds::OrganizationIds(v3::OrganizationIdentifiers { organization_id })
            }
            Self::User(user_id) => EntityIds::UserIds(v3::UserIdentifiers {
                user_id,
                ..Default::default()
            }),
            Self::EndDevice {
                application_id,
                device_id,
            } => EntityIds::DeviceIds(v3::EndDeviceIdentifiers {
                application_ids: Some(v3::ApplicationIdentifiers { application_id }),
                device_id,
                ..Default::default()
            }),
        };
        v3::EntityIdentifiers { ids: Some(ids) }
    }
}

impl TryFrom<&v3::EntityIdentifiers> for EntityRef {
    type Error = StoreError;

    fn try_from(ids: &v3::EntityIdentifiers) -> Result<Self> {
        let missing = || StoreError::InvalidArgument {
            field: "entity_ids",
            reason: "no entity set".into(),
        };
        Ok(match ids.ids.as_ref().ok_or_else(missing)? {
            EntityIds::ApplicationIds(a) => Self::Application(a.application_id.clone()),
            EntityIds::GatewayIds(g) => Self::Gateway(g.gateway_id.clone()),
            EntityIds::OrganizationIds(o) => Self::Organization(o.organization_id.clone()),
            EntityIds::UserIds(u) => Self::User(u.user_id.clone()),
            EntityIds::DeviceIds(d) => Self::EndDevice {
                application_id: d
                    .application_ids
                    .as_ref()
                    .map(|a| a.application_id.clone())
                    .unwrap_or_default(),
                device_id: d.device_id.clone(),
            },
        })
    }
}

/// A user or an organization: who can be a collaborator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccountRef {
    /// A user.
    User(String),
    /// An organization.
    Organization(String),
}

impl AccountRef {
    fn entity(&self) -> EntityRef {
        match self {
            Self::User(id) => EntityRef::User(id.clone()),
            Self::Organization(id) => EntityRef::Organization(id.clone()),
        }
    }

    /// The API form.
    pub fn to_ids(&self) -> v3::OrganizationOrUserIdentifiers {
        let ids = match self.clone() {
            Self::User(user_id) => AccountIds::UserIds(v3::UserIdentifiers {
                user_id,
                ..Default::default()
            }),
            Self::Organization(organization_id) => {
                AccountIds::OrganizationIds(v3::OrganizationIdentifiers { organization_id })
            }
        };
        v3::OrganizationOrUserIdentifiers { ids: Some(ids) }
    }
}

impl TryFrom<&v3::OrganizationOrUserIdentifiers> for AccountRef {
    type Error = StoreError;

    fn try_from(ids: &v3::OrganizationOrUserIdentifiers) -> Result<Self> {
        match &ids.ids {
            Some(AccountIds::UserIds(u)) => Ok(Self::User(u.user_id.clone())),
            Some(AccountIds::OrganizationIds(o)) => {
                Ok(Self::Organization(o.organization_id.clone()))
            }
            None => Err(StoreError::InvalidArgument {
                field: "collaborator.ids",
                reason: "neither a user nor an organization".into(),
            }),
        }
    }
}

/// An API key with the entity it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredApiKey {
    /// The entity.
    pub entity: EntityRef,
    /// The key as the IS stored it (its `key` is whatever the IS put there: a hash).
    pub api_key: v3::ApiKey,
}

/// Rights of an account on an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// The entity.
    pub entity: EntityRef,
    /// The rights (`v3::Right` values).
    pub rights: Vec<i32>,
}

/// The stored form of an API key.
#[derive(Clone, PartialEq, Message)]
struct ApiKeyRecord {
    #[prost(message, optional, tag = "1")]
    entity_ids: Option<v3::EntityIdentifiers>,
    #[prost(message, optional, tag = "2")]
    api_key: Option<v3::ApiKey>,
}

/// The stored form of a collaborator entry.
#[derive(Clone, PartialEq, Message)]
struct CollaboratorRecord {
    #[prost(message, optional, tag = "1")]
    entity_ids: Option<v3::EntityIdentifiers>,
    #[prost(message, optional, tag = "2")]
    collaborator: Option<v3::Collaborator>,
}

/// A registry entity: how it is keyed and indexed.
trait Entity: Message + Default {
    const TABLE: &'static Table;
    fn key(&self) -> Result<String>;
    fn indexes(&self) -> Result<Vec<IndexEntry>>;
}

impl Entity for v3::User {
    const TABLE: &'static Table = &USERS;
    fn key(&self) -> Result<String> {
        let id = self.ids.as_ref().map(|i| i.user_id.as_str()).unwrap_or("");
        check_id("ids.user_id", id)?;
        Ok(id.to_owned())
    }
    fn indexes(&self) -> Result<Vec<IndexEntry>> {
        let mut out = vec![IndexEntry::new(&ACCOUNT_ID, self.key()?)];
        if !self.primary_email_address.is_empty() {
            out.push(IndexEntry::new(
                &USER_EMAIL,
                self.primary_email_address.to_lowercase(),
            ));
        }
        Ok(out)
    }
}

impl Entity for v3::Organization {
    const TABLE: &'static Table = &ORGANIZATIONS;
    fn key(&self) -> Result<String> {
        let id = self
            .ids
            .as_ref()
            .map(|i| i.organization_id.as_str())
            .unwrap_or("");
        check_id("ids.organization_id", id)?;
        Ok(id.to_owned())
    }
    fn indexes(&self) -> Result<Vec<IndexEntry>> {
        Ok(vec![IndexEntry::new(&ACCOUNT_ID, self.key()?)])
    }
}

impl Entity for v3::Application {
    const TABLE: &'static Table = &APPLICATIONS;
    fn key(&self) -> Result<String> {
        let id = self
            .ids
            .as_ref()
            .map(|i| i.application_id.as_str())
            .unwrap_or("");
        check_id("ids.application_id", id)?;
        Ok(id.to_owned())
    }
    fn indexes(&self) -> Result<Vec<IndexEntry>> {
        Ok(Vec::new())
    }
}

impl Entity for v3::Gateway {
    const TABLE: &'static Table = &GATEWAYS;
    fn key(&self) -> Result<String> {
        let id = self
            .ids
            .as_ref()
            .map(|i| i.gateway_id.as_str())
            .unwrap_or("");
        check_id("ids.gateway_id", id)?;
        Ok(id.to_owned())
    }
    fn indexes(&self) -> Result<Vec<IndexEntry>> {
        let eui = opt_eui(
            "ids.eui",
            self.ids.as_ref().map(|i| i.eui.as_slice()).unwrap_or(&[]),
        )?;
        Ok(eui
            .map(|e| IndexEntry::new(&GATEWAY_EUI, e.to_string()))
            .into_iter()
            .collect())
    }
}

impl Entity for v3::EndDevice {
    const TABLE: &'static Table = &END_DEVICES;
    fn key(&self) -> Result<String> {
        let ids = self
            .ids
            .as_ref()
            .ok_or_else(|| StoreError::InvalidArgument {
                field: "ids",
                reason: "required".into(),
            })?;
        let app = ids
            .application_ids
            .as_ref()
            .map(|a| a.application_id.as_str())
            .unwrap_or("");
        check_id("ids.application_ids.application_id", app)?;
        check_id("ids.device_id", &ids.device_id)?;
        device_key(app, &ids.device_id)
    }
    fn indexes(&self) -> Result<Vec<IndexEntry>> {
        let ids = self.ids.clone().unwrap_or_default();
        let join_eui = opt_eui("ids.join_eui", &ids.join_eui)?;
        let dev_eui = opt_eui("ids.dev_eui", &ids.dev_eui)?;
        // Only OTAA identities (both EUIs) must be unique: that is what a join is routed by.
        Ok(match (join_eui, dev_eui) {
            (Some(j), Some(d)) => vec![IndexEntry::new(&END_DEVICE_EUIS, euis_key(j, d))],
            _ => Vec::new(),
        })
    }
}

async fn put_entity<E: Entity + Sync>(store: &Store, e: &E, expect: Expect) -> Result<u64> {
    let mut batch = Batch::new();
    batch.put(E::TABLE, e.key()?, e.encode_to_vec(), expect, e.indexes()?);
    first(store.commit(batch).await?)
}

async fn delete_record(
    store: &Store,
    table: &'static Table,
    key: String,
    expected_version: Option<u64>,
) -> Result<()> {
    let mut batch = Batch::new();
    batch.delete(table, key, expect_existing(expected_version));
    store.commit(batch).await.map(drop)
}

async fn by_index<E: Entity>(
    store: &Store,
    index: &'static Index,
    key: &str,
) -> Result<Option<Versioned<E>>> {
    store
        .lookup(E::TABLE, index, key)
        .await?
        .into_iter()
        .next()
        .map(|r| decode(E::TABLE, r))
        .transpose()
}

fn first(versions: Vec<u64>) -> Result<u64> {
    versions.first().copied().ok_or(StoreError::Closed)
}

/// The Identity Server's storage. Creates fail with `AlreadyExists` when the ID (or a
/// unique attribute: user/organization ID, e-mail address, gateway EUI, device
/// JoinEUI/DevEUI) is taken; updates and deletes take the expected version (`None`: any)
/// and fail with `NotFound` or `Conflict`. Merging field masks is the caller's job: read,
/// merge, write back with the version read.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    /// Creates a user; returns its version.
    async fn create_user(&self, user: &v3::User) -> Result<u64>;
    /// Reads a user.
    async fn get_user(&self, user_id: &str) -> Result<Option<Versioned<v3::User>>>;
    /// Finds a user by primary e-mail address (case-insensitive).
    async fn get_user_by_email(&self, email: &str) -> Result<Option<Versioned<v3::User>>>;
    /// Replaces a user; returns the new version.
    async fn update_user(&self, user: &v3::User, expected_version: Option<u64>) -> Result<u64>;
    /// Deletes a user.
    async fn delete_user(&self, user_id: &str, expected_version: Option<u64>) -> Result<()>;
    /// Lists users by ID.
    async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::User>>>;

    /// Creates an organization; returns its version.
    async fn create_organization(&self, org: &v3::Organization) -> Result<u64>;
    /// Reads an organization.
    async fn get_organization(
        &self,
        organization_id: &str,
    ) -> Result<Option<Versioned<v3::Organization>>>;
    /// Replaces an organization; returns the new version.
    async fn update_organization(
        &self,
        org: &v3::Organization,
        expected_version: Option<u64>,
    ) -> Result<u64>;
    /// Deletes an organization.
    async fn delete_organization(
        &self,
        organization_id: &str,
        expected_version: Option<u64>,
    ) -> Result<()>;
    /// Lists organizations by ID.
    async fn list_organizations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::Organization>>>;

    /// Creates an application; returns its version.
    async fn create_application(&self, app: &v3::Application) -> Result<u64>;
    /// Reads an application.
    async fn get_application(
        &self,
        application_id: &str,
    ) -> Result<Option<Versioned<v3::Application>>>;
    /// Replaces an application; returns the new version.
    async fn update_application(
        &self,
        app: &v3::Application,
        expected_version: Option<u64>,
    ) -> Result<u64>;
    /// Deletes an application (not its devices, keys or collaborators).
    async fn delete_application(
        &self,
        application_id: &str,
        expected_version: Option<u64>,
    ) -> Result<()>;
    /// Lists applications by ID.
    async fn list_applications(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::Application>>>;

    /// Creates a gateway; returns its version.
    async fn create_gateway(&self, gateway: &v3::Gateway) -> Result<u64>;
    /// Reads a gateway.
    async fn get_gateway(&self, gateway_id: &str) -> Result<Option<Versioned<v3::Gateway>>>;
    /// Finds a gateway by EUI.
    async fn get_gateway_by_eui(&self, eui: Eui64) -> Result<Option<Versioned<v3::Gateway>>>;
    /// Replaces a gateway; returns the new version.
    async fn update_gateway(
        &self,
        gateway: &v3::Gateway,
        expected_version: Option<u64>,
    ) -> Result<u64>;
    /// Deletes a gateway.
    async fn delete_gateway(&self, gateway_id: &str, expected_version: Option<u64>) -> Result<()>;
    /// Lists gateways by ID.
    async fn list_gateways(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::Gateway>>>;

    /// Creates an end device (registry part); returns its version.
    async fn create_end_device(&self, device: &v3::EndDevice) -> Result<u64>;
    /// Reads an end device.
    async fn get_end_device(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<v3::EndDevice>>>;
    /// Finds the end device with these EUIs.
    async fn get_end_device_by_euis(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
    ) -> Result<Option<Versioned<v3::EndDevice>>>;
    /// Replaces an end device; returns the new version.
    async fn update_end_device(
        &self,
        device: &v3::EndDevice,
        expected_version: Option<u64>,
    ) -> Result<u64>;
    /// Deletes an end device.
    async fn delete_end_device(
        &self,
        application_id: &str,
        device_id: &str,
        expected_version: Option<u64>,
    ) -> Result<()>;
    /// Lists an application's end devices by device ID.
    async fn list_end_devices(
        &self,
        application_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::EndDevice>>>;
    /// Counts an application's end devices.
    async fn count_end_devices(&self, application_id: &str) -> Result<u64>;

    /// Stores a new API key of an entity (`api_key.id` is the key); returns its version.
    async fn create_api_key(&self, entity: &EntityRef, api_key: &v3::ApiKey) -> Result<u64>;
    /// Reads an API key by ID, with its entity.
    async fn get_api_key(&self, key_id: &str) -> Result<Option<Versioned<StoredApiKey>>>;
    /// Replaces an API key of the entity (`NotFound` when the ID is another entity's).
    async fn update_api_key(
        &self,
        entity: &EntityRef,
        api_key: &v3::ApiKey,
        expected_version: Option<u64>,
    ) -> Result<u64>;
    /// Deletes an API key of the entity (`NotFound` when the ID is another entity's).
    async fn delete_api_key(&self, entity: &EntityRef, key_id: &str) -> Result<()>;
    /// Lists an entity's API keys by ID.
    async fn list_api_keys(&self, entity: &EntityRef) -> Result<Vec<Versioned<v3::ApiKey>>>;

    /// Sets the rights of a collaborator (user or organization) on an entity; no rights
    /// removes it.
    async fn set_collaborator(
        &self,
        entity: &EntityRef,
        collaborator: &v3::Collaborator,
    ) -> Result<()>;
    /// Reads the rights of one collaborator on an entity.
    async fn get_collaborator(
        &self,
        entity: &EntityRef,
        account: &AccountRef,
    ) -> Result<Option<v3::Collaborator>>;
    /// Lists an entity's collaborators.
    async fn list_collaborators(&self, entity: &EntityRef) -> Result<Vec<v3::Collaborator>>;
    /// Lists the entities an account collaborates on, with its rights.
    async fn list_memberships(&self, account: &AccountRef) -> Result<Vec<Membership>>;
    /// Deletes every API key and collaborator entry of an entity (with the entity);
    /// returns how many were removed.
    async fn delete_entity_access(&self, entity: &EntityRef) -> Result<usize>;
}

#[async_trait]
impl RegistryStore for Store {
    async fn create_user(&self, user: &v3::User) -> Result<u64> {
        put_entity(self, user, Expect::Absent).await
    }
    async fn get_user(&self, user_id: &str) -> Result<Option<Versioned<v3::User>>> {
        check_id("user_id", user_id)?;
        get(self, &USERS, user_id).await
    }
    async fn get_user_by_email(&self, email: &str) -> Result<Option<Versioned<v3::User>>> {
        if email.is_empty() {
            return Ok(None);
        }
        by_index(self, &USER_EMAIL, &email.to_lowercase()).await
    }
    async fn update_user(&self, user: &v3::User, expected_version: Option<u64>) -> Result<u64> {
        put_entity(self, user, expect_existing(expected_version)).await
    }
    async fn delete_user(&self, user_id: &str, expected_version: Option<u64>) -> Result<()> {
        check_id("user_id", user_id)?;
        delete_record(self, &USERS, user_id.to_owned(), expected_version).await
    }
    async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::User>>> {
        list(self, &USERS, "", after, limit).await
    }

    async fn create_organization(&self, org: &v3::Organization) -> Result<u64> {
        put_entity(self, org, Expect::Absent).await
    }
    async fn get_organization(
        &self,
        organization_id: &str,
    ) -> Result<Option<Versioned<v3::Organization>>> {
        check_id("organization_id", organization_id)?;
        get(self, &ORGANIZATIONS, organization_id).await
    }
    async fn update_organization(
        &self,
        org: &v3::Organization,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        put_entity(self, org, expect_existing(expected_version)).await
    }
    async fn delete_organization(
        &self,
        organization_id: &str,
        expected_version: Option<u64>,
    ) -> Result<()> {
        check_id("organization_id", organization_id)?;
        delete_record(
            self,
            &ORGANIZATIONS,
            organization_id.to_owned(),
            expected_version,
        )
        .await
    }
    async fn list_organizations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::Organization>>> {
        list(self, &ORGANIZATIONS, "", after, limit).await
    }

    async fn create_application(&self, app: &v3::Application) -> Result<u64> {
        put_entity(self, app, Expect::Absent).await
    }
    async fn get_application(
        &self,
        application_id: &str,
    ) -> Result<Option<Versioned<v3::Application>>> {
        check_id("application_id", application_id)?;
        get(self, &APPLICATIONS, application_id).await
    }
    async fn update_application(
        &self,
        app: &v3::Application,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        put_entity(self, app, expect_existing(expected_version)).await
    }
    async fn delete_application(
        &self,
        application_id: &str,
        expected_version: Option<u64>,
    ) -> Result<()> {
        check_id("application_id", application_id)?;
        delete_record(
            self,
            &APPLICATIONS,
            application_id.to_owned(),
            expected_version,
        )
        .await
    }
    async fn list_applications(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::Application>>> {
        list(self, &APPLICATIONS, "", after, limit).await
    }

    async fn create_gateway(&self, gateway: &v3::Gateway) -> Result<u64> {
        put_entity(self, gateway, Expect::Absent).await
    }
    async fn get_gateway(&self, gateway_id: &str) -> Result<Option<Versioned<v3::Gateway>>> {
        check_id("gateway_id", gateway_id)?;
        get(self, &GATEWAYS, gateway_id).await
    }
    async fn get_gateway_by_eui(&self, eui: Eui64) -> Result<Option<Versioned<v3::Gateway>>> {
        by_index(self, &GATEWAY_EUI, &eui.to_string()).await
    }
    async fn update_gateway(
        &self,
        gateway: &v3::Gateway,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        put_entity(self, gateway, expect_existing(expected_version)).await
    }
    async fn delete_gateway(&self, gateway_id: &str, expected_version: Option<u64>) -> Result<()> {
        check_id("gateway_id", gateway_id)?;
        delete_record(self, &GATEWAYS, gateway_id.to_owned(), expected_version).await
    }
    async fn list_gateways(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::Gateway>>> {
        list(self, &GATEWAYS, "", after, limit).await
    }

    async fn create_end_device(&self, device: &v3::EndDevice) -> Result<u64> {
        put_entity(self, device, Expect::Absent).await
    }
    async fn get_end_device(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<v3::EndDevice>>> {
        get(self, &END_DEVICES, &device_key(application_id, device_id)?).await
    }
    async fn get_end_device_by_euis(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
    ) -> Result<Option<Versioned<v3::EndDevice>>> {
        by_index(self, &END_DEVICE_EUIS, &euis_key(join_eui, dev_eui)).await
    }
    async fn update_end_device(
        &self,
        device: &v3::EndDevice,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        put_entity(self, device, expect_existing(expected_version)).await
    }
    async fn delete_end_device(
        &self,
        application_id: &str,
        device_id: &str,
        expected_version: Option<u64>,
    ) -> Result<()> {
        let key = device_key(application_id, device_id)?;
        delete_record(self, &END_DEVICES, key, expected_version).await
    }
    async fn list_end_devices(
        &self,
        application_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<v3::EndDevice>>> {
        let prefix = super::application_prefix(application_id)?;
        list(self, &END_DEVICES, &prefix, after, limit).await
    }
    async fn count_end_devices(&self, application_id: &str) -> Result<u64> {
        let prefix = super::application_prefix(application_id)?;
        self.count(&END_DEVICES, &prefix).await
    }

    async fn create_api_key(&self, entity: &EntityRef, api_key: &v3::ApiKey) -> Result<u64> {
        put_api_key(self, entity, api_key, Expect::Absent).await
    }
    async fn get_api_key(&self, key_id: &str) -> Result<Option<Versioned<StoredApiKey>>> {
        if key_id.is_empty() {
            return Ok(None);
        }
        let Some(v) = get::<ApiKeyRecord>(self, &API_KEYS, key_id).await? else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            value: stored_api_key(key_id, v.value)?,
            version: v.version,
        }))
    }
    async fn update_api_key(
        &self,
        entity: &EntityRef,
        api_key: &v3::ApiKey,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        let current = owned_api_key(self, entity, &api_key.id).await?;
        let expect = Expect::Version(expected_version.unwrap_or(current.version));
        put_api_key(self, entity, api_key, expect).await
    }
    async fn delete_api_key(&self, entity: &EntityRef, key_id: &str) -> Result<()> {
        let current = owned_api_key(self, entity, key_id).await?;
        let mut batch = Batch::new();
        batch.delete(&API_KEYS, key_id, Expect::Version(current.version));
        self.commit(batch).await.map(drop)
    }
    async fn list_api_keys(&self, entity: &EntityRef) -> Result<Vec<Versioned<v3::ApiKey>>> {
        let records = self
            .lookup(&API_KEYS, &API_KEY_ENTITY, &entity.key()?)
            .await?;
        records
            .into_iter()
            .map(|r| {
                let key = r.key.clone();
                let v = decode::<ApiKeyRecord>(&API_KEYS, r)?;
                Ok(Versioned {
                    value: stored_api_key(&key, v.value)?.api_key,
                    version: v.version,
                })
            })
            .collect()
    }

    async fn set_collaborator(
        &self,
        entity: &EntityRef,
        collaborator: &v3::Collaborator,
    ) -> Result<()> {
        let account = AccountRef::try_from(&collaborator.ids.clone().unwrap_or_default())?;
        let account_key = account.entity().key()?;
        let key = format!("{}#{account_key}", entity.key()?);
        let mut batch = Batch::new();
        if collaborator.rights.is_empty() {
            batch.delete(&COLLABORATORS, key, Expect::Any);
        } else {
            let record = CollaboratorRecord {
                entity_ids: Some(entity.to_ids()),
                collaborator: Some(v3::Collaborator {
                    ids: Some(account.to_ids()),
                    rights: collaborator.rights.clone(),
                }),
            };
            batch.put(
                &COLLABORATORS,
                key,
                record.encode_to_vec(),
                Expect::Any,
                vec![IndexEntry::new(&COLLABORATOR_ACCOUNT, account_key)],
            );
        }
        self.commit(batch).await.map(drop)
    }
    async fn get_collaborator(
        &self,
        entity: &EntityRef,
        account: &AccountRef,
    ) -> Result<Option<v3::Collaborator>> {
        let key = format!("{}#{}", entity.key()?, account.entity().key()?);
        Ok(get::<CollaboratorRecord>(self, &COLLABORATORS, &key)
            .await?
            .and_then(|v| v.value.collaborator))
    }
    async fn list_collaborators(&self, entity: &EntityRef) -> Result<Vec<v3::Collaborator>> {
        let prefix = format!("{}#", entity.key()?);
        Ok(
            list_all::<CollaboratorRecord>(self, &COLLABORATORS, &prefix)
                .await?
                .into_iter()
                .filter_map(|v| v.value.collaborator)
                .collect(),
        )
    }
    async fn list_memberships(&self, account: &AccountRef) -> Result<Vec<Membership>> {
        let records = self
            .lookup(
                &COLLABORATORS,
                &COLLABORATOR_ACCOUNT,
                &account.entity().key()?,
            )
            .await?;
        records
            .into_iter()
            .map(|r| {
                let key = r.key.clone();
                let v = decode::<CollaboratorRecord>(&COLLABORATORS, r)?;
                let entity = key
                    .split_once('#')
                    .and_then(|(e, _)| EntityRef::from_key(e))
                    .ok_or_else(|| StoreError::Corrupt {
                        what: COLLABORATORS.what,
                        key: key.clone(),
                        reason: "key does not name an entity".into(),
                    })?;
                Ok(Membership {
                    entity,
                    rights: v.value.collaborator.map(|c| c.rights).unwrap_or_default(),
                })
            })
            .collect()
    }
    async fn delete_entity_access(&self, entity: &EntityRef) -> Result<usize> {
        let entity_key = entity.key()?;
        let mut batch = Batch::new();
        for k in self.lookup(&API_KEYS, &API_KEY_ENTITY, &entity_key).await? {
            batch.delete(&API_KEYS, k.key, Expect::Any);
        }
        let prefix = format!("{entity_key}#");
        let mut after: Option<String> = None;
        loop {
            let page = self
                .scan(&COLLABORATORS, &prefix, after.as_deref(), 500)
                .await?;
            for r in page.items {
                batch.delete(&COLLABORATORS, r.key, Expect::Any);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let n = batch.ops.len();
        if n > 0 {
            self.commit(batch).await?;
        }
        Ok(n)
    }
}

async fn put_api_key(
    store: &Store,
    entity: &EntityRef,
    api_key: &v3::ApiKey,
    expect: Expect,
) -> Result<u64> {
    if api_key.id.is_empty() {
        return Err(StoreError::InvalidArgument {
            field: "api_key.id",
            reason: "required".into(),
        });
    }
    let record = ApiKeyRecord {
        entity_ids: Some(entity.to_ids()),
        api_key: Some(api_key.clone()),
    };
    let mut batch = Batch::new();
    batch.put(
        &API_KEYS,
        api_key.id.clone(),
        record.encode_to_vec(),
        expect,
        vec![IndexEntry::new(&API_KEY_ENTITY, entity.key()?)],
    );
    first(store.commit(batch).await?)
}

/// Reads an API key and checks that it belongs to `entity`.
async fn owned_api_key(
    store: &Store,
    entity: &EntityRef,
    key_id: &str,
) -> Result<Versioned<StoredApiKey>> {
    let not_found = || StoreError::NotFound {
        what: API_KEYS.what,
        key: key_id.to_owned(),
    };
    let current = store.get_api_key(key_id).await?.ok_or_else(not_found)?;
    if current.value.entity != *entity {
        return Err(not_found());
    }
    Ok(current)
}

fn stored_api_key(key_id: &str, record: ApiKeyRecord) -> Result<StoredApiKey> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        what: API_KEYS.what,
        key: key_id.to_owned(),
        reason: reason.into(),
    };
    let entity = EntityRef::try_from(&record.entity_ids.unwrap_or_default())
        .map_err(|_| corrupt("no entity"))?;
    Ok(StoredApiKey {
        entity,
        api_key: record.api_key.ok_or_else(|| corrupt("no key"))?,
    })
}
