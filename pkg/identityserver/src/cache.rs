//! The hot-path registry cache (gateway by EUI, device by JoinEUI/DevEUI) and the
//! invalidation of every IS cache by the `is.*` events.
//!
//! Each change the IS makes is published as an event; every IS process subscribes to `is.*`
//! (through NATS when configured) and drops what the event may have changed. The TTL only
//! bounds the damage of a lost event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lorawan::Eui64;
use tern_api::v3;
use tern_cluster::links::{GsIs, LinkResult};
use tern_store::RegistryStore;

use crate::core::Core;

/// A cached lookup and when it was made.
type Cached<T> = (Option<T>, Instant);
/// JoinEUI and DevEUI.
type DeviceKey = ([u8; 8], [u8; 8]);

/// Cached lookups; `None` values (not registered) are cached too, so unknown gateways
/// knocking do not reach the store each time.
pub(crate) struct RegistryCache {
    ttl: Duration,
    gateways: Mutex<HashMap<[u8; 8], Cached<v3::Gateway>>>,
    devices: Mutex<HashMap<DeviceKey, Cached<v3::EndDeviceIdentifiers>>>,
}

impl RegistryCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            gateways: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
        }
    }

    fn fresh<T: Clone>(&self, entry: Option<&(T, Instant)>) -> Option<T> {
        entry
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    pub fn clear_gateways(&self) {
        self.gateways.lock().expect("gateway cache lock").clear();
    }

    pub fn clear_devices(&self) {
        self.devices.lock().expect("device cache lock").clear();
    }
}

impl Core {
    /// The gateway with this EUI, cached.
    pub async fn gateway_by_eui(
        &self,
        eui: [u8; 8],
    ) -> Result<Option<v3::Gateway>, tern_store::StoreError> {
        if let Some(hit) = self.registry.fresh(
            self.registry
                .gateways
                .lock()
                .expect("gateway cache lock")
                .get(&eui),
        ) {
            return Ok(hit);
        }
        let found = self
            .store
            .get_gateway_by_eui(Eui64(eui))
            .await?
            .map(|v| crate::grpc::strip_gateway(v.value));
        self.registry
            .gateways
            .lock()
            .expect("gateway cache lock")
            .insert(eui, (found.clone(), Instant::now()));
        Ok(found)
    }

    /// The identifiers of the device with these EUIs, cached.
    pub async fn device_by_euis(
        &self,
        join_eui: [u8; 8],
        dev_eui: [u8; 8],
    ) -> Result<Option<v3::EndDeviceIdentifiers>, tern_store::StoreError> {
        let key = (join_eui, dev_eui);
        if let Some(hit) = self.registry.fresh(
            self.registry
                .devices
                .lock()
                .expect("device cache lock")
                .get(&key),
        ) {
            return Ok(hit);
        }
        let found = self
            .store
            .get_end_device_by_euis(Eui64(join_eui), Eui64(dev_eui))
            .await?
            .and_then(|v| v.value.ids);
        self.registry
            .devices
            .lock()
            .expect("device cache lock")
            .insert(key, (found.clone(), Instant::now()));
        Ok(found)
    }
}

/// Drops what `event` may have changed from the caches of `core`.
pub(crate) fn invalidate(core: &Core, event: &v3::Event) {
    let name = event.name.as_str();
    if name.starts_with("is.gateway.") {
        core.registry.clear_gateways();
    } else if name.starts_with("is.end_device.") || name.starts_with("is.application.delete") {
        core.registry.clear_devices();
    }
    if name.starts_with("is.api_key.") {
        match event.data_as::<v3::ApiKey>() {
            Ok(Some(key)) if !key.id.is_empty() => core.keys.remove(&key.id),
            _ => core.keys.clear(),
        }
    } else if name.starts_with("is.user.") || name.ends_with(".delete") {
        // Admin flags, deleted entities and their keys: rare, so forget every key.
        core.keys.clear();
    }
}

/// Follows the `is.*` events of every process until the bus or `shutdown` ends it.
pub(crate) async fn follow(
    core: Arc<Core>,
    mut subscription: tern_events::Subscription,
    shutdown: tern_cluster::role::Shutdown,
) {
    loop {
        tokio::select! {
            received = subscription.recv() => match received {
                Ok(event) => invalidate(&core, &event),
                // Missed events: anything may have changed.
                Err(tern_events::RecvError::Lagged(_)) => {
                    core.keys.clear();
                    core.registry.clear_gateways();
                    core.registry.clear_devices();
                }
                Err(_) => return,
            },
            _ = shutdown.wait() => return,
        }
    }
}

/// The GS's view of the IS in this process: gateways by EUI, from the cache.
#[derive(Clone)]
pub struct IsGsLink(pub(crate) Arc<Core>);

#[async_trait]
impl GsIs for IsGsLink {
    async fn gateway_by_eui(&self, eui: [u8; 8]) -> LinkResult<Option<v3::Gateway>> {
        self.0
            .gateway_by_eui(eui)
            .await
            .map_err(crate::grpc::store_status)
    }
}
