//! Per-device downlink queues of the Network Server and of the Application Server.

use async_trait::async_trait;
use prost::Message;
use tern_api::v3;

use super::{Write, device_key, get, modify};
use crate::error::Result;
use crate::kv::{Batch, Expect, Table};
use crate::store::Store;

/// The NS's queues (encrypted downlinks ready to send), by `application_id/device_id`.
pub static NS_QUEUES: Table = Table {
    name: "ns.downlink-queue",
    what: "NS downlink queue",
};
/// The AS's queues, by `application_id/device_id`.
pub static AS_QUEUES: Table = Table {
    name: "as.downlink-queue",
    what: "AS downlink queue",
};

/// Whose queue: the NS and the AS each keep their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOwner {
    /// The Network Server's queue.
    NetworkServer,
    /// The Application Server's queue.
    ApplicationServer,
}

impl QueueOwner {
    fn table(self) -> &'static Table {
        match self {
            Self::NetworkServer => &NS_QUEUES,
            Self::ApplicationServer => &AS_QUEUES,
        }
    }
}

/// Downlink queues. Every operation is atomic, also between processes.
#[async_trait]
pub trait DownlinkQueueStore: Send + Sync {
    /// Appends downlinks; returns the queue's new length.
    async fn push_downlinks(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
        downlinks: &[v3::ApplicationDownlink],
    ) -> Result<usize>;
    /// Replaces the whole queue (empty: clears it).
    async fn replace_downlinks(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
        downlinks: &[v3::ApplicationDownlink],
    ) -> Result<()>;
    /// The queue, first to send first.
    async fn list_downlinks(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
    ) -> Result<Vec<v3::ApplicationDownlink>>;
    /// Removes and returns the first downlink.
    async fn pop_downlink(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<v3::ApplicationDownlink>>;
}

#[async_trait]
impl DownlinkQueueStore for Store {
    async fn push_downlinks(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
        downlinks: &[v3::ApplicationDownlink],
    ) -> Result<usize> {
        let key = device_key(application_id, device_id)?;
        modify(
            self,
            owner.table(),
            &key,
            |queue: Option<v3::ApplicationDownlinks>| {
                let mut queue = queue.unwrap_or_default();
                queue.downlinks.extend_from_slice(downlinks);
                let len = queue.downlinks.len();
                let write = if downlinks.is_empty() {
                    Write::Nothing
                } else {
                    Write::Put(queue)
                };
                Ok((write, len))
            },
        )
        .await
    }

    async fn replace_downlinks(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
        downlinks: &[v3::ApplicationDownlink],
    ) -> Result<()> {
        let key = device_key(application_id, device_id)?;
        let mut batch = Batch::new();
        if downlinks.is_empty() {
            batch.delete(owner.table(), key, Expect::Any);
        } else {
            let queue = v3::ApplicationDownlinks {
                downlinks: downlinks.to_vec(),
            };
            batch.put(
                owner.table(),
                key,
                queue.encode_to_vec(),
                Expect::Any,
                Vec::new(),
            );
        }
        self.commit(batch).await.map(drop)
    }

    async fn list_downlinks(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
    ) -> Result<Vec<v3::ApplicationDownlink>> {
        let key = device_key(application_id, device_id)?;
        Ok(get::<v3::ApplicationDownlinks>(self, owner.table(), &key)
            .await?
            .map(|v| v.value.downlinks)
            .unwrap_or_default())
    }

    async fn pop_downlink(
        &self,
        owner: QueueOwner,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<v3::ApplicationDownlink>> {
        let key = device_key(application_id, device_id)?;
        modify(
            self,
            owner.table(),
            &key,
            |queue: Option<v3::ApplicationDownlinks>| {
                let Some(mut queue) = queue.filter(|q| !q.downlinks.is_empty()) else {
                    return Ok((Write::Nothing, None));
                };
                let first = queue.downlinks.remove(0);
                let write = if queue.downlinks.is_empty() {
                    Write::Delete
                } else {
                    Write::Put(queue)
                };
                Ok((write, Some(first)))
            },
        )
        .await
    }
}
