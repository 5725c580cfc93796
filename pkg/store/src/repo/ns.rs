//! The Network Server's devices: MAC settings and state, current and pending sessions.

use async_trait::async_trait;
use lorawan::{DevAddr, Eui64};
use prost::Message;
use tern_api::v3;

use super::queue::NS_QUEUES;
use super::{Versioned, decode, device_key, euis_key, get, list, opt_dev_addr, opt_eui};
use crate::error::{Result, StoreError};
use crate::kv::{Batch, Expect, Index, IndexEntry, Page, Table};
use crate::store::Store;

/// NS devices, by `application_id/device_id`.
pub static NS_DEVICES: Table = Table {
    name: "ns.device",
    what: "NS end device",
};
/// DevAddr of the current and of the pending session (several devices may share one).
pub static NS_DEV_ADDR: Index = Index {
    name: "ns.dev-addr",
    what: "DevAddr",
    unique: false,
};
/// `joineui/deveui` of OTAA devices.
pub static NS_DEVICE_EUIS: Index = Index {
    name: "ns.device-euis",
    what: "NS end device JoinEUI/DevEUI",
    unique: true,
};

/// What the NS keeps of a device.
#[derive(Clone, PartialEq, Message)]
pub struct NsDeviceRecord {
    /// The device: `ids` (application and device ID required), `session`, `mac_settings`,
    /// `mac_state` and the other NS fields.
    #[prost(message, optional, tag = "1")]
    pub device: Option<v3::EndDevice>,
    /// The session of an accepted join that the device has not used yet.
    #[prost(message, optional, tag = "2")]
    pub pending_session: Option<v3::Session>,
    /// NS-private state the store does not interpret (e.g. recent uplinks for ADR).
    #[prost(bytes = "vec", tag = "3")]
    pub state: Vec<u8>,
}

impl NsDeviceRecord {
    /// The device's `application_id/device_id` key.
    fn key(&self) -> Result<String> {
        let ids = self
            .device
            .as_ref()
            .and_then(|d| d.ids.as_ref())
            .ok_or_else(|| StoreError::InvalidArgument {
                field: "device.ids",
                reason: "required".into(),
            })?;
        let app = ids
            .application_ids
            .as_ref()
            .map(|a| a.application_id.as_str())
            .unwrap_or("");
        device_key(app, &ids.device_id)
    }

    fn indexes(&self) -> Result<Vec<IndexEntry>> {
        let mut out = Vec::new();
        let device = self.device.clone().unwrap_or_default();
        let current = device
            .session
            .as_ref()
            .map(|s| s.dev_addr.as_slice())
            .unwrap_or(&[]);
        let pending = self
            .pending_session
            .as_ref()
            .map(|s| s.dev_addr.as_slice())
            .unwrap_or(&[]);
        for (field, bytes) in [
            ("device.session.dev_addr", current),
            ("pending_session.dev_addr", pending),
        ] {
            if let Some(a) = opt_dev_addr(field, bytes)? {
                out.push(IndexEntry::new(&NS_DEV_ADDR, a.to_string()));
            }
        }
        let ids = device.ids.unwrap_or_default();
        if let (Some(j), Some(d)) = (
            opt_eui("device.ids.join_eui", &ids.join_eui)?,
            opt_eui("device.ids.dev_eui", &ids.dev_eui)?,
        ) {
            out.push(IndexEntry::new(&NS_DEVICE_EUIS, euis_key(j, d)));
        }
        Ok(out)
    }

    fn batch(&self, expect: Expect) -> Result<Batch> {
        let mut batch = Batch::new();
        batch.put(
            &NS_DEVICES,
            self.key()?,
            self.encode_to_vec(),
            expect,
            self.indexes()?,
        );
        Ok(batch)
    }
}

/// The Network Server's storage.
#[async_trait]
pub trait NsDeviceStore: Send + Sync {
    /// Reads a device.
    async fn get_ns_device(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<NsDeviceRecord>>>;
    /// Every device whose current or pending session has this DevAddr: the candidates
    /// an uplink's MIC decides between.
    async fn ns_devices_by_dev_addr(
        &self,
        dev_addr: DevAddr,
    ) -> Result<Vec<Versioned<NsDeviceRecord>>>;
    /// The device with these EUIs.
    async fn ns_device_by_euis(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
    ) -> Result<Option<Versioned<NsDeviceRecord>>>;
    /// Writes a device now, if the store holds what `expect` says (else `Conflict`,
    /// `NotFound` or `AlreadyExists`); returns the new version.
    async fn set_ns_device(&self, record: &NsDeviceRecord, expect: Expect) -> Result<u64>;
    /// The hot path: writes a device after an uplink (FCnt, MAC state, session switch)
    /// if it is still at `expected_version`, in a group commit with other callers'
    /// writes. Returns once durable; see the `group_commit` module for crash semantics.
    async fn record_uplink(&self, record: &NsDeviceRecord, expected_version: u64) -> Result<u64> {
        self.record_uplink_with(record, expected_version, Batch::new())
            .await
    }
    /// [`NsDeviceStore::record_uplink`] with `also` in the same atomic batch: what the
    /// accepted uplink produced (the link outbox entry that carries it to the AS), so that
    /// a crash keeps both or neither.
    async fn record_uplink_with(
        &self,
        record: &NsDeviceRecord,
        expected_version: u64,
        also: Batch,
    ) -> Result<u64>;
    /// Deletes a device and its NS downlink queue.
    async fn delete_ns_device(
        &self,
        application_id: &str,
        device_id: &str,
        expect: Expect,
    ) -> Result<()>;
    /// Lists an application's devices by device ID.
    async fn list_ns_devices(
        &self,
        application_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<NsDeviceRecord>>>;
}

#[async_trait]
impl NsDeviceStore for Store {
    async fn get_ns_device(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<NsDeviceRecord>>> {
        get(self, &NS_DEVICES, &device_key(application_id, device_id)?).await
    }

    async fn ns_devices_by_dev_addr(
        &self,
        dev_addr: DevAddr,
    ) -> Result<Vec<Versioned<NsDeviceRecord>>> {
        self.lookup(&NS_DEVICES, &NS_DEV_ADDR, &dev_addr.to_string())
            .await?
            .into_iter()
            .map(|r| decode(&NS_DEVICES, r))
            .collect()
    }

    async fn ns_device_by_euis(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
    ) -> Result<Option<Versioned<NsDeviceRecord>>> {
        self.lookup(&NS_DEVICES, &NS_DEVICE_EUIS, &euis_key(join_eui, dev_eui))
            .await?
            .into_iter()
            .next()
            .map(|r| decode(&NS_DEVICES, r))
            .transpose()
    }

    async fn set_ns_device(&self, record: &NsDeviceRecord, expect: Expect) -> Result<u64> {
        let versions = self.commit(record.batch(expect)?).await?;
        versions.first().copied().ok_or(StoreError::Closed)
    }

    async fn record_uplink_with(
        &self,
        record: &NsDeviceRecord,
        expected_version: u64,
        also: Batch,
    ) -> Result<u64> {
        // The device first: its version is the first result.
        let mut batch = record.batch(Expect::Version(expected_version))?;
        batch.ops.extend(also.ops);
        let versions = self.commit_grouped(batch).await?;
        versions.first().copied().ok_or(StoreError::Closed)
    }

    async fn delete_ns_device(
        &self,
        application_id: &str,
        device_id: &str,
        expect: Expect,
    ) -> Result<()> {
        let key = device_key(application_id, device_id)?;
        let mut batch = Batch::new();
        batch.delete(&NS_DEVICES, key.clone(), expect);
        batch.delete(&NS_QUEUES, key, Expect::Any);
        self.commit(batch).await.map(drop)
    }

    async fn list_ns_devices(
        &self,
        application_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Versioned<NsDeviceRecord>>> {
        let prefix = super::application_prefix(application_id)?;
        list(self, &NS_DEVICES, &prefix, after, limit).await
    }
}
