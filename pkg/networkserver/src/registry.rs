//! The NS part of the device registry: MAC settings, version, frequency plan and session.
//! Writes go to the store and to the in-memory table under the device's lock, so that the
//! uplink path never sees a half-updated device.

use std::sync::Arc;

use prost::Message;
use tern_api::v3;
use tern_cluster::auth::{Entity, require};
use tern_store::{Expect, NsDeviceRecord, NsDeviceStore, StoreError};
use tonic::{Request, Response, Status};

use crate::devices::{Device, NsState};
use crate::server::Core;

/// The top-level fields of `EndDevice` the NS keeps.
const FIELDS: &[&str] = &[
    "ids",
    "frequency_plan_id",
    "lorawan_version",
    "lorawan_phy_version",
    "supports_join",
    "supports_class_b",
    "supports_class_c",
    "session",
    "mac_settings",
    "name",
    "attributes",
];

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } => {
            Status::aborted(e.to_string())
        }
        StoreError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

fn ids_of(ids: Option<&v3::EndDeviceIdentifiers>) -> Result<(String, String), Status> {
    let ids = ids.ok_or_else(|| Status::invalid_argument("end_device_ids: required"))?;
    let app = ids
        .application_ids
        .as_ref()
        .map(|a| a.application_id.clone())
        .unwrap_or_default();
    if app.is_empty() {
        return Err(Status::invalid_argument(
            "ids.application_ids.application_id: required",
        ));
    }
    if ids.device_id.is_empty() {
        return Err(Status::invalid_argument("ids.device_id: required"));
    }
    Ok((app, ids.device_id.clone()))
}

fn strip_keys(mut d: v3::EndDevice) -> v3::EndDevice {
    if let Some(k) = d.session.as_mut().and_then(|s| s.keys.as_mut()) {
        let id = k.session_key_id.clone();
        *k = v3::SessionKeys {
            session_key_id: id,
            ..Default::default()
        };
    }
    d
}

impl Core {
    /// Creates or updates the NS fields of a device named in `paths` (top-level field names
    /// of `EndDevice`, e.g. `session`, `mac_settings`).
    pub async fn set_device(
        &self,
        update: v3::EndDevice,
        paths: &[String],
    ) -> Result<v3::EndDevice, Status> {
        let (app, dev_id) = ids_of(update.ids.as_ref())?;
        if paths.is_empty() {
            return Err(Status::invalid_argument(
                "field_mask: name the fields to set (e.g. \"session,mac_settings\")",
            ));
        }
        for p in paths {
            let top = p.split('.').next().unwrap_or("");
            if !FIELDS.contains(&top) {
                return Err(Status::invalid_argument(format!(
                    "field_mask: {p:?} is not a field the Network Server keeps (one of {})",
                    FIELDS.join(", ")
                )));
            }
        }
        let covers = |f: &str| {
            paths
                .iter()
                .any(|p| p == f || p.starts_with(&format!("{f}.")))
        };
        let key = format!("{app}/{dev_id}");
        let existing = self.devices.get(&key);
        let mut guard = match &existing {
            Some(slot) => Some(slot.clone().lock_owned().await),
            None => None,
        };
        // Always the stored version: another Network Server instance sharing the store may
        // have written the device since this one cached it.
        let (mut record, version) = match self
            .store
            .get_ns_device(&app, &dev_id)
            .await
            .map_err(store_status)?
        {
            Some(v) => (v.value, Some(v.version)),
            None => (NsDeviceRecord::default(), None),
        };
        let stored_state = NsState::decode(record.state.as_slice()).unwrap_or_default();
        let mut device = record.device.take().unwrap_or_default();
        if device.ids.is_none() || covers("ids") {
            let mut ids = update.ids.clone().unwrap_or_default();
            if !covers("ids")
                && let Some(old) = device.ids.as_ref()
            {
                ids = old.clone();
            }
            device.ids = Some(ids);
        }
        if covers("frequency_plan_id") {
            if band::FrequencyPlan::by_id(&update.frequency_plan_id).is_none() {
                return Err(Status::invalid_argument(format!(
                    "frequency_plan_id: unknown frequency plan {:?}",
                    update.frequency_plan_id
                )));
            }
            device.frequency_plan_id = update.frequency_plan_id.clone();
        }
        if covers("lorawan_version") {
            if update.lorawan_version == v3::MacVersion::Unknown as i32 {
                return Err(Status::invalid_argument("lorawan_version: required"));
            }
            device.lorawan_version = update.lorawan_version;
        }
        if covers("lorawan_phy_version") {
            device.lorawan_phy_version = update.lorawan_phy_version;
        }
        if covers("supports_join") {
            device.supports_join = update.supports_join;
        }
        if covers("supports_class_b") {
            device.supports_class_b = update.supports_class_b;
        }
        if covers("supports_class_c") {
            device.supports_class_c = update.supports_class_c;
        }
        if covers("mac_settings") {
            device.mac_settings = update.mac_settings;
        }
        if covers("name") {
            device.name = update.name.clone();
        }
        if covers("attributes") {
            device.attributes = update.attributes.clone();
        }
        let session_changed = covers("session");
        if session_changed {
            if let Some(s) = update.session.as_ref()
                && s.keys
                    .as_ref()
                    .and_then(|k| k.app_s_key.as_ref())
                    .is_some_and(|k| !k.is_wrapped())
            {
                return Err(Status::invalid_argument(
                    "session.keys.app_s_key: the Network Server keeps the AppSKey only \
                         wrapped; give it to the Application Server",
                ));
            }
            device.session = update.session.clone();
        }
        let v1_1 = device.lorawan_version == v3::MacVersion::MacV11 as i32;
        if let Some(s) = device.session.as_ref() {
            self.vault
                .session(s, v1_1)
                .map_err(Status::invalid_argument)?;
        }
        if !device.supports_join && device.session.is_none() {
            return Err(Status::invalid_argument(
                "session: required for a device that does not join (ABP)",
            ));
        }
        record.device = Some(device);
        let mut state = stored_state;
        if session_changed {
            let s = record
                .device
                .as_ref()
                .and_then(|d| d.session.clone())
                .unwrap_or_default();
            state = NsState {
                f_cnt_up_seen: s.last_f_cnt_up > 0,
                next_n_f_cnt_down: s.last_n_f_cnt_down,
                next_a_f_cnt_down: s.last_a_f_cnt_down,
                next_a_f_cnt_down_air: s.last_a_f_cnt_down,
                ..NsState::default()
            };
        } else if covers("mac_settings") || covers("frequency_plan_id") {
            // The MAC state follows the new settings from the next uplink on.
            state.mac.clear();
        }
        record.state = prost::Message::encode_to_vec(&state);
        let expect = version.map_or(Expect::Absent, Expect::Version);
        let new_version = self
            .store
            .set_ns_device(&record, expect)
            .await
            .map_err(store_status)?;
        let loaded = Device::load(record.clone(), new_version, &self.vault)
            .map_err(Status::invalid_argument)?;
        match guard.as_mut() {
            Some(d) => {
                let old = d.dev_addrs();
                let new = loaded.dev_addrs();
                **d = loaded;
                if let Some(slot) = existing.as_ref() {
                    self.devices.reindex(&key, &old, &new, slot);
                }
            }
            None => {
                self.devices.insert(loaded);
            }
        }
        Ok(record.device.unwrap_or_default())
    }

    /// The NS fields of a device; session keys only with `with_keys`.
    pub async fn get_device(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        with_keys: bool,
    ) -> Result<v3::EndDevice, Status> {
        let (app, dev_id) = ids_of(Some(ids))?;
        // The store, not the cache: another instance may have written the device.
        let device = self
            .store
            .get_ns_device(&app, &dev_id)
            .await
            .map_err(store_status)?
            .and_then(|v| v.value.device)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "device {dev_id:?} of application {app:?} is not on this Network Server"
                ))
            })?;
        Ok(if with_keys {
            device
        } else {
            strip_keys(device)
        })
    }

    /// Deletes a device, its sessions and its queue.
    pub async fn delete_device(&self, ids: &v3::EndDeviceIdentifiers) -> Result<(), Status> {
        let (app, dev_id) = ids_of(Some(ids))?;
        let key = format!("{app}/{dev_id}");
        let slot = self.devices.get(&key);
        let guard = match &slot {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        self.store
            .delete_ns_device(&app, &dev_id, Expect::Exists)
            .await
            .map_err(store_status)?;
        if let Some(d) = guard {
            self.devices.remove(&key, &d.dev_addrs());
        }
        Ok(())
    }
}

/// Serves `tern.v3.NsEndDeviceRegistry`.
pub(crate) struct RegistryService(pub Arc<Core>);

fn app_entity(ids: Option<&v3::EndDeviceIdentifiers>) -> Entity {
    Entity::Application(
        ids.and_then(|i| i.application_ids.as_ref())
            .map(|a| a.application_id.clone())
            .unwrap_or_default(),
    )
}

#[tonic::async_trait]
impl v3::ns_end_device_registry_server::NsEndDeviceRegistry for RegistryService {
    async fn get(
        &self,
        request: Request<v3::GetEndDeviceRequest>,
    ) -> Result<Response<v3::EndDevice>, Status> {
        let entity = app_entity(request.get_ref().end_device_ids.as_ref());
        require(&request, &entity, "application:devices:read").await?;
        let with_keys = request.get_ref().field_mask.as_ref().is_some_and(|m| {
            m.paths
                .iter()
                .any(|p| p == "session" || p.starts_with("session.keys"))
        });
        if with_keys {
            require(&request, &entity, "application:devices:read-keys").await?;
        }
        let ids = request.into_inner().end_device_ids.unwrap_or_default();
        Ok(Response::new(self.0.get_device(&ids, with_keys).await?))
    }

    async fn set(
        &self,
        request: Request<v3::UpdateEndDeviceRequest>,
    ) -> Result<Response<v3::EndDevice>, Status> {
        let entity = app_entity(
            request
                .get_ref()
                .end_device
                .as_ref()
                .and_then(|d| d.ids.as_ref()),
        );
        require(&request, &entity, "application:devices:write").await?;
        let r = request.into_inner();
        let paths = r.field_mask.map(|m| m.paths).unwrap_or_default();
        let device = r
            .end_device
            .ok_or_else(|| Status::invalid_argument("end_device: required"))?;
        Ok(Response::new(strip_keys(
            self.0.set_device(device, &paths).await?,
        )))
    }

    async fn delete(
        &self,
        request: Request<v3::EndDeviceIdentifiers>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let entity = app_entity(Some(request.get_ref()));
        require(&request, &entity, "application:devices:write").await?;
        self.0.delete_device(request.get_ref()).await?;
        Ok(Response::new(pbjson_types::Empty {}))
    }
}
