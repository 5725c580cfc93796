//! The Join Server's state: encrypted root keys, DevNonce history, JoinNonce counters,
//! and wrapped session keys for GetAppSKey.

use async_trait::async_trait;
use lorawan::{DevNonce, Eui64, JoinNonce};
use prost::Message;
use tern_api::v3;

use super::{
    MAX_ATTEMPTS, Versioned, Write, decode, device_key, euis_key, get, hex, is_race_on,
    modify_grouped,
};
use crate::error::{DevNonceRejection, Result, StoreError};
use crate::kv::{Batch, Expect, Index, IndexEntry, Table};
use crate::store::Store;

/// JS devices (root keys), by `joineui/deveui`.
pub static JS_DEVICES: Table = Table {
    name: "js.device",
    what: "JS end device",
};
/// DevNonce history, by `joineui/deveui`.
pub static DEV_NONCES: Table = Table {
    name: "js.dev-nonces",
    what: "DevNonce history",
};
/// JoinNonce counters, by `joineui/deveui`.
pub static JOIN_NONCES: Table = Table {
    name: "js.join-nonce",
    what: "JoinNonce counter",
};
/// Wrapped session keys, by session key ID in hex.
pub static SESSION_KEYS: Table = Table {
    name: "js.session-keys",
    what: "session keys",
};
/// A JS device's `application_id/device_id`.
pub static JS_DEVICE_ID: Index = Index {
    name: "js.device-id",
    what: "JS end device ID",
    unique: true,
};
/// The `joineui/deveui` that session keys belong to.
pub static SESSION_KEYS_DEVICE: Index = Index {
    name: "js.session-keys-device",
    what: "session keys device",
    unique: false,
};

/// How DevNonces are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevNonceMode {
    /// LoRaWAN 1.0.x: random nonces; each may be used once.
    NeverReused,
    /// LoRaWAN 1.1: a counter; each nonce must be greater than the last accepted one.
    StrictlyIncreasing,
}

/// What the JS keeps of a device.
#[derive(Clone, PartialEq, Message)]
pub struct JsDeviceRecord {
    /// The device's identifiers: `join_eui` and `dev_eui` (required, they are the key),
    /// application and device ID (unique when set).
    #[prost(message, optional, tag = "1")]
    pub ids: Option<v3::EndDeviceIdentifiers>,
    /// The root keys, encrypted by the JS: the store never sees them in clear.
    #[prost(bytes = "vec", tag = "2")]
    pub encrypted_root_keys: Vec<u8>,
    /// The LoRaWAN version the device implements (`v3::MacVersion`).
    #[prost(enumeration = "v3::MacVersion", tag = "3")]
    pub lorawan_version: i32,
}

/// The wrapped keys of one session.
#[derive(Clone, PartialEq, Message)]
pub struct SessionKeysRecord {
    /// The session key ID (the key of the record).
    #[prost(bytes = "vec", tag = "1")]
    pub session_key_id: Vec<u8>,
    /// The device's JoinEUI, 8 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub join_eui: Vec<u8>,
    /// The device's DevEUI, 8 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub dev_eui: Vec<u8>,
    /// The session keys wrapped by the JS (opaque to the store).
    #[prost(bytes = "vec", tag = "4")]
    pub wrapped_keys: Vec<u8>,
}

/// The DevNonces a device used.
#[derive(Clone, PartialEq, Message)]
struct DevNonceRecord {
    /// The greatest accepted nonce.
    #[prost(uint32, optional, tag = "1")]
    highest: Option<u32>,
    /// Bit `n` set: nonce `n` was accepted. At most 8 KiB.
    #[prost(bytes = "vec", tag = "2")]
    used: Vec<u8>,
}

impl DevNonceRecord {
    fn is_used(&self, n: u16) -> bool {
        let (byte, bit) = (usize::from(n / 8), n % 8);
        self.used.get(byte).is_some_and(|b| b & (1 << bit) != 0)
    }

    fn mark(&mut self, n: u16) {
        let (byte, bit) = (usize::from(n / 8), n % 8);
        if self.used.len() <= byte {
            self.used.resize(byte + 1, 0);
        }
        self.used[byte] |= 1 << bit;
        self.highest = Some(self.highest.map_or(u32::from(n), |h| h.max(u32::from(n))));
    }
}

/// The last JoinNonce handed out.
#[derive(Clone, PartialEq, Message)]
struct JoinNonceRecord {
    #[prost(uint32, tag = "1")]
    last: u32,
}

/// The history with `nonce` recorded, or why `mode` refuses it.
fn admit_dev_nonce(
    history: Option<DevNonceRecord>,
    nonce: DevNonce,
    mode: DevNonceMode,
) -> std::result::Result<DevNonceRecord, DevNonceRejection> {
    let mut history = history.unwrap_or_default();
    match mode {
        DevNonceMode::NeverReused if history.is_used(nonce.0) => {
            return Err(DevNonceRejection::Reused);
        }
        DevNonceMode::StrictlyIncreasing => {
            if let Some(h) = history.highest
                && u32::from(nonce.0) <= h
            {
                return Err(DevNonceRejection::NotIncreasing {
                    last: DevNonce(h as u16),
                });
            }
        }
        DevNonceMode::NeverReused => {}
    }
    history.mark(nonce.0);
    Ok(history)
}

fn js_device_key(record: &JsDeviceRecord) -> Result<(String, Vec<IndexEntry>)> {
    let ids = record.ids.clone().unwrap_or_default();
    let join_eui = super::eui("ids.join_eui", &ids.join_eui)?;
    let dev_eui = super::eui("ids.dev_eui", &ids.dev_eui)?;
    let app = ids
        .application_ids
        .as_ref()
        .map(|a| a.application_id.as_str())
        .unwrap_or("");
    let mut indexes = Vec::new();
    if !app.is_empty() || !ids.device_id.is_empty() {
        indexes.push(IndexEntry::new(
            &JS_DEVICE_ID,
            device_key(app, &ids.device_id)?,
        ));
    }
    Ok((euis_key(join_eui, dev_eui), indexes))
}

fn session_key_id_key(session_key_id: &[u8]) -> Result<String> {
    if session_key_id.is_empty() {
        return Err(StoreError::InvalidArgument {
            field: "session_key_id",
            reason: "must not be empty".into(),
        });
    }
    Ok(hex(session_key_id))
}

/// The Join Server's storage. DevNonce and JoinNonce operations are atomic also between
/// processes sharing a PostgreSQL database.
#[async_trait]
pub trait JoinStore: Send + Sync {
    /// Writes a device's root keys (keyed by its EUIs); returns the new version.
    async fn set_js_device(&self, record: &JsDeviceRecord, expect: Expect) -> Result<u64>;
    /// Reads a device by EUIs.
    async fn get_js_device(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
    ) -> Result<Option<Versioned<JsDeviceRecord>>>;
    /// Reads a device by application and device ID.
    async fn get_js_device_by_id(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<JsDeviceRecord>>>;
    /// Deletes a device's root keys, DevNonce history and session keys. Its JoinNonce
    /// counter stays: a re-created 1.1 device must not see JoinNonces again.
    async fn delete_js_device(&self, join_eui: Eui64, dev_eui: Eui64) -> Result<()>;
    /// Accepts and records a join-request's DevNonce, or refuses it with
    /// [`StoreError::DevNonce`] saying why. Atomic: of two concurrent joins with the same
    /// nonce, one is accepted.
    async fn check_and_record_dev_nonce(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
        nonce: DevNonce,
        mode: DevNonceMode,
    ) -> Result<()>;
    /// [`JoinStore::check_and_record_dev_nonce`] and [`JoinStore::next_join_nonce`] in one
    /// atomic, durable write: the DevNonce is recorded and the JoinNonce handed out
    /// together, or neither (a refused DevNonce consumes no JoinNonce).
    async fn accept_dev_nonce(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
        nonce: DevNonce,
        mode: DevNonceMode,
    ) -> Result<JoinNonce>;
    /// Hands out the device's next JoinNonce: 1 first, then one more each call, never
    /// twice (persisted before returning). Fails with
    /// [`StoreError::JoinNonceExhausted`] after 0xFFFFFF.
    async fn next_join_nonce(&self, join_eui: Eui64, dev_eui: Eui64) -> Result<JoinNonce>;
    /// Stores the wrapped keys of a session (overwrites the same session key ID).
    async fn set_session_keys(&self, record: &SessionKeysRecord) -> Result<()>;
    /// Reads the wrapped keys of a session.
    async fn get_session_keys(&self, session_key_id: &[u8]) -> Result<Option<SessionKeysRecord>>;
    /// Deletes the wrapped keys of a session.
    async fn delete_session_keys(&self, session_key_id: &[u8]) -> Result<()>;
}

#[async_trait]
impl JoinStore for Store {
    async fn set_js_device(&self, record: &JsDeviceRecord, expect: Expect) -> Result<u64> {
        let (key, indexes) = js_device_key(record)?;
        let mut batch = Batch::new();
        batch.put(&JS_DEVICES, key, record.encode_to_vec(), expect, indexes);
        let versions = self.commit(batch).await?;
        versions.first().copied().ok_or(StoreError::Closed)
    }

    async fn get_js_device(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
    ) -> Result<Option<Versioned<JsDeviceRecord>>> {
        get(self, &JS_DEVICES, &euis_key(join_eui, dev_eui)).await
    }

    async fn get_js_device_by_id(
        &self,
        application_id: &str,
        device_id: &str,
    ) -> Result<Option<Versioned<JsDeviceRecord>>> {
        let id = device_key(application_id, device_id)?;
        self.lookup(&JS_DEVICES, &JS_DEVICE_ID, &id)
            .await?
            .into_iter()
            .next()
            .map(|r| decode(&JS_DEVICES, r))
            .transpose()
    }

    async fn delete_js_device(&self, join_eui: Eui64, dev_eui: Eui64) -> Result<()> {
        let key = euis_key(join_eui, dev_eui);
        let mut batch = Batch::new();
        batch.delete(&JS_DEVICES, key.clone(), Expect::Any);
        batch.delete(&DEV_NONCES, key.clone(), Expect::Any);
        for r in self
            .lookup(&SESSION_KEYS, &SESSION_KEYS_DEVICE, &key)
            .await?
        {
            batch.delete(&SESSION_KEYS, r.key, Expect::Any);
        }
        self.commit(batch).await.map(drop)
    }

    async fn check_and_record_dev_nonce(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
        nonce: DevNonce,
        mode: DevNonceMode,
    ) -> Result<()> {
        let key = euis_key(join_eui, dev_eui);
        let refuse = |reason| StoreError::DevNonce {
            join_eui,
            dev_eui,
            nonce,
            reason,
        };
        modify_grouped(
            self,
            &DEV_NONCES,
            &key,
            |history: Option<DevNonceRecord>| {
                let history = admit_dev_nonce(history, nonce, mode).map_err(refuse)?;
                Ok((Write::Put(history), ()))
            },
        )
        .await
    }

    async fn accept_dev_nonce(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
        nonce: DevNonce,
        mode: DevNonceMode,
    ) -> Result<JoinNonce> {
        let key = euis_key(join_eui, dev_eui);
        for _ in 0..MAX_ATTEMPTS {
            let (history, counter) = tokio::try_join!(
                get::<DevNonceRecord>(self, &DEV_NONCES, &key),
                get::<JoinNonceRecord>(self, &JOIN_NONCES, &key)
            )?;
            let expect = |v: Option<u64>| v.map_or(Expect::Absent, Expect::Version);
            let (history_version, counter_version) = (
                history.as_ref().map(|v| v.version),
                counter.as_ref().map(|v| v.version),
            );
            let history =
                admit_dev_nonce(history.map(|v| v.value), nonce, mode).map_err(|reason| {
                    StoreError::DevNonce {
                        join_eui,
                        dev_eui,
                        nonce,
                        reason,
                    }
                })?;
            let last = counter.map_or(0, |c| c.value.last);
            let next = JoinNonce::new(last + 1)
                .ok_or(StoreError::JoinNonceExhausted { join_eui, dev_eui })?;
            let mut batch = Batch::new();
            batch.put(
                &DEV_NONCES,
                key.clone(),
                history.encode_to_vec(),
                expect(history_version),
                Vec::new(),
            );
            batch.put(
                &JOIN_NONCES,
                key.clone(),
                JoinNonceRecord { last: next.get() }.encode_to_vec(),
                expect(counter_version),
                Vec::new(),
            );
            match self.commit_grouped(batch).await {
                Ok(_) => return Ok(next),
                Err(e)
                    if is_race_on(&e, &DEV_NONCES, &key) || is_race_on(&e, &JOIN_NONCES, &key) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Contention {
            what: DEV_NONCES.what,
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn next_join_nonce(&self, join_eui: Eui64, dev_eui: Eui64) -> Result<JoinNonce> {
        let key = euis_key(join_eui, dev_eui);
        modify_grouped(
            self,
            &JOIN_NONCES,
            &key,
            |counter: Option<JoinNonceRecord>| {
                let last = counter.map_or(0, |c| c.last);
                let next = JoinNonce::new(last + 1)
                    .ok_or(StoreError::JoinNonceExhausted { join_eui, dev_eui })?;
                Ok((Write::Put(JoinNonceRecord { last: next.get() }), next))
            },
        )
        .await
    }

    async fn set_session_keys(&self, record: &SessionKeysRecord) -> Result<()> {
        let key = session_key_id_key(&record.session_key_id)?;
        let join_eui = super::eui("join_eui", &record.join_eui)?;
        let dev_eui = super::eui("dev_eui", &record.dev_eui)?;
        let mut batch = Batch::new();
        batch.put(
            &SESSION_KEYS,
            key,
            record.encode_to_vec(),
            Expect::Any,
            vec![IndexEntry::new(
                &SESSION_KEYS_DEVICE,
                euis_key(join_eui, dev_eui),
            )],
        );
        // Written on every join: grouped with other joins' writes, durable on return.
        self.commit_grouped(batch).await.map(drop)
    }

    async fn get_session_keys(&self, session_key_id: &[u8]) -> Result<Option<SessionKeysRecord>> {
        let key = session_key_id_key(session_key_id)?;
        Ok(get(self, &SESSION_KEYS, &key).await?.map(|v| v.value))
    }

    async fn delete_session_keys(&self, session_key_id: &[u8]) -> Result<()> {
        let key = session_key_id_key(session_key_id)?;
        let mut batch = Batch::new();
        batch.delete(&SESSION_KEYS, key, Expect::Any);
        self.commit(batch).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accept_dev_nonce_records_both_nonces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::StoreConfig::default(), dir.path())
            .await
            .unwrap();
        let (join_eui, dev_eui) = (Eui64::from_u64(1), Eui64::from_u64(2));
        let mode = DevNonceMode::NeverReused;
        let first = store
            .accept_dev_nonce(join_eui, dev_eui, DevNonce(5), mode)
            .await
            .unwrap();
        assert_eq!(first.get(), 1);
        // Refused: the JoinNonce is not consumed.
        let again = store
            .accept_dev_nonce(join_eui, dev_eui, DevNonce(5), mode)
            .await
            .unwrap_err();
        assert!(matches!(
            again,
            StoreError::DevNonce {
                reason: DevNonceRejection::Reused,
                ..
            }
        ));
        // Of concurrent joins with one nonce, exactly one is accepted.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .accept_dev_nonce(join_eui, dev_eui, DevNonce(6), mode)
                    .await
            }));
        }
        let mut accepted = Vec::new();
        for t in tasks {
            if let Ok(n) = t.await.unwrap() {
                accepted.push(n.get());
            }
        }
        assert_eq!(accepted, vec![2]);
        // And the separate calls see the same records.
        assert_eq!(
            store
                .next_join_nonce(join_eui, dev_eui)
                .await
                .unwrap()
                .get(),
            3
        );
        assert!(
            store
                .check_and_record_dev_nonce(join_eui, dev_eui, DevNonce(6), mode)
                .await
                .is_err()
        );
        let strict = DevNonceMode::StrictlyIncreasing;
        assert!(
            store
                .accept_dev_nonce(join_eui, dev_eui, DevNonce(6), strict)
                .await
                .is_err()
        );
        assert_eq!(
            store
                .accept_dev_nonce(join_eui, dev_eui, DevNonce(7), strict)
                .await
                .unwrap()
                .get(),
            4
        );
    }

    #[test]
    fn dev_nonce_bitmap() {
        let mut r = DevNonceRecord::default();
        assert!(!r.is_used(0));
        r.mark(0);
        r.mark(65535);
        assert!(r.is_used(0) && r.is_used(65535) && !r.is_used(1));
        assert_eq!(r.used.len(), 8192);
        assert_eq!(r.highest, Some(65535));
    }
}
