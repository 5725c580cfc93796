//! The Application Server's state: per-application settings and per-device sessions.

use async_trait::async_trait;
use prost::Message;
use tern_api::v3;

use super::queue::AS_QUEUES;
use super::{Versioned, check_id, device_key, get, list};
use crate::error::{Result, StoreError};
use crate::kv::{Batch, Expect, Page, Table};
use crate::store::Store;

/// AS application settings, by application ID.
pub static AS_APPLICATIONS: Table = Table {
    name: "as.application",
    what: "AS application",
};
/// AS devices, by `application_id/device_id`.
pub static AS_DEVICES: Table = Table {
    name: "as.device",
    what: "AS end device",
};

/// The AS's view of one session.
#[derive(Clone, PartialEq, Message)]
pub struct AsSession {
    /// The session key ID at the JS (empty for ABP).
    #[prost(bytes = "vec", tag = "1")]
    pub session_key_id: Vec<u8>,
    /// The AppSKey, wrapped for the AS.
    #[prost(message, optional, tag = "2")]
    pub app_s_key: Option<v3::KeyEnvelope>,
    /// The last AFCntDown (FCntDown for 1.0.x) used to encrypt a downlink.
    #[prost(uint32, tag = "3")]
    pub last_a_f_cnt_down: u32,
    /// The session's DevAddr, 4 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub dev_addr: Vec<u8>,
}

/// What the AS keeps of a device.
#[derive(Clone, PartialEq, Message)]
pub struct AsDeviceRecord {
    /// The device's identifiers (application and device ID required).
    #[prost(message, optional, tag = "1")]
    pub ids: Option<v3::EndDeviceIdentifiers>,
    /// The current session.
    #[prost(message, optional, tag = "2")]
    pub session: Option<AsSession>,
    /// A session from a join-accept the device has not used yet.
    #[prost(message, optional, tag = "3")]
    pub pending_session: Option<AsSession>,
    /// Payload formatters overriding the application's.
    #[prost(message, optional, tag = "4")]
    pub formatters: Option<v3::MessagePayloadFormatters>,
}

impl AsDeviceRecord {
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
        device_key(app, &ids.device_id)
    }
}

/// The Application Server's storage.
#[async_trait]
pub trait AsStore: Send + Sync {
    /// Reads an application's settings (opaque to the store).
    async fn get_as_application(&self, application_id: &str) -> Result<Option<Versioned<Vec<u8>>>>;
    /// Writes an application's settings; returns the new version.
    async fn set_as_application(
        &self,
        application_id: &str,
        settings: &[u8],
        expect: Expect,
    ) -> Result<u64>;
    /// Deletes an application's settings.
    async fn delete_as_application(&self, application_id: &str) -> Result<()>;
    /// Reads a device.
    async fn get_as_device(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<AsDeviceRecord>>>;
    /// Writes a device; returns the new version.
    async fn set_as_device(&self, record: &AsDeviceRecord, expect: Expect) -> Result<u64>;
    /// Deletes a device and its AS downlink queue.
    async fn delete_as_device(&self, application_id: &str, device_id: &str) -> Result<()>;
    /// Lists an application's devices by device ID.
    async fn list_as_devices(
        &self,
        application_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<AsDeviceRecord>>>;
}

#[async_trait]
impl AsStore for Store {
    async fn get_as_application(&self, application_id: &str) -> Result<Option<Versioned<Vec<u8>>>> {
        check_id("application_id", application_id)?;
        Ok(self
            .get(&AS_APPLICATIONS, application_id)
            .await?
            .map(|r| Versioned {
                value: r.value,
                version: r.version,
            }))
    }

    async fn set_as_application(
        &self,
        application_id: &str,
        settings: &[u8],
        expect: Expect,
    ) -> Result<u64> {
        check_id("application_id", application_id)?;
        let mut batch = Batch::new();
        batch.put(
            &AS_APPLICATIONS,
            application_id,
            settings.to_vec(),
            expect,
            Vec::new(),
        );
        let versions = self.commit(batch).await?;
        versions.first().copied().ok_or(StoreError::Closed)
    }

    async fn delete_as_application(&self, application_id: &str) -> Result<()> {
        check_id("application_id", application_id)?;
        let mut batch = Batch::new();
        batch.delete(&AS_APPLICATIONS, application_id, Expect::Any);
        self.commit(batch).await.map(drop)
    }

    async fn get_as_device(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<AsDeviceRecord>>> {
        get(self, &AS_DEVICES, &device_key(application_id, device_id)?).await
    }

    async fn set_as_device(&self, record: &AsDeviceRecord, expect: Expect) -> Result<u64> {
        let mut batch = Batch::new();
        batch.put(
            &AS_DEVICES,
            record.key()?,
            record.encode_to_vec(),
            expect,
            Vec::new(),
        );
        let versions = self.commit(batch).await?;
        versions.first().copied().ok_or(StoreError::Closed)
    }

    async fn delete_as_device(&self, application_id: &str, device_id: &str) -> Result<()> {
        let key = device_key(application_id, device_id)?;
        let mut batch = Batch::new();
        batch.delete(&AS_DEVICES, key.clone(), Expect::Any);
        batch.delete(&AS_QUEUES, key, Expect::Any);
        self.commit(batch).await.map(drop)
    }

    async fn list_as_devices(
        &self,
        application_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<AsDeviceRecord>>> {
        let prefix = super::application_prefix(application_id)?;
        list(self, &AS_DEVICES, &prefix, after, limit).await
    }
}
