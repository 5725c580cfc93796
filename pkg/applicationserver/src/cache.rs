//! The in-memory state of the uplink path: AS device records (with their store version, their
//! AppSKeys once unwrapped and their compiled formatter choice) and application settings, so
//! that an uplink is decrypted and decoded without a store read.
//!
//! Devices: a bounded map, sharded to keep lock hold times short, with CLOCK (second chance)
//! eviction, which costs O(1) amortized per insert. It is filled on a miss under the device's
//! lock and updated by every write of this AS (uplink promotion, join-accept, downlink
//! counter, API set and delete), which happen under the same lock. Another AS instance sharing
//! the store can change a device too: an uplink whose session key ID the cached record does
//! not know reloads it once, and an entry older than `device-max-age` is reloaded, which
//! bounds how long a device-level change made through another instance's API stays unseen.
//!
//! Applications: their settings (default formatters) change through the API of any instance,
//! so an entry lives `application-ttl` (default 2 s), and this instance's own writes replace it
//! at once. The map is bounded by [`MAX_APPLICATIONS`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tern_api::v3;
use tern_formatters::FormatterKind;
use tern_store::{AsDeviceRecord, AsSession};

/// Most application settings kept; past it, expired entries go first, then all.
pub const MAX_APPLICATIONS: usize = 10_000;

/// Shards of the device map at most (fewer for small capacities, so the bound stays exact).
const MAX_SHARDS: usize = 64;

/// The `[application-server.cache]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct CacheConfig {
    /// Device records kept in memory at most (0 disables the device cache).
    pub devices: usize,
    /// How long application settings (default formatters) are used before being read again:
    /// the delay after which a change made through another AS instance is seen.
    #[serde(with = "humantime_serde")]
    pub application_ttl: Duration,
    /// How long a device record is used before being read again: the delay after which a
    /// device-level change made through another AS instance's API is seen (session changes
    /// are seen at once, from the uplink's session key ID).
    #[serde(with = "humantime_serde")]
    pub device_max_age: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            devices: 100_000,
            application_ttl: Duration::from_secs(2),
            device_max_age: Duration::from_secs(600),
        }
    }
}

/// A session's key in clear, with the DevAddr it encrypts under.
#[derive(Clone, Copy)]
pub(crate) struct ClearSession {
    pub(crate) key: lorawan::Aes128Key,
    pub(crate) dev_addr: lorawan::DevAddr,
}

/// One cached device, compact: the stored record encoded (decoded only on the rarer write
/// paths), its session key IDs for matching uplinks, and what the uplink path derives from
/// it (the clear AppSKeys, the formatter), computed at first use.
pub(crate) struct DeviceEntry {
    encoded: Box<[u8]>,
    pub(crate) version: u64,
    loaded: Instant,
    // The key IDs of the current and the pending session.
    session_ids: [Option<Box<[u8]>>; 2],
    // Their keys, unwrapped once (`None`: not unwrappable; the error is made again on use).
    keys: [OnceLock<Option<ClearSession>>; 2],
    // The device's own uplink formatter; `None`: the application's.
    up_formatter: OnceLock<Option<Result<FormatterKind, String>>>,
}

impl DeviceEntry {
    pub(crate) fn new(record: AsDeviceRecord, version: u64) -> Self {
        let id = |s: &Option<AsSession>| {
            s.as_ref()
                .map(|s| s.session_key_id.clone().into_boxed_slice())
        };
        Self {
            session_ids: [id(&record.session), id(&record.pending_session)],
            encoded: record.encode_to_vec().into_boxed_slice(),
            version,
            loaded: Instant::now(),
            keys: [OnceLock::new(), OnceLock::new()],
            up_formatter: OnceLock::new(),
        }
    }

    /// The stored record, decoded.
    pub(crate) fn record(&self) -> AsDeviceRecord {
        // The bytes are this process's own encoding of a record: they decode.
        AsDeviceRecord::decode(&*self.encoded).unwrap_or_default()
    }

    /// Keeps what `prev` derived (unwrapped keys, formatter) where the record did not change
    /// it: a downlink counter update should not cost an unwrap at the next uplink.
    pub(crate) fn inherit(self, prev: &DeviceEntry) -> Self {
        fn same(a: &Option<AsSession>, b: &Option<AsSession>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => {
                    a.session_key_id == b.session_key_id
                        && a.app_s_key == b.app_s_key
                        && a.dev_addr == b.dev_addr
                }
                _ => false,
            }
        }
        let (new, old) = (self.record(), prev.record());
        let sessions = [
            (&new.session, &old.session),
            (&new.pending_session, &old.pending_session),
        ];
        for (i, (a, b)) in sessions.into_iter().enumerate() {
            if same(a, b)
                && let Some(key) = prev.keys[i].get()
            {
                let _ = self.keys[i].set(*key);
            }
        }
        if new.formatters == old.formatters
            && let Some(f) = prev.up_formatter.get()
        {
            let _ = self.up_formatter.set(f.clone());
        }
        self
    }

    /// The session with this key ID: 0 the current one, 1 the pending one.
    pub(crate) fn session(&self, session_key_id: &[u8]) -> Option<usize> {
        self.session_ids
            .iter()
            .position(|id| id.as_deref() == Some(session_key_id))
    }

    /// The clear key of session `index` (see [`DeviceEntry::session`]), unwrapped once.
    pub(crate) fn clear_key(
        &self,
        index: usize,
        unwrap: impl Fn(&AsSession) -> Result<ClearSession, String>,
    ) -> Result<ClearSession, String> {
        let index = index.min(1);
        let session = || {
            let record = self.record();
            let s = if index == 0 {
                record.session
            } else {
                record.pending_session
            };
            s.ok_or_else(|| "no such session".to_owned())
        };
        if let Some(key) = self.keys[index].get_or_init(|| session().and_then(|s| unwrap(&s)).ok())
        {
            return Ok(*key);
        }
        // Not unwrappable: rare, so the reason is made again rather than kept.
        session().and_then(|s| unwrap(&s))
    }

    /// The device's own uplink formatter (`None`: its application's), compiled once.
    pub(crate) fn up_formatter(
        &self,
        compute: impl FnOnce(&AsDeviceRecord) -> Option<Result<FormatterKind, String>>,
    ) -> Option<Result<FormatterKind, String>> {
        self.up_formatter
            .get_or_init(|| compute(&self.record()))
            .clone()
    }

    /// Approximate bytes of this entry in the cache: the Arc'd entry and its heap, the
    /// shard's slot and map bucket, and the key they share.
    pub(crate) fn approx_bytes(&self, key_len: usize) -> usize {
        // Heap blocks are rounded up to 16 bytes by the allocator.
        let block = |n: usize| if n == 0 { 0 } else { n.div_ceil(16) * 16 };
        let ids: usize = self
            .session_ids
            .iter()
            .flatten()
            .map(|id| block(id.len()))
            .sum();
        // A device's own script or module, compiled from the record: a second copy.
        let formatter = match self.up_formatter.get() {
            Some(Some(Ok(FormatterKind::JavaScript(s)))) => block(s.len() + 16),
            Some(Some(Ok(FormatterKind::Wasm(m)))) => block(m.len() + 16),
            _ => 0,
        };
        block(size_of::<Self>() + 2 * size_of::<usize>())
            + block(self.encoded.len())
            + ids
            + formatter
            + size_of::<Slot>()
            + (size_of::<(Arc<str>, usize)>() + 1) * 8 / 7
            + block(2 * size_of::<usize>() + key_len)
    }
}

/// Counters of the cache, resolved once so that the hot path does not allocate labels.
#[derive(Clone, Default)]
pub(crate) struct CacheCounters {
    pub(crate) device_hits: Counter,
    pub(crate) device_misses: Counter,
    pub(crate) application_hits: Counter,
    pub(crate) application_misses: Counter,
    pub(crate) evictions: Counter,
    pub(crate) devices: Gauge<i64, AtomicI64>,
}

struct Slot {
    key: Arc<str>,
    entry: Arc<DeviceEntry>,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Slot>,
    hand: usize,
}

/// Cached application settings.
pub(crate) struct AppEntry {
    loaded: Instant,
    /// The application's default formatters.
    pub(crate) formatters: v3::MessagePayloadFormatters,
    /// Its uplink formatter, compiled from them.
    pub(crate) up: Result<FormatterKind, String>,
}

impl AppEntry {
    pub(crate) fn new(
        formatters: v3::MessagePayloadFormatters,
        up: Result<FormatterKind, String>,
    ) -> Self {
        Self {
            loaded: Instant::now(),
            formatters,
            up,
        }
    }
}

/// The cache of the uplink path.
pub(crate) struct AsCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    device_max_age: Duration,
    application_ttl: Duration,
    apps: Mutex<HashMap<String, Arc<AppEntry>>>,
    pub(crate) counters: CacheCounters,
    // Bytes of the last inserted entry, for the gauge of `approx_entry_bytes`.
    last_entry_bytes: AtomicU64,
}

impl AsCache {
    pub(crate) fn new(config: &CacheConfig, counters: CacheCounters) -> Self {
        let shards = (config.devices / 1024).clamp(1, MAX_SHARDS);
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: config.devices / shards,
            hasher: RandomState::new(),
            device_max_age: config.device_max_age,
            application_ttl: config.application_ttl,
            apps: Mutex::default(),
            counters,
            last_entry_bytes: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % self.shards.len()]
    }

    /// The cached device, if fresh enough; counts a hit or a miss.
    pub(crate) fn device(&self, key: &str) -> Option<Arc<DeviceEntry>> {
        let found = {
            let mut shard = self.shard(key).lock().expect("cache shard");
            let Shard { index, slots, .. } = &mut *shard;
            index.get(key).map(|&i| {
                slots[i].referenced = true;
                slots[i].entry.clone()
            })
        };
        match found {
            Some(e) if e.loaded.elapsed() <= self.device_max_age => {
                self.counters.device_hits.inc();
                Some(e)
            }
            _ => {
                self.counters.device_misses.inc();
                None
            }
        }
    }

    /// Caches `entry` under `key`, evicting another entry of its shard when it is full.
    pub(crate) fn put_device(&self, key: &str, entry: Arc<DeviceEntry>) {
        if self.per_shard == 0 {
            return;
        }
        self.last_entry_bytes.store(
            entry.approx_bytes(key.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut shard = self.shard(key).lock().expect("cache shard");
        let Shard { index, slots, hand } = &mut *shard;
        if let Some(&i) = index.get(key) {
            slots[i].entry = entry;
            slots[i].referenced = true;
            return;
        }
        let key: Arc<str> = Arc::from(key);
        if slots.len() < self.per_shard {
            index.insert(key.clone(), slots.len());
            slots.push(Slot {
                key,
                entry,
                referenced: false,
            });
            self.counters.devices.inc();
            return;
        }
        // CLOCK: a slot used since the hand last passed gets a second chance; every pass
        // clears the bits it skips, so the hand stops within one turn.
        loop {
            let slot = &mut slots[*hand];
            if slot.referenced {
                slot.referenced = false;
                *hand = (*hand + 1) % slots.len();
                continue;
            }
            index.remove(&slot.key);
            index.insert(key.clone(), *hand);
            *slot = Slot {
                key,
                entry,
                referenced: false,
            };
            *hand = (*hand + 1) % slots.len();
            self.counters.evictions.inc();
            return;
        }
    }

    /// Forgets a device (deleted, or its write failed and the store holds something else).
    pub(crate) fn remove_device(&self, key: &str) {
        let mut shard = self.shard(key).lock().expect("cache shard");
        let Shard { index, slots, hand } = &mut *shard;
        let Some(i) = index.remove(key) else {
            return;
        };
        slots.swap_remove(i);
        if let Some(moved) = slots.get(i) {
            index.insert(moved.key.clone(), i);
        }
        if *hand >= slots.len() {
            *hand = 0;
        }
        self.counters.devices.dec();
    }

    /// Devices cached now.
    pub(crate) fn device_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("cache shard").slots.len())
            .sum()
    }

    /// The approximate size of the last cached device entry, in bytes.
    pub(crate) fn last_entry_bytes(&self) -> u64 {
        self.last_entry_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The application's settings, unless older than the TTL; counts a hit or a miss.
    pub(crate) fn application(&self, app: &str) -> Option<Arc<AppEntry>> {
        let found = self.apps.lock().expect("app cache").get(app).cloned();
        match found {
            Some(e) if e.loaded.elapsed() <= self.application_ttl => {
                self.counters.application_hits.inc();
                Some(e)
            }
            _ => {
                self.counters.application_misses.inc();
                None
            }
        }
    }

    /// Caches an application's settings.
    pub(crate) fn put_application(&self, app: &str, entry: Arc<AppEntry>) {
        if self.application_ttl.is_zero() {
            return;
        }
        let mut apps = self.apps.lock().expect("app cache");
        if apps.len() >= MAX_APPLICATIONS && !apps.contains_key(app) {
            let ttl = self.application_ttl;
            apps.retain(|_, e| e.loaded.elapsed() <= ttl);
            if apps.len() >= MAX_APPLICATIONS {
                apps.clear();
            }
        }
        apps.insert(app.to_owned(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(devices: usize) -> AsCache {
        AsCache::new(
            &CacheConfig {
                devices,
                ..Default::default()
            },
            CacheCounters::default(),
        )
    }

    fn entry(dev: &str) -> Arc<DeviceEntry> {
        Arc::new(DeviceEntry::new(
            AsDeviceRecord {
                ids: Some(v3::EndDeviceIdentifiers {
                    device_id: dev.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            1,
        ))
    }

    #[test]
    fn eviction_keeps_the_bound_and_spares_recently_used_entries() {
        for capacity in [1, 7, 100, 5000] {
            let c = cache(capacity);
            for i in 0..capacity * 3 {
                c.put_device(&format!("app/dev-{i}"), entry("x"));
                assert!(c.device_count() <= capacity, "capacity {capacity}");
            }
            assert_eq!(c.counters.devices.get() as usize, c.device_count());
        }
        // A hot entry survives a stream of one-off entries (second chance).
        let c = cache(8);
        c.put_device("app/hot", entry("hot"));
        for i in 0..100 {
            assert!(c.device("app/hot").is_some(), "evicted after {i} inserts");
            c.put_device(&format!("app/cold-{i}"), entry("cold"));
        }
        assert_eq!(c.device_count(), 8);
    }

    #[test]
    fn removal_keeps_the_index_consistent() {
        let c = cache(4);
        for i in 0..4 {
            c.put_device(&format!("a/{i}"), entry(&i.to_string()));
        }
        c.remove_device("a/0");
        c.remove_device("a/missing");
        assert!(c.device("a/0").is_none());
        for i in 1..4 {
            let e = c.device(&format!("a/{i}")).expect("kept");
            assert_eq!(e.record().ids.unwrap().device_id, i.to_string());
        }
        c.put_device("a/4", entry("4"));
        c.put_device("a/5", entry("5"));
        assert_eq!(c.device_count(), 4);
        assert_eq!(c.counters.devices.get(), 4);
    }

    #[test]
    fn the_documented_values_are_the_defaults() {
        // As in config/tern.toml's [application-server.cache] section.
        let c: CacheConfig = serde_json::from_value(serde_json::json!({
            "devices": 100000, "application-ttl": "2s", "device-max-age": "10m",
        }))
        .unwrap();
        assert_eq!(c, CacheConfig::default());
        let e = serde_json::from_value::<CacheConfig>(serde_json::json!({"entries": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("entries"), "{e}");
    }

    #[test]
    fn a_zero_capacity_caches_nothing() {
        let c = cache(0);
        c.put_device("a/b", entry("b"));
        assert!(c.device("a/b").is_none());
        assert_eq!(c.device_count(), 0);
    }

    #[test]
    fn application_settings_expire_after_the_ttl() {
        let c = AsCache::new(
            &CacheConfig {
                application_ttl: Duration::from_millis(1),
                ..Default::default()
            },
            CacheCounters::default(),
        );
        c.put_application(
            "app",
            Arc::new(AppEntry::new(Default::default(), Ok(FormatterKind::None))),
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.application("app").is_none());
        assert_eq!(c.counters.application_misses.get(), 1);
    }
}
