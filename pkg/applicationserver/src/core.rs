//! The AS pipeline: what the Network Server sends (uplinks, join-accepts, downlink events) is
//! decrypted, decoded and handed to the integrations; what applications send (downlinks) is
//! encoded, encrypted with the counter the NS reports, and queued on the link.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use anyhow::Context as _;
use async_trait::async_trait;
use base64::Engine as _;
use lorawan::crypto::encrypt_frm_payload;
use lorawan::{Aes128Key, DevAddr, Direction};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use serde_json::{Value, json};
use tern_api::{Timestamp, v3};
use tern_cluster::auth::Caller;
use tern_cluster::links::{AsJs, AsNs};
use tern_events::{Event, EventBus, definitions as ev};
use tern_formatters::{DownlinkInput, FormatterKind, Formatters, UplinkInput};
use tern_store::{AsDeviceRecord, AsSession, AsStore, Expect, Store, StoreError};
use tonic::Status;
use tracing::{debug, warn};

use crate::cache::{AppEntry, AsCache, CacheConfig, CacheCounters, ClearSession, DeviceEntry};
use crate::fanout::{AppMessage, Fanout, TopicKind};
use crate::keys::KeyVault;
use crate::link::{Linker, UpHandler};
use crate::render;

/// Attempts of one queue operation when the NS reports another counter or session.
const MAX_QUEUE_ATTEMPTS: usize = 4;

/// Largest FPort of an application payload.
const MAX_F_PORT: u32 = 223;

/// Device locks, striped: a fixed array instead of one lock per device ever seen.
const DEVICE_LOCKS: usize = 4096;

/// The metrics of the AS pipeline.
#[derive(Debug, Clone, Default)]
pub struct AsMetrics {
    /// Uplinks delivered to the integrations.
    pub uplinks_forwarded: Counter,
    /// Messages of the NS that were not delivered, by reason.
    pub up_dropped: Family<Vec<(&'static str, String)>, Counter>,
    /// Formatter failures (the uplink is still delivered), by reason.
    pub decode_failures: Family<Vec<(&'static str, String)>, Counter>,
    /// Downlinks queued on the NS.
    pub downlinks_queued: Counter,
    /// Downlinks refused, by reason.
    pub downlinks_rejected: Family<Vec<(&'static str, String)>, Counter>,
    /// Queued downlinks re-encrypted after an invalidation.
    pub downlinks_reencrypted: Counter,
    /// Uplink-path cache hits, by kind (`device`, `application`).
    pub cache_hits: Family<Vec<(&'static str, String)>, Counter>,
    /// Uplink-path cache misses (store reads), by kind (`device`, `application`).
    pub cache_misses: Family<Vec<(&'static str, String)>, Counter>,
    /// Cached devices read again because an uplink carried a session they did not know.
    pub cache_session_reloads: Counter,
    /// Cached devices evicted to keep the bound.
    pub cache_evictions: Counter,
    /// Devices in the cache.
    pub cache_devices: Gauge<i64, AtomicI64>,
}

impl AsMetrics {
    /// Registers the metrics (under the role prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "uplinks_forwarded",
            "Uplinks decrypted and delivered to the application's integrations",
            self.uplinks_forwarded.clone(),
        );
        registry.register(
            "up_dropped",
            "Messages from the Network Server not delivered, by reason",
            self.up_dropped.clone(),
        );
        registry.register(
            "decode_failures",
            "Uplink payload formatter failures (the uplink is delivered undecoded), by reason",
            self.decode_failures.clone(),
        );
        registry.register(
            "downlinks_queued",
            "Downlinks encrypted and queued on the Network Server",
            self.downlinks_queued.clone(),
        );
        registry.register(
            "downlinks_rejected",
            "Downlinks refused, by reason",
            self.downlinks_rejected.clone(),
        );
        registry.register(
            "downlinks_reencrypted",
            "Queued downlinks re-encrypted after the Network Server invalidated them",
            self.downlinks_reencrypted.clone(),
        );
        registry.register(
            "cache_hits",
            "Uplink-path cache hits, by kind (device, application)",
            self.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Uplink-path cache misses, each a store read, by kind (device, application)",
            self.cache_misses.clone(),
        );
        registry.register(
            "cache_session_reloads",
            "Cached devices read again because an uplink carried a session they did not know",
            self.cache_session_reloads.clone(),
        );
        registry.register(
            "cache_evictions",
            "Cached devices evicted to keep the cache's bound",
            self.cache_evictions.clone(),
        );
        registry.register(
            "cache_devices",
            "Devices in the uplink-path cache",
            self.cache_devices.clone(),
        );
    }

    fn cache_counters(&self) -> CacheCounters {
        let kind = |f: &Family<Vec<(&'static str, String)>, Counter>, kind: &str| {
            f.get_or_create(&vec![("kind", kind.to_owned())]).clone()
        };
        CacheCounters {
            device_hits: kind(&self.cache_hits, "device"),
            device_misses: kind(&self.cache_misses, "device"),
            application_hits: kind(&self.cache_hits, "application"),
            application_misses: kind(&self.cache_misses, "application"),
            evictions: self.cache_evictions.clone(),
            devices: self.cache_devices.clone(),
        }
    }

    fn reason(family: &Family<Vec<(&'static str, String)>, Counter>, reason: &str) {
        family
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }
}

/// Application-level settings of the AS, stored in the AS application table.
#[derive(Clone, PartialEq, Message)]
pub struct AsApplicationSettings {
    /// The default payload formatters of the application's devices.
    #[prost(message, optional, tag = "1")]
    pub formatters: Option<v3::MessagePayloadFormatters>,
}

/// The queue operation of a downlink request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOp {
    /// Append.
    Push,
    /// Replace the whole queue.
    Replace,
}

/// The formatter of one direction, from the proto enum and its parameter.
pub fn formatter_kind(formatter: i32, parameter: &str) -> Result<FormatterKind, String> {
    use v3::PayloadFormatter as F;
    match F::try_from(formatter) {
        Ok(F::FormatterNone) | Ok(F::FormatterApplication) => Ok(FormatterKind::None),
        Ok(F::FormatterCayennelpp) => Ok(FormatterKind::CayenneLpp),
        Ok(F::FormatterJavascript) => Ok(FormatterKind::JavaScript(Arc::from(parameter))),
        Ok(F::FormatterWasm) => {
            let trimmed = parameter.trim_start();
            // WAT text starts with an S-expression; anything else is the base64 binary.
            if trimmed.starts_with('(') || trimmed.starts_with(";;") {
                Ok(FormatterKind::Wasm(Arc::from(parameter.as_bytes())))
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(trimmed.trim_end())
                    .map(|b| FormatterKind::Wasm(Arc::from(b)))
                    .map_err(|e| {
                        format!("WebAssembly formatter parameter: neither WAT text nor base64: {e}")
                    })
            }
        }
        Err(_) => Err(format!("unknown payload formatter {formatter}")),
    }
}

fn app_of(ids: &v3::EndDeviceIdentifiers) -> &str {
    ids.application_ids
        .as_ref()
        .map(|a| a.application_id.as_str())
        .unwrap_or("")
}

fn dev_addr_of(bytes: &[u8]) -> Option<DevAddr> {
    <[u8; 4]>::try_from(bytes).ok().map(DevAddr)
}

fn crypt(key: &Aes128Key, dir: Direction, addr: DevAddr, f_cnt: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = payload.to_vec();
    encrypt_frm_payload(key, dir, addr, f_cnt, &mut out);
    out
}

fn to_struct(value: &Value) -> Option<pbjson_types::Struct> {
    match value {
        Value::Object(_) => serde_json::from_value(value.clone()).ok(),
        _ => None,
    }
}

/// The AS's state and pipeline, shared by the link, the MQTT server and the gRPC services.
pub struct AsCore {
    pub(crate) store: Store,
    pub(crate) events: EventBus,
    vault: KeyVault,
    js: Option<Arc<dyn AsJs>>,
    pub(crate) ns: Arc<dyn AsNs>,
    pub(crate) formatters: Arc<Formatters>,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) metrics: AsMetrics,
    linker: OnceLock<Weak<Linker>>,
    device_locks: Box<[tokio::sync::Mutex<()>]>,
    lock_hasher: RandomState,
    cache: AsCache,
    // The (session, counter) the NS said the next downlink of a device must use.
    next_down: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

impl std::fmt::Debug for AsCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCore").finish_non_exhaustive()
    }
}

/// The cache key of a device.
fn cache_key(app: &str, dev: &str) -> String {
    format!("{app}/{dev}")
}

/// A device's own formatter of one direction; `None`: its application's.
fn own_formatter(
    f: Option<&v3::MessagePayloadFormatters>,
    up: bool,
) -> Option<Result<FormatterKind, String>> {
    let f = f?;
    let (which, parameter) = if up {
        (f.up_formatter, &f.up_formatter_parameter)
    } else {
        (f.down_formatter, &f.down_formatter_parameter)
    };
    (which != v3::PayloadFormatter::FormatterApplication as i32)
        .then(|| formatter_kind(which, parameter))
}

impl AsCore {
    /// A core over these parts; [`AsCore::attach`] connects it to its linker.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        events: EventBus,
        vault: KeyVault,
        js: Option<Arc<dyn AsJs>>,
        ns: Arc<dyn AsNs>,
        formatters: Arc<Formatters>,
        fanout: Arc<Fanout>,
    ) -> Self {
        let metrics = AsMetrics::default();
        Self {
            store,
            events,
            vault,
            js,
            ns,
            formatters,
            fanout,
            linker: OnceLock::new(),
            device_locks: (0..DEVICE_LOCKS).map(|_| Default::default()).collect(),
            lock_hasher: RandomState::new(),
            cache: AsCache::new(&CacheConfig::default(), metrics.cache_counters()),
            metrics,
            next_down: Mutex::new(HashMap::new()),
        }
    }

    /// Sizes the uplink-path cache (before the core is shared).
    pub fn with_cache(mut self, config: &CacheConfig) -> Self {
        self.cache = AsCache::new(config, self.metrics.cache_counters());
        self
    }

    /// The store the AS reads and writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Devices in the uplink-path cache now.
    pub fn cached_devices(&self) -> usize {
        self.cache.device_count()
    }

    /// The approximate memory of the last device entry cached, in bytes (record, unwrapped
    /// keys, map slot and key).
    pub fn cache_entry_bytes(&self) -> u64 {
        self.cache.last_entry_bytes()
    }

    /// Hands a rendered message to the integrations (MQTT clients and sinks).
    pub async fn publish(&self, message: AppMessage) -> anyhow::Result<()> {
        self.fanout.publish(message).await
    }

    /// The pipeline's metrics.
    pub fn metrics(&self) -> &AsMetrics {
        &self.metrics
    }

    /// Lets the core send queue operations on `linker`'s link.
    pub fn attach(&self, linker: &Arc<Linker>) {
        let _ = self.linker.set(Arc::downgrade(linker));
    }

    /// The lock serializing the reads and writes of one device's record (and with them the
    /// cache's view of it); devices share a fixed set of locks.
    pub(crate) fn device_lock(&self, app: &str, dev: &str) -> &tokio::sync::Mutex<()> {
        let h = self.lock_hasher.hash_one((app, dev)) as usize;
        &self.device_locks[h % self.device_locks.len()]
    }

    /// The device, under its lock: from the cache, else from the store (filling the cache).
    async fn locked_entry(
        &self,
        app: &str,
        dev: &str,
        key: &str,
    ) -> Result<Option<Arc<DeviceEntry>>, StoreError> {
        match self.cache.device(key) {
            Some(e) => Ok(Some(e)),
            None => self.load_entry(app, dev, key).await,
        }
    }

    /// Reads the device from the store into the cache; call under the device's lock.
    async fn load_entry(
        &self,
        app: &str,
        dev: &str,
        key: &str,
    ) -> Result<Option<Arc<DeviceEntry>>, StoreError> {
        match self.store.get_as_device(app, dev).await {
            Ok(Some(v)) => {
                let entry = Arc::new(DeviceEntry::new(v.value, v.version));
                self.cache.put_device(key, entry.clone());
                Ok(Some(entry))
            }
            Ok(None) => {
                self.cache.remove_device(key);
                Ok(None)
            }
            Err(e) => {
                self.cache.remove_device(key);
                Err(e)
            }
        }
    }

    /// The device without its lock: from the cache, else from the store, not filling the
    /// cache (a write under the lock could race with the fill).
    async fn peek_entry(
        &self,
        app: &str,
        dev: &str,
    ) -> Result<Option<Arc<DeviceEntry>>, StoreError> {
        if let Some(e) = self.cache.device(&cache_key(app, dev)) {
            return Ok(Some(e));
        }
        Ok(self
            .store
            .get_as_device(app, dev)
            .await?
            .map(|v| Arc::new(DeviceEntry::new(v.value, v.version))))
    }

    /// Records a write of this AS (under the device's lock) in the cache.
    pub(crate) fn cache_written(&self, record: AsDeviceRecord, version: u64) {
        let ids = record.ids.clone().unwrap_or_default();
        let key = cache_key(app_of(&ids), &ids.device_id);
        self.cache
            .put_device(&key, Arc::new(DeviceEntry::new(record, version)));
    }

    /// Forgets a device in the cache (deleted, or a write whose outcome is unknown).
    pub(crate) fn cache_forget(&self, app: &str, dev: &str) {
        self.cache.remove_device(&cache_key(app, dev));
    }

    /// The application's settings for the pipeline: cached for the configured TTL.
    async fn application_entry(&self, app: &str) -> Result<Arc<AppEntry>, StoreError> {
        if let Some(e) = self.cache.application(app) {
            return Ok(e);
        }
        let formatters = self.application_formatters(app).await?;
        let up = formatter_kind(formatters.up_formatter, &formatters.up_formatter_parameter);
        let entry = Arc::new(AppEntry::new(formatters, up));
        self.cache.put_application(app, entry.clone());
        Ok(entry)
    }

    /// The application's default formatters, read from the store.
    pub async fn application_formatters(
        &self,
        app: &str,
    ) -> Result<v3::MessagePayloadFormatters, StoreError> {
        Ok(self
            .store
            .get_as_application(app)
            .await?
            .and_then(|v| AsApplicationSettings::decode(v.value.as_slice()).ok())
            .and_then(|s| s.formatters)
            .unwrap_or_default())
    }

    /// Sets the application's default formatters, after compiling them.
    pub async fn set_application_formatters(
        &self,
        app: &str,
        formatters: v3::MessagePayloadFormatters,
    ) -> Result<(), Status> {
        self.validate_formatters(&formatters).await?;
        let settings = AsApplicationSettings {
            formatters: Some(formatters),
        };
        self.store
            .set_as_application(app, &settings.encode_to_vec(), Expect::Any)
            .await
            .map_err(store_status)?;
        // This instance sees its own change at once; others within their TTL.
        let formatters = settings.formatters.unwrap_or_default();
        let up = formatter_kind(formatters.up_formatter, &formatters.up_formatter_parameter);
        self.cache
            .put_application(app, Arc::new(AppEntry::new(formatters, up)));
        Ok(())
    }

    /// Compiles both directions' formatters; INVALID_ARGUMENT naming the field otherwise.
    pub async fn validate_formatters(
        &self,
        f: &v3::MessagePayloadFormatters,
    ) -> Result<(), Status> {
        for (field, formatter, parameter) in [
            (
                "formatters.up_formatter",
                f.up_formatter,
                &f.up_formatter_parameter,
            ),
            (
                "formatters.down_formatter",
                f.down_formatter,
                &f.down_formatter_parameter,
            ),
        ] {
            let kind = formatter_kind(formatter, parameter)
                .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
            let engine = self.formatters.clone();
            tokio::task::spawn_blocking(move || engine.validate(&kind))
                .await
                .map_err(|e| Status::internal(format!("formatter validation task: {e}")))?
                .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
        }
        Ok(())
    }

    /// The uplink (`up`) or downlink formatter of a device: its own, else the application's.
    async fn formatter_for(
        &self,
        app: &str,
        record: Option<&AsDeviceRecord>,
        up: bool,
    ) -> Result<FormatterKind, String> {
        if let Some(own) = own_formatter(record.and_then(|r| r.formatters.as_ref()), up) {
            return own;
        }
        let entry = self
            .application_entry(app)
            .await
            .map_err(|e| format!("reading the application's formatters: {e}"))?;
        if up {
            entry.up.clone()
        } else {
            formatter_kind(
                entry.formatters.down_formatter,
                &entry.formatters.down_formatter_parameter,
            )
        }
    }

    /// The uplink formatter of a cached device, compiled once per entry.
    async fn entry_up_formatter(
        &self,
        app: &str,
        entry: &DeviceEntry,
    ) -> Result<FormatterKind, String> {
        match entry.up_formatter(|r| own_formatter(r.formatters.as_ref(), true)) {
            Some(own) => own,
            None => self.formatter_for(app, None, true).await,
        }
    }

    /// The uplink formatter of a device: its own, else its application's.
    pub async fn uplink_formatter(
        &self,
        app: &str,
        record: Option<&AsDeviceRecord>,
    ) -> Result<FormatterKind, String> {
        self.formatter_for(app, record, true).await
    }

    /// Runs an uplink decoder off the async threads.
    pub async fn decode_uplink(
        &self,
        kind: FormatterKind,
        bytes: Vec<u8>,
        f_port: u32,
        received_at: Option<Timestamp>,
    ) -> Result<tern_formatters::Decoded, tern_formatters::FormatterError> {
        let engine = self.formatters.clone();
        let input = UplinkInput {
            bytes,
            f_port,
            recv_time: received_at
                .and_then(|t| t.to_datetime())
                .map(std::time::SystemTime::from),
            variables: None,
        };
        if kind == FormatterKind::CayenneLpp {
            // Bounded pure decoding, microseconds: a thread hop would cost more.
            return engine.decode_uplink(&kind, &input);
        }
        tokio::task::spawn_blocking(move || engine.decode_uplink(&kind, &input))
            .await
            .unwrap_or_else(|e| Err(tern_formatters::FormatterError::Engine(e.to_string())))
    }

    /// The session of `record` with this key ID (current or pending; promoting a pending one
    /// when `promote`), else the one the Join Server has.
    async fn session_for(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        record: &mut AsDeviceRecord,
        session_key_id: &[u8],
        promote: bool,
    ) -> Result<(ClearSession, bool), String> {
        let mut changed = false;
        let session = if let Some(s) = record
            .session
            .as_ref()
            .filter(|s| s.session_key_id == session_key_id)
        {
            s.clone()
        } else if let Some(p) = record
            .pending_session
            .as_ref()
            .filter(|s| s.session_key_id == session_key_id)
            .cloned()
        {
            if promote {
                record.session = Some(p.clone());
                record.pending_session = None;
                changed = true;
            }
            p
        } else if !session_key_id.is_empty()
            && let Some(js) = &self.js
        {
            let response = js
                .get_app_s_key(v3::SessionKeyRequest {
                    session_key_id: session_key_id.to_vec(),
                    dev_eui: ids.dev_eui.clone(),
                    join_eui: ids.join_eui.clone(),
                })
                .await
                .map_err(|s| {
                    format!(
                        "the Join Server has no AppSKey for the session: {}",
                        s.message()
                    )
                })?;
            let s = AsSession {
                session_key_id: session_key_id.to_vec(),
                app_s_key: response.app_s_key,
                last_a_f_cnt_down: 0,
                dev_addr: ids.dev_addr.clone(),
            };
            if promote {
                record.session = Some(s.clone());
                changed = true;
            }
            s
        } else {
            return Err(format!(
                "no AppSKey for session {}",
                if session_key_id.is_empty() {
                    "(ABP)".to_owned()
                } else {
                    hex::encode_upper(session_key_id)
                }
            ));
        };
        Ok((self.unwrap_session(ids, &session)?, changed))
    }

    /// A session's AppSKey in clear, with its DevAddr.
    fn unwrap_session(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        session: &AsSession,
    ) -> Result<ClearSession, String> {
        let envelope = session
            .app_s_key
            .as_ref()
            .ok_or_else(|| "the session has no AppSKey".to_owned())?;
        let key = self.vault.unwrap(envelope).map_err(|e| e.to_string())?;
        let dev_addr = dev_addr_of(&session.dev_addr)
            .or_else(|| dev_addr_of(&ids.dev_addr))
            .ok_or_else(|| "the session has no DevAddr".to_owned())?;
        Ok(ClearSession { key, dev_addr })
    }

    /// The session of a device with this key ID, its key unwrapped once per cached entry;
    /// else the Join Server's.
    async fn clear_session(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        entry: Option<&DeviceEntry>,
        session_key_id: &[u8],
    ) -> Result<ClearSession, String> {
        if let Some(e) = entry
            && let Some(i) = e.session(session_key_id)
        {
            return e.clear_key(i, |s| self.unwrap_session(ids, s));
        }
        let mut record = entry.map(|e| e.record()).unwrap_or_default();
        self.session_for(ids, &mut record, session_key_id, false)
            .await
            .map(|(s, _)| s)
    }

    /// Writes the device (under its lock) and caches what was written; a failed write
    /// leaves the cache without the device, so that the next use reads the store.
    async fn save(
        &self,
        key: &str,
        record: AsDeviceRecord,
        version: Option<u64>,
        prev: Option<&DeviceEntry>,
    ) -> Result<Arc<DeviceEntry>, StoreError> {
        let expect = version.map_or(Expect::Absent, Expect::Version);
        match self.store.set_as_device(&record, expect).await {
            Ok(version) => {
                let mut entry = DeviceEntry::new(record, version);
                if let Some(prev) = prev {
                    entry = entry.inherit(prev);
                }
                let entry = Arc::new(entry);
                self.cache.put_device(key, entry.clone());
                Ok(entry)
            }
            Err(e) => {
                self.cache.remove_device(key);
                Err(e)
            }
        }
    }

    fn drop_up(&self, ids: &v3::EndDeviceIdentifiers, reason: &str, message: String) {
        warn!(application = app_of(ids), device = %ids.device_id, reason, %message, "message from the Network Server not delivered");
        AsMetrics::reason(&self.metrics.up_dropped, reason);
        let details = v3::ErrorDetails {
            code: tonic::Code::FailedPrecondition as u32,
            name: reason.to_owned(),
            message,
            ..Default::default()
        };
        self.events.publish_with(&ev::AS_UP_DATA_DECODE_FAIL, |e| {
            e.with_identifiers([ids]).with_data(&details)
        });
    }

    async fn handle_uplink(
        &self,
        up: &v3::ApplicationUp,
        ids: v3::EndDeviceIdentifiers,
        mut uplink: v3::ApplicationUplink,
    ) -> anyhow::Result<()> {
        let app = app_of(&ids).to_owned();
        let key = cache_key(&app, &ids.device_id);
        let lock = self.device_lock(&app, &ids.device_id);
        let guard = lock.lock().await;
        let entry = match self.cache.device(&key) {
            Some(e) if e.session(&uplink.session_key_id).is_some() => Some(e),
            Some(_) => {
                // Another AS instance sharing the store may have written a newer session.
                self.metrics.cache_session_reloads.inc();
                self.load_entry(&app, &ids.device_id, &key).await?
            }
            None => self.load_entry(&app, &ids.device_id, &key).await?,
        };
        let current = entry
            .as_ref()
            .filter(|e| e.session(&uplink.session_key_id) == Some(0));
        let (session, entry) = if let Some(e) = current {
            // The hot path: the current session, its key unwrapped once.
            (e.clear_key(0, |s| self.unwrap_session(&ids, s)), e.clone())
        } else {
            // A pending session to promote, or a key the Join Server has: a write.
            let version = entry.as_ref().map(|e| e.version);
            let mut record = entry.map(|e| e.record()).unwrap_or_else(|| AsDeviceRecord {
                ids: Some(ids.clone()),
                ..Default::default()
            });
            match self
                .session_for(&ids, &mut record, &uplink.session_key_id, true)
                .await
            {
                Ok((s, true)) => (Ok(s), self.save(&key, record, version, None).await?),
                Ok((s, false)) => (
                    Ok(s),
                    Arc::new(DeviceEntry::new(record, version.unwrap_or(0))),
                ),
                Err(message) => (Err(message), Arc::new(DeviceEntry::new(record, 0))),
            }
        };
        let session = match session {
            Ok(s) => s,
            Err(message) => {
                self.drop_up(&ids, "no_app_s_key", message);
                return Ok(());
            }
        };
        // Sinks may queue downlinks for this device in turn: do not hold its lock for them.
        drop(guard);
        uplink.frm_payload = crypt(
            &session.key,
            Direction::Uplink,
            session.dev_addr,
            uplink.f_cnt,
            &uplink.frm_payload,
        );
        // The formatter: a failure still delivers the uplink, undecoded, with the reason.
        let kind = self.entry_up_formatter(&app, &entry).await;
        let decoded = match kind {
            Ok(FormatterKind::None) => None,
            Ok(kind) => Some(
                self.decode_uplink(
                    kind,
                    uplink.frm_payload.clone(),
                    uplink.f_port,
                    uplink.received_at,
                )
                .await
                .map_err(|e| (e.reason(), e.to_string())),
            ),
            Err(e) => Some(Err(("invalid_formatter", e))),
        };
        let mut decoded_json = None;
        match decoded {
            Some(Ok(d)) => {
                uplink.decoded_payload_warnings = d.warnings;
                uplink.decoded_payload = to_struct(&d.data);
                if uplink.decoded_payload.is_none() {
                    uplink
                        .decoded_payload_warnings
                        .push("the formatter returned data that is not an object".to_owned());
                } else {
                    decoded_json = Some(d.data);
                }
            }
            Some(Err((reason, message))) => {
                AsMetrics::reason(&self.metrics.decode_failures, reason);
                uplink.decoded_payload_warnings.push(message.clone());
                let details = v3::ErrorDetails {
                    code: tonic::Code::InvalidArgument as u32,
                    name: reason.to_owned(),
                    message,
                    correlation_ids: up.correlation_ids.clone(),
                    ..Default::default()
                };
                self.events.publish_with(&ev::AS_UP_DATA_DECODE_FAIL, |e| {
                    e.with_identifiers([&ids])
                        .with_correlation_ids(up.correlation_ids.clone())
                        .with_data(&details)
                });
            }
            None => {}
        }
        let mut body = render::uplink(&uplink);
        if let (Some(data), Value::Object(m)) = (decoded_json, &mut body) {
            // The formatter's own JSON, not the Struct round trip (keeps integers integral).
            m.insert("decoded_payload".into(), data);
        }
        let forwarded = v3::ApplicationUp {
            end_device_ids: Some(ids.clone()),
            correlation_ids: up.correlation_ids.clone(),
            received_at: up.received_at,
            up: Some(v3::application_up::Up::UplinkMessage(uplink)),
        };
        let json = render::envelope(&forwarded, "uplink_message", body);
        self.fanout
            .publish(AppMessage {
                application_id: app,
                device_id: ids.device_id.clone(),
                kind: TopicKind::Up,
                json: json.into(),
            })
            .await
            .context("delivering the uplink to the integrations")?;
        self.metrics.uplinks_forwarded.inc();
        self.events.publish_with(&ev::AS_UP_DATA_FORWARD, |e| {
            e.with_identifiers([&ids])
                .with_correlation_ids(up.correlation_ids.clone())
                .with_data(&forwarded)
        });
        Ok(())
    }

    async fn handle_join(
        &self,
        up: &v3::ApplicationUp,
        ids: v3::EndDeviceIdentifiers,
        mut join: v3::ApplicationJoinAccept,
    ) -> anyhow::Result<()> {
        let app = app_of(&ids).to_owned();
        let requeue = {
            let key = cache_key(&app, &ids.device_id);
            let lock = self.device_lock(&app, &ids.device_id);
            let _guard = lock.lock().await;
            // Read from the store, not the cache: a join is rare, and its write must not
            // conflict with what another AS instance wrote.
            let existing = self.load_entry(&app, &ids.device_id, &key).await?;
            let version = existing.as_ref().map(|e| e.version);
            // The downlinks of the old session, in clear, before its key is replaced.
            let mut clear = Vec::new();
            for d in &join.invalidated_downlinks {
                match self
                    .clear_session(&ids, existing.as_deref(), &d.session_key_id)
                    .await
                {
                    Ok(s) => {
                        let mut d = d.clone();
                        d.frm_payload = crypt(
                            &s.key,
                            Direction::Downlink,
                            s.dev_addr,
                            d.f_cnt,
                            &d.frm_payload,
                        );
                        clear.push(d);
                    }
                    Err(message) => self.drop_up(&ids, "invalidated_downlink_lost", message),
                }
            }
            let mut record = existing.map(|e| e.record()).unwrap_or_default();
            let session = AsSession {
                session_key_id: join.session_key_id.clone(),
                app_s_key: join.app_s_key.clone(),
                last_a_f_cnt_down: 0,
                dev_addr: ids.dev_addr.clone(),
            };
            if join.pending_session {
                record.pending_session = Some(session);
            } else {
                record.session = Some(session);
                record.pending_session = None;
            }
            record.ids = Some(ids.clone());
            self.save(&key, record, version, None).await?;
            // Counters of the old session mean nothing for the new one.
            self.next_down
                .lock()
                .expect("next_down")
                .remove(&format!("{app}/{}", ids.device_id));
            clear
        };
        if !requeue.is_empty() {
            let count = requeue.len() as u64;
            match self.enqueue(&ids, QueueOp::Push, requeue, None).await {
                Ok(_) => {
                    self.metrics.downlinks_reencrypted.inc_by(count);
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    anyhow::bail!(
                        "re-queueing the downlinks of the old session: {}",
                        status.message()
                    )
                }
                Err(status) => self.drop_up(&ids, "requeue_failed", status.message().to_owned()),
            }
        }
        // Integrations never see the key, not even wrapped.
        join.app_s_key = None;
        join.invalidated_downlinks.clear();
        let forwarded = v3::ApplicationUp {
            end_device_ids: Some(ids.clone()),
            correlation_ids: up.correlation_ids.clone(),
            received_at: up.received_at,
            up: Some(v3::application_up::Up::JoinAccept(join.clone())),
        };
        let json = render::envelope(&forwarded, "join_accept", render::join_accept(&join));
        self.fanout
            .publish(AppMessage {
                application_id: app,
                device_id: ids.device_id.clone(),
                kind: TopicKind::Join,
                json: json.into(),
            })
            .await
            .context("delivering the join-accept to the integrations")?;
        self.events.publish_with(&ev::AS_UP_JOIN_FORWARD, |e| {
            e.with_identifiers([&ids])
                .with_correlation_ids(up.correlation_ids.clone())
                .with_data(&forwarded)
        });
        Ok(())
    }

    /// A downlink of the NS with its payload decrypted (left as is when the key is unknown).
    async fn clear_downlink(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        down: &v3::ApplicationDownlink,
    ) -> v3::ApplicationDownlink {
        let mut down = down.clone();
        let entry = self
            .peek_entry(app_of(ids), &ids.device_id)
            .await
            .ok()
            .flatten();
        match self
            .clear_session(ids, entry.as_deref(), &down.session_key_id)
            .await
        {
            Ok(s) => {
                down.frm_payload = crypt(
                    &s.key,
                    Direction::Downlink,
                    s.dev_addr,
                    down.f_cnt,
                    &down.frm_payload,
                );
            }
            Err(e) => {
                debug!(error = %e, "downlink event payload not decrypted");
                down.frm_payload.clear();
            }
        }
        down
    }

    async fn handle_downlink_event(
        &self,
        up: &v3::ApplicationUp,
        ids: v3::EndDeviceIdentifiers,
        kind: TopicKind,
        key: &str,
        body: Value,
    ) -> anyhow::Result<()> {
        let json = render::envelope(up, key, body);
        self.fanout
            .publish(AppMessage {
                application_id: app_of(&ids).to_owned(),
                device_id: ids.device_id.clone(),
                kind,
                json: json.into(),
            })
            .await
            .with_context(|| format!("delivering {key} to the integrations"))
    }

    async fn handle_invalidated(
        &self,
        up: &v3::ApplicationUp,
        ids: v3::EndDeviceIdentifiers,
        invalidated: v3::ApplicationInvalidatedDownlinks,
    ) -> anyhow::Result<()> {
        self.events
            .publish_with(&ev::AS_DOWN_QUEUE_INVALIDATED, |e| {
                e.with_identifiers([&ids])
                    .with_correlation_ids(up.correlation_ids.clone())
                    .with_data(&invalidated)
            });
        let mut clear = Vec::with_capacity(invalidated.downlinks.len());
        for d in &invalidated.downlinks {
            let c = self.clear_downlink(&ids, d).await;
            if c.frm_payload.is_empty() && !d.frm_payload.is_empty() {
                self.drop_up(
                    &ids,
                    "invalidated_downlink_lost",
                    format!(
                        "no AppSKey to decrypt the invalidated downlink with FCnt {}",
                        d.f_cnt
                    ),
                );
                continue;
            }
            clear.push(c);
        }
        let count = clear.len() as u64;
        let requeued = if clear.is_empty() {
            Vec::new()
        } else {
            let hint = (
                invalidated.session_key_id.clone(),
                invalidated.next_a_f_cnt_down,
            );
            match self.enqueue(&ids, QueueOp::Push, clear, Some(hint)).await {
                Ok(done) => {
                    self.metrics.downlinks_reencrypted.inc_by(count);
                    done
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    anyhow::bail!("re-queueing invalidated downlinks: {}", status.message())
                }
                Err(status) => {
                    self.drop_up(&ids, "requeue_failed", status.message().to_owned());
                    Vec::new()
                }
            }
        };
        let body = json!({
            "downlinks": requeued.iter().map(|(clear, enc)| {
                let mut d = clear.clone();
                d.f_cnt = enc.f_cnt;
                d.session_key_id = enc.session_key_id.clone();
                render::downlink(&d)
            }).collect::<Vec<_>>(),
            "last_f_cnt_down": invalidated.next_a_f_cnt_down.saturating_sub(1),
            "session_key_id": base64::engine::general_purpose::STANDARD.encode(&invalidated.session_key_id),
        });
        self.handle_downlink_event(
            up,
            ids,
            TopicKind::DownInvalidated,
            "downlink_queue_invalidated",
            body,
        )
        .await
    }

    /// Prepares application downlinks: validates them and encodes `decoded_payload` with
    /// the downlink formatter. The result is in clear.
    pub async fn prepare(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        downlinks: Vec<v3::ApplicationDownlink>,
    ) -> Result<Vec<v3::ApplicationDownlink>, Status> {
        let app = app_of(ids);
        let entry = self
            .peek_entry(app, &ids.device_id)
            .await
            .map_err(store_status)?;
        let record = entry.as_ref().map(|e| e.record());
        let record = record.as_ref();
        let mut out = Vec::with_capacity(downlinks.len());
        for (i, mut d) in downlinks.into_iter().enumerate() {
            if let Some(decoded) = d.decoded_payload.take() {
                if !d.frm_payload.is_empty() {
                    return Err(self.reject(
                        "both_payloads",
                        format!(
                            "downlinks[{i}]: set either frm_payload or decoded_payload, not both"
                        ),
                    ));
                }
                let kind = self.formatter_for(app, record, false).await.map_err(|e| {
                    self.reject("invalid_formatter", format!("downlinks[{i}]: {e}"))
                })?;
                if kind == FormatterKind::None {
                    return Err(self.reject(
                        "no_formatter",
                        format!("downlinks[{i}].decoded_payload: the device has no downlink payload formatter"),
                    ));
                }
                let input = DownlinkInput {
                    data: serde_json::to_value(&decoded).unwrap_or(Value::Null),
                    f_port: (d.f_port != 0).then_some(d.f_port),
                    variables: None,
                };
                let engine = self.formatters.clone();
                let encoded =
                    tokio::task::spawn_blocking(move || engine.encode_downlink(&kind, &input))
                        .await
                        .map_err(|e| Status::internal(format!("formatter task: {e}")))?
                        .map_err(|e| {
                            self.reject(e.reason(), format!("downlinks[{i}].decoded_payload: {e}"))
                        })?;
                d.frm_payload = encoded.bytes;
                if let Some(port) = encoded.f_port {
                    d.f_port = port;
                }
                d.decoded_payload = Some(decoded);
            }
            if d.f_port == 0 || d.f_port > MAX_F_PORT {
                return Err(self.reject(
                    "f_port",
                    format!(
                        "downlinks[{i}].f_port: {} is not an application FPort (1..=223)",
                        d.f_port
                    ),
                ));
            }
            if d.correlation_ids.is_empty() {
                d.correlation_ids
                    .push(tern_events::correlation::new_id("as:downlink"));
            }
            self.events.publish(
                Event::new(&ev::AS_DOWN_DATA_RECEIVE)
                    .with_identifiers([ids])
                    .with_correlation_ids(d.correlation_ids.clone())
                    .with_data(&d),
            );
            out.push(d);
        }
        Ok(out)
    }

    fn reject(&self, reason: &str, message: String) -> Status {
        AsMetrics::reason(&self.metrics.downlinks_rejected, reason);
        Status::invalid_argument(message)
    }

    /// Pushes or replaces application downlinks (in clear, or with `decoded_payload`): the
    /// entry point of the MQTT server, the gRPC API and the integrations.
    pub async fn queue(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        op: QueueOp,
        downlinks: Vec<v3::ApplicationDownlink>,
    ) -> Result<(), Status> {
        if ids.device_id.is_empty() || app_of(ids).is_empty() {
            return Err(self.reject(
                "device_ids",
                "end_device_ids: application_id and device_id are required".to_owned(),
            ));
        }
        let clear = self.prepare(ids, downlinks).await?;
        self.enqueue(ids, op, clear, None).await.map(drop)
    }

    /// Encrypts `clear` downlinks with the session and counter the NS expects and sends
    /// them on the link, retrying with the counter the NS reports when it refuses ours.
    /// Returns each clear downlink with its encrypted form.
    async fn enqueue(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        op: QueueOp,
        clear: Vec<v3::ApplicationDownlink>,
        hint: Option<(Vec<u8>, u32)>,
    ) -> Result<Vec<(v3::ApplicationDownlink, v3::ApplicationDownlink)>, Status> {
        let app = app_of(ids).to_owned();
        let dev_key = format!("{app}/{}", ids.device_id);
        let lock = self.device_lock(&app, &ids.device_id);
        let _guard = lock.lock().await;
        let Some(entry) = self
            .locked_entry(&app, &ids.device_id, &dev_key)
            .await
            .map_err(store_status)?
        else {
            return Err(self.not_found(&ids.device_id));
        };
        let stored = entry.record();
        let current = stored
            .pending_session
            .as_ref()
            .or(stored.session.as_ref())
            .cloned()
            .ok_or_else(|| self.not_found(&ids.device_id))?;
        let mut target = hint
            .or_else(|| {
                self.next_down
                    .lock()
                    .expect("next_down")
                    .get(&dev_key)
                    .cloned()
            })
            .unwrap_or_else(|| {
                let next = if current.last_a_f_cnt_down == 0 {
                    0
                } else {
                    current.last_a_f_cnt_down + 1
                };
                (current.session_key_id.clone(), next)
            });
        let full_ids = stored.ids.clone().unwrap_or_else(|| ids.clone());
        let linker = self
            .linker
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| Status::unavailable("not linked to the Network Server"))?;
        for _ in 0..MAX_QUEUE_ATTEMPTS {
            let session = self
                .clear_session(&full_ids, Some(&entry), &target.0)
                .await
                .map_err(|e| {
                    AsMetrics::reason(&self.metrics.downlinks_rejected, "no_app_s_key");
                    Status::failed_precondition(format!("device {:?}: {e}", ids.device_id))
                })?;
            let encrypted: Vec<v3::ApplicationDownlink> = clear
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let f_cnt = target.1.wrapping_add(i as u32);
                    v3::ApplicationDownlink {
                        session_key_id: target.0.clone(),
                        f_cnt,
                        frm_payload: crypt(
                            &session.key,
                            Direction::Downlink,
                            session.dev_addr,
                            f_cnt,
                            &d.frm_payload,
                        ),
                        decoded_payload: None,
                        ..d.clone()
                    }
                })
                .collect();
            let operation = v3::DownlinkQueueOperation {
                operation_id: 0,
                end_device_ids: Some(full_ids.clone()),
                operation: match op {
                    QueueOp::Push => v3::downlink_queue_operation::Operation::Push as i32,
                    QueueOp::Replace => v3::downlink_queue_operation::Operation::Replace as i32,
                },
                downlinks: encrypted.clone(),
            };
            let result = linker.queue_operation(operation).await?;
            let reported_session = if result.session_key_id.is_empty() {
                target.0.clone()
            } else {
                result.session_key_id.clone()
            };
            let reported = (reported_session, result.next_a_f_cnt_down);
            match result.error {
                None => {
                    self.next_down
                        .lock()
                        .expect("next_down")
                        .insert(dev_key.clone(), reported.clone());
                    if let Some(last) = encrypted.last() {
                        let mut record = stored.clone();
                        for s in [record.session.as_mut(), record.pending_session.as_mut()]
                            .into_iter()
                            .flatten()
                        {
                            if s.session_key_id == last.session_key_id {
                                s.last_a_f_cnt_down = last.f_cnt;
                            }
                        }
                        // The counter is a hint only (the NS corrects it): losing a race is fine.
                        let _ = self
                            .save(&dev_key, record, Some(entry.version), Some(&entry))
                            .await;
                    }
                    self.metrics.downlinks_queued.inc_by(encrypted.len() as u64);
                    for d in &encrypted {
                        self.events.publish(
                            Event::new(&ev::AS_DOWN_DATA_FORWARD)
                                .with_identifiers([ids])
                                .with_correlation_ids(d.correlation_ids.clone())
                                .with_data(d),
                        );
                    }
                    return Ok(clear.into_iter().zip(encrypted).collect());
                }
                Some(error) if reported != target => {
                    debug!(device = %ids.device_id, error = %error.name, next = reported.1,
                        "the Network Server expects another counter or session; re-encrypting");
                    target = reported;
                }
                Some(error) => {
                    AsMetrics::reason(&self.metrics.downlinks_rejected, &error.name);
                    return Err(Status::failed_precondition(format!(
                        "the Network Server refused the downlinks of device {:?}: {} ({})",
                        ids.device_id, error.message, error.name
                    )));
                }
            }
        }
        AsMetrics::reason(&self.metrics.downlinks_rejected, "counter_race");
        Err(Status::aborted(format!(
            "the downlink counter of device {:?} kept changing; try again",
            ids.device_id
        )))
    }

    fn not_found(&self, device_id: &str) -> Status {
        AsMetrics::reason(&self.metrics.downlinks_rejected, "no_session");
        Status::failed_precondition(format!(
            "device {device_id:?} has no session on the Application Server (not joined, or no ABP session set)"
        ))
    }

    /// The device's queue on the NS, decrypted.
    pub async fn list(
        &self,
        ids: &v3::EndDeviceIdentifiers,
    ) -> Result<Vec<v3::ApplicationDownlink>, Status> {
        let queue = self
            .ns
            .downlink_queue_list(Caller::Cluster, ids.clone())
            .await?;
        let mut out = Vec::with_capacity(queue.downlinks.len());
        for d in &queue.downlinks {
            out.push(self.clear_downlink(ids, d).await);
        }
        Ok(out)
    }
}

/// A store error as a gRPC status.
pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        StoreError::Conflict { .. } => Status::aborted(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

#[async_trait]
impl UpHandler for AsCore {
    async fn handle(&self, mut up: v3::ApplicationUp) -> anyhow::Result<()> {
        let Some(ids) = up.end_device_ids.clone() else {
            AsMetrics::reason(&self.metrics.up_dropped, "no_device_ids");
            warn!("message from the Network Server without end_device_ids dropped");
            return Ok(());
        };
        use v3::application_up::Up;
        // Taken, not cloned: the rest of `up` is all the handlers read of it.
        match up.up.take() {
            Some(Up::UplinkMessage(u)) => self.handle_uplink(&up, ids, u).await,
            Some(Up::JoinAccept(j)) => self.handle_join(&up, ids, j).await,
            Some(Up::DownlinkQueueInvalidated(i)) => self.handle_invalidated(&up, ids, i).await,
            Some(Up::DownlinkFailed(f)) => {
                let down = match &f.downlink {
                    Some(d) => render::downlink(&self.clear_downlink(&ids, d).await),
                    None => json!({}),
                };
                let error = f
                    .error
                    .as_ref()
                    .map(|e| json!({"code": e.code, "name": e.name, "message": e.message}));
                let body = json!({"downlink": down, "error": error});
                self.handle_downlink_event(&up, ids, TopicKind::DownFailed, "downlink_failed", body)
                    .await
            }
            Some(other) => {
                let (kind, key, d) = match other {
                    Up::DownlinkAck(d) => (TopicKind::DownAck, "downlink_ack", d),
                    Up::DownlinkNack(d) => (TopicKind::DownNack, "downlink_nack", d),
                    Up::DownlinkSent(d) => (TopicKind::DownSent, "downlink_sent", d),
                    Up::DownlinkQueued(d) => (TopicKind::DownQueued, "downlink_queued", d),
                    _ => unreachable!("handled above"),
                };
                let body = render::downlink(&self.clear_downlink(&ids, &d).await);
                self.handle_downlink_event(&up, ids, kind, key, body).await
            }
            None => {
                AsMetrics::reason(&self.metrics.up_dropped, "empty");
                Ok(())
            }
        }
    }
}
