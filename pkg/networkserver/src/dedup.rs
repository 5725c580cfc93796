//! Deduplication: copies of one frame from several gateways are merged into one uplink.
//!
//! The first copy opens a window keyed by the PHYPayload and starts one timer for it; later
//! copies add their rx metadata; when the timer fires, the merged uplink is handed on. After
//! the window the frame is remembered for a cooldown, so that late copies are counted as
//! duplicates instead of being processed a second time. The table is sharded by a hash of
//! the payload: no global lock on the device path.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use tern_api::v3;

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Vec<u8>, Window>>;

enum Window {
    /// Collecting copies.
    Open(v3::UplinkMessage),
    /// Processed; late copies until this instant are duplicates.
    Closed(Instant),
}

/// What happened to a copy.
#[derive(Debug)]
pub enum Admit {
    /// The first copy: a window opened; the caller closes it after the dedup window.
    Opened,
    /// Merged into an open window.
    Merged,
    /// The frame was already processed: a late duplicate.
    Late,
}

/// The deduplication table.
pub struct Dedup {
    hasher: RandomState,
    shards: Box<[Shard]>,
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

    fn shard(&self, raw: &[u8]) -> &Shard {
        &self.shards[self.hasher.hash_one(raw) as usize % SHARDS]
    }

    /// Adds one copy.
    pub fn admit(&self, uplink: v3::UplinkMessage) -> Admit {
        let mut shard = self.shard(&uplink.raw_payload).lock().expect("dedup lock");
        match shard.get_mut(&uplink.raw_payload) {
            Some(Window::Open(merged)) => {
                merged.rx_metadata.extend(uplink.rx_metadata);
                for id in uplink.correlation_ids {
                    if !merged.correlation_ids.contains(&id) {
                        merged.correlation_ids.push(id);
                    }
                }
                Admit::Merged
            }
            Some(Window::Closed(until)) if *until > Instant::now() => Admit::Late,
            _ => {
                shard.insert(uplink.raw_payload.clone(), Window::Open(uplink));
                Admit::Opened
            }
        }
    }

    /// Closes the window of `raw`: returns the merged uplink and remembers the frame until
    /// `until`.
    pub fn close(&self, raw: &[u8], until: Instant) -> Option<v3::UplinkMessage> {
        let mut shard = self.shard(raw).lock().expect("dedup lock");
        match shard.insert(raw.to_vec(), Window::Closed(until)) {
            Some(Window::Open(m)) => Some(m),
            _ => None,
        }
    }

    /// Forgets `raw` if its cooldown is over.
    pub fn expire(&self, raw: &[u8]) {
        let mut shard = self.shard(raw).lock().expect("dedup lock");
        if let Some(Window::Closed(until)) = shard.get(raw)
            && *until <= Instant::now()
        {
            shard.remove(raw);
        }
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
        assert!(matches!(d.admit(copy(b"abc", "a")), Admit::Opened));
        assert!(matches!(d.admit(copy(b"abc", "b")), Admit::Merged));
        assert!(matches!(d.admit(copy(b"xyz", "c")), Admit::Opened));
        let until = Instant::now() + Duration::from_secs(60);
        let merged = d.close(b"abc", until).unwrap();
        assert_eq!(merged.rx_metadata.len(), 2);
        assert!(matches!(d.admit(copy(b"abc", "c")), Admit::Late));
        d.close(b"abc", Instant::now());
        d.expire(b"abc");
        assert!(matches!(d.admit(copy(b"abc", "d")), Admit::Opened));
    }
}
