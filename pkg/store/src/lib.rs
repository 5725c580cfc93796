//! Tern's storage.
//!
//! - Two backends behind one [`Store`]: **embedded** (SQLite in `<data-dir>/tern.db`, the
//!   default) and **postgres** (shared by the processes of a cluster), chosen by
//!   [`StoreConfig`] (`[store]` in the configuration).
//! - A primitive layer ([`kv`]) both backends implement: tables of key → (value, version),
//!   secondary indexes (unique or not), atomic batches with optimistic version checks,
//!   ordered prefix scans with a cursor.
//! - One repository trait per role, implemented once on [`Store`] over that layer:
//!   [`RegistryStore`] (IS), [`NsDeviceStore`] (NS), [`JoinStore`] (JS),
//!   [`DownlinkQueueStore`] (NS and AS), [`AsStore`] (AS). Values are protobuf messages
//!   of `tern_api::v3` or small records of this crate.
//! - Group commit of the NS hot path ([`NsDeviceStore::record_uplink`]); the
//!   [`group_commit`] module says what a crash can lose.
//! - Versioned migrations embedded in the binary ([`migrations`]), applied by
//!   [`Store::open`] and [`Store::migrate_only`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_store::StoreError> {
//! use tern_store::{RegistryStore, Store, StoreConfig};
//! let store = Store::open(&StoreConfig::default(), std::path::Path::new("./data")).await?;
//! let app = store.get_application("my-app").await?;
//! store.close().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod engine;
mod error;
pub mod group_commit;
pub mod kv;
pub mod migrations;
mod repo;
mod store;

pub use config::{Backend, GroupCommitConfig, PostgresConfig, StoreConfig, mask_url};
pub use error::{DevNonceRejection, Result, StoreError};
pub use group_commit::GroupCommitStats;
pub use kv::{Batch, Expect, Index, IndexEntry, Op, Page, Record, Table};
pub use repo::Versioned;
pub use repo::app::{AsDeviceRecord, AsSession, AsStore};
pub use repo::join::{DevNonceMode, JoinStore, JsDeviceRecord, SessionKeysRecord};
pub use repo::ns::{NsDeviceRecord, NsDeviceStore};
pub use repo::queue::{DownlinkQueueStore, QueueOwner};
pub use repo::registry::{AccountRef, EntityRef, Membership, RegistryStore, StoredApiKey};
pub use store::Store;

/// The tables and indexes of the repositories, for tools that inspect the store.
pub mod tables {
    pub use crate::repo::app::{AS_APPLICATIONS, AS_DEVICES};
    pub use crate::repo::join::{
        DEV_NONCES, JOIN_NONCES, JS_DEVICE_ID, JS_DEVICES, SESSION_KEYS, SESSION_KEYS_DEVICE,
    };
    pub use crate::repo::ns::{NS_DEV_ADDR, NS_DEVICE_EUIS, NS_DEVICES};
    pub use crate::repo::queue::{AS_QUEUES, NS_QUEUES};
    pub use crate::repo::registry::{
        ACCOUNT_ID, API_KEY_ENTITY, API_KEYS, APPLICATIONS, COLLABORATOR_ACCOUNT, COLLABORATORS,
        END_DEVICE_EUIS, END_DEVICES, GATEWAY_EUI, GATEWAYS, ORGANIZATIONS, USER_EMAIL, USERS,
    };
}
