//! Several Network Servers on one store.
//!
//! The Gateway Server routes each uplink to the instance owning its DevAddr (DevEUI for a
//! join), so a device has one writer at a time; but which instance that is changes when
//! instances come and go, and a device may be created or joined through another instance.
//! The in-memory table of an instance is therefore a cache of the store:
//!
//! - an index miss (DevAddr, device ID) reads the store and loads what it finds; DevAddrs
//!   the store has no device for are remembered briefly (bounded), so that a flood of
//!   unknown DevAddrs does not read the store per frame;
//! - a write that finds the stored version moved (another instance wrote the device since
//!   this one cached it) reloads the device; the uplink is then verified again, once;
//! - an uplink that no cached session verifies re-reads its DevAddr's devices (at most once
//!   per DevAddr and period), in case another instance changed a session.
//!
//! Replacing a cached device always happens under its lock, from a read made under that
//! lock, so a write of this instance is never undone by an older read.

use lorawan::DevAddr;
use tern_store::{NsDeviceRecord, NsDeviceStore, Versioned};
use tracing::{debug, warn};

use crate::devices::{Device, Slot};
use crate::server::Core;

/// What re-reading a device under its lock found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reloaded {
    /// The cached device is the stored one (or the store could not be read).
    Same,
    /// Another instance had written it: the cached device is now the stored one.
    Changed,
    /// It is no longer in the store (or no longer loads): removed from the index.
    Gone,
}

impl Core {
    /// The devices with a session on `addr`: from the index, else from the store (then
    /// cached).
    pub(crate) async fn candidates(&self, addr: DevAddr) -> Vec<Slot> {
        let cached = self.devices.by_dev_addr(addr);
        if !cached.is_empty() {
            return cached;
        }
        if self.devices.unknown().contains(addr) {
            self.devices.count_lookup("unknown_cached");
            return Vec::new();
        }
        match self.store.ns_devices_by_dev_addr(addr).await {
            Ok(found) if found.is_empty() => {
                self.devices.unknown().insert(addr);
                self.devices.count_lookup("unknown");
            }
            Ok(found) => {
                self.devices.count_lookup("loaded");
                for v in found {
                    let _ = self.adopt(v).await;
                }
            }
            Err(e) => {
                self.devices.count_lookup("store_error");
                warn!(%addr, error = %e, "cannot look the DevAddr up in the store");
            }
        }
        self.devices.by_dev_addr(addr)
    }

    /// After no cached session verified an uplink of `addr`: re-reads the devices of `addr`
    /// from the store (at most once per DevAddr and period). True when a cached device
    /// changed or a new one appeared, so that verifying again may succeed.
    pub(crate) async fn refresh_dev_addr(&self, addr: DevAddr) -> bool {
        if self.devices.refreshed().contains(addr) {
            return false;
        }
        self.devices.refreshed().insert(addr);
        let found = match self.store.ns_devices_by_dev_addr(addr).await {
            Ok(found) => found,
            Err(e) => {
                self.devices.count_lookup("store_error");
                warn!(%addr, error = %e, "cannot look the DevAddr up in the store");
                return false;
            }
        };
        let mut changed = false;
        let mut seen = Vec::new();
        for v in found {
            if let Some((slot, c)) = self.adopt(v).await {
                changed |= c;
                seen.push(slot);
            }
        }
        // Cached devices the store no longer has on this DevAddr: their sessions moved.
        for slot in self.devices.by_dev_addr(addr) {
            if seen.iter().any(|s| Slot::ptr_eq(s, &slot)) {
                continue;
            }
            let mut dev = slot.lock().await;
            changed |= self.reload_locked(&slot, &mut dev).await != Reloaded::Same;
        }
        self.devices
            .count_lookup(if changed { "refreshed" } else { "up_to_date" });
        changed
    }

    /// Puts a stored device into the index: inserted when not cached, else the cached one is
    /// re-read under its lock if it differs. Returns its slot and whether the cache changed;
    /// `None` when the record does not load (logged).
    pub(crate) async fn adopt(&self, stored: Versioned<NsDeviceRecord>) -> Option<(Slot, bool)> {
        let fresh = match Device::load(stored.value, stored.version, &self.vault) {
            Ok(d) => d,
            Err(e) => {
                self.devices.count_lookup("unloadable");
                warn!(error = %e, "stored NS device does not load");
                return None;
            }
        };
        let key = fresh.key();
        if let Some(slot) = self.devices.get(&key) {
            let mut dev = slot.lock().await;
            if dev.version == fresh.version && dev.record == fresh.record {
                return Some((slot.clone(), false));
            }
            // Re-read under the lock: `fresh` may be older than a write made meanwhile.
            let r = self.reload_locked(&slot, &mut dev).await;
            return (r != Reloaded::Gone).then(|| (slot.clone(), r == Reloaded::Changed));
        }
        let slot = self.devices.insert(fresh.clone());
        let mut dev = slot.lock().await;
        if dev.version == fresh.version && dev.record == fresh.record {
            return Some((slot.clone(), true));
        }
        // Inserted by someone else between the lookup and the insert.
        let r = self.reload_locked(&slot, &mut dev).await;
        (r != Reloaded::Gone).then(|| (slot.clone(), true))
    }

    /// Re-reads a device whose lock the caller holds and replaces the cached copy with the
    /// stored one when they differ (re-indexing its DevAddrs).
    pub(crate) async fn reload_locked(&self, slot: &Slot, dev: &mut Device) -> Reloaded {
        let ids = dev.ids();
        let app = ids
            .application_ids
            .as_ref()
            .map(|a| a.application_id.clone())
            .unwrap_or_default();
        let key = dev.key();
        let stored = match self.store.get_ns_device(&app, &ids.device_id).await {
            Ok(s) => s,
            Err(e) => {
                self.devices.count_lookup("store_error");
                warn!(device = %key, error = %e, "cannot re-read the device from the store");
                return Reloaded::Same;
            }
        };
        let fresh = match stored.map(|v| Device::load(v.value, v.version, &self.vault)) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                warn!(device = %key, error = %e, "stored NS device does not load: forgotten");
                self.devices.remove(&key, &dev.dev_addrs());
                self.devices.count_lookup("unloadable");
                return Reloaded::Gone;
            }
            None => {
                debug!(device = %key, "device deleted through another instance: forgotten");
                self.devices.remove(&key, &dev.dev_addrs());
                self.devices.count_lookup("deleted");
                return Reloaded::Gone;
            }
        };
        if fresh.version == dev.version && fresh.record == dev.record {
            return Reloaded::Same;
        }
        let old = dev.dev_addrs();
        *dev = fresh;
        self.devices.reindex(&key, &old, &dev.dev_addrs(), slot);
        self.devices.count_lookup("reloaded");
        Reloaded::Changed
    }

    /// The device `application_id/device_id`, read from the store (queue operations are
    /// rare: always the stored version, so that another instance's counters are seen).
    pub(crate) async fn device_by_key(&self, app: &str, device_id: &str) -> Option<Slot> {
        let key = format!("{app}/{device_id}");
        if let Some(slot) = self.devices.get(&key) {
            let mut dev = slot.lock().await;
            return match self.reload_locked(&slot, &mut dev).await {
                Reloaded::Gone => None,
                _ => Some(slot.clone()),
            };
        }
        match self.store.get_ns_device(app, device_id).await {
            Ok(Some(v)) => {
                self.devices.count_lookup("loaded");
                self.adopt(v).await.map(|(slot, _)| slot)
            }
            Ok(None) => None,
            Err(e) => {
                self.devices.count_lookup("store_error");
                warn!(device = %key, error = %e, "cannot read the device from the store");
                None
            }
        }
    }
}
