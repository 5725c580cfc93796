//! Deduplication: copies of one frame from several gateways are merged into one uplink.
//!
//! The first copy opens a window keyed by the PHYPayload; later copies add their rx
//! metadata; when the window closes (one closer task per NS closes them in opening order,
//! since every window is equally long), the merged uplink is handed on. After the window
//! the frame is remembered for a cooldown by a 64-bit keyed hash only, so that late copies
//! are counted as duplicates instead of being processed a second time, at a few dozen
//! bytes per frame. The table is sharded by that hash: no global lock on the device path.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use tern_api::v3;

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    /// Frames collecting copies.
    open: HashMap<Vec<u8>, v3::UplinkMessage>,
    /// Processed frames, by payload hash: until when late copies are duplicates.
    closed: HashMap<u64, Instant>,
    /// `closed` in closing order, which is also expiry order (one cooldown for all).
    expiry: VecDeque<(Instant, u64)>,
}

/// What happened to a copy.
#[derive(Debug)]
pub enum Admit {
    /// The first copy: a window opened for this payload; the caller closes it after the
    /// dedup window.
    Opened(Vec<u8>),
    /// Merged into an open window.
    Merged,
    /// The frame was already processed: a late duplicate.
    Late,
}

/// The deduplication table.
pub struct Dedup {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Dedup {
    fn default() -> Self {
        Self::new()
    }
}

impl Dedup {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The payload's hash (random keys: not predictable from outside) and its shard.
    fn shard(&self, raw: &[u8]) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(raw);
        (hash, &self.shards[hash as usize % SHARDS])
    }

    /// Adds one copy.
    pub fn admit(&self, uplink: v3::UplinkMessage) -> Admit {
        let (hash, shard) = self.shard(&uplink.raw_payload);
        let mut shard = shard.lock().expect("dedup lock");
        if let Some(merged) = shard.open.get_mut(&uplink.raw_payload) {
            merged.rx_metadata.extend(uplink.rx_metadata);
            for id in uplink.correlation_ids {
                if !merged.correlation_ids.contains(&id) {
                    merged.correlation_ids.push(id);
                }
            }
            return Admit::Merged;
        }
        if shard
            .closed
            .get(&hash)
            .is_some_and(|until| *until > Instant::now())
        {
            return Admit::Late;
        }
        let raw = uplink.raw_payload.clone();
        shard.open.insert(uplink.raw_payload.clone(), uplink);
        Admit::Opened(raw)
    }

    /// Closes the window of `raw`: returns the merged uplink and remembers the frame until
    /// `until`. Forgets the frames whose cooldown is over on the way.
    pub fn close(&self, raw: &[u8], until: Instant) -> Option<v3::UplinkMessage> {
        let (hash, shard) = self.shard(raw);
        let mut shard = shard.lock().expect("dedup lock");
        let now = Instant::now();
        while let Some(&(t, h)) = shard.expiry.front() {
            if t > now {
                break;
            }
            shard.expiry.pop_front();
            // Closed again since (a frame repeated after its cooldown): keep the later one.
            if shard.closed.get(&h).is_some_and(|u| *u <= now) {
                shard.closed.remove(&h);
            }
        }
        let merged = shard.open.remove(raw)?;
        shard.closed.insert(hash, until);
        shard.expiry.push_back((until, hash));
        Some(merged)
    }

    /// Frames remembered (open windows, cooldowns): for tests and metrics.
    pub fn len(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(o, c), s| {
            let s = s.lock().expect("dedup lock");
            (o + s.open.len(), c + s.closed.len())
        })
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn copy(raw: &[u8], gw: &str) -> v3::UplinkMessage {
        v3::UplinkMessage {
            raw_payload: raw.to_vec(),
            rx_metadata: vec![v3::RxMetadata {
                gateway_ids: Some(v3::GatewayIdentifiers::new(gw, None)),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn copies_merge_and_late_ones_are_duplicates() {
        let d = Dedup::new();
        assert!(matches!(d.admit(copy(b"abc", "a")), Admit::Opened(r) if r == b"abc"));
        assert!(matches!(d.admit(copy(b"abc", "b")), Admit::Merged));
        assert!(matches!(d.admit(copy(b"xyz", "c")), Admit::Opened(_)));
        let until = Instant::now() + Duration::from_secs(60);
        let merged = d.close(b"abc", until).unwrap();
        assert_eq!(merged.rx_metadata.len(), 2);
        assert!(matches!(d.admit(copy(b"abc", "c")), Admit::Late));
        // Closing twice hands nothing on twice.
        assert!(d.close(b"abc", until).is_none());
        assert_eq!(d.len(), (1, 1));
        let merged = d.close(b"xyz", Instant::now()).unwrap();
        assert_eq!(merged.rx_metadata.len(), 1);
        // Its cooldown is over: the same payload opens a new window.
        assert!(matches!(d.admit(copy(b"xyz", "d")), Admit::Opened(_)));
    }

    #[test]
    fn expired_cooldowns_are_forgotten_as_windows_close() {
        let d = Dedup::new();
        let past = Instant::now();
        for i in 0..1000u32 {
            let raw = i.to_be_bytes();
            assert!(matches!(d.admit(copy(&raw, "a")), Admit::Opened(_)));
            d.close(&raw, past).unwrap();
        }
        // Every shard forgets its expired frames when it closes the next window.
        for i in 1000..1200u32 {
            let raw = i.to_be_bytes();
            d.admit(copy(&raw, "a"));
            d.close(&raw, Instant::now() + Duration::from_secs(60));
        }
        let (open, closed) = d.len();
        assert_eq!(open, 0);
        assert!(closed < 1000, "{closed} remembered");
        assert!(closed >= 200);
    }
}
