//! `JsEndDeviceRegistry`: the root keys of devices.
//!
//! Reading a device needs `application:devices:read`, reading its root keys also
//! `application:devices:read-keys`; writing and deleting need `application:devices:write`.
//! Keys are accepted in clear or wrapped under a configured KEK, and returned in clear
//! (to callers allowed to read keys).

use std::sync::Arc;

use async_trait::async_trait;
use lorawan::{Aes128Key, Eui64};
use pbjson_types::Empty;
use tern_api::FieldMask;
use tern_api::v3;
use tern_cluster::auth::{Entity, require};
use tern_store::kv::{Batch, Expect};
use tern_store::{JoinStore, JsDeviceRecord, Versioned};
use tonic::{Code, Request, Response, Status};

use crate::error::store_status;
use crate::join::{REJOIN_STATE, RejoinState};
use crate::seal::{self, RootKeys};
use crate::{Inner, RIGHT_READ, RIGHT_READ_KEYS, RIGHT_WRITE};

/// The Join Server's fields of `EndDevice`, as `Set` accepts them in its field mask
/// (`ids…` paths are accepted and ignored: the identifiers are always written).
const SETTABLE: &[&str] = &[
    "root_keys",
    "root_keys.app_key",
    "root_keys.nwk_key",
    "lorawan_version",
];

/// Serves `tern.v3.JsEndDeviceRegistry`.
pub(crate) struct Registry(pub Arc<Inner>);

fn result_label(result: &Result<impl Sized, Status>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(s) => match s.code() {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::Unauthenticated => "unauthenticated",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unavailable => "unavailable",
            _ => "error",
        },
    }
}

fn application_id(ids: &v3::EndDeviceIdentifiers, field: &str) -> Result<String, Status> {
    let app = ids
        .application_ids
        .as_ref()
        .map(|a| a.application_id.clone())
        .unwrap_or_default();
    if app.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}.application_ids.application_id: required"
        )));
    }
    Ok(app)
}

fn euis(ids: &v3::EndDeviceIdentifiers, field: &str) -> Result<(Eui64, Eui64), Status> {
    let bad = |e: tern_api::convert::ConvertError| Status::invalid_argument(format!("{field}.{e}"));
    let join_eui = ids
        .join_eui()
        .map_err(bad)?
        .ok_or_else(|| Status::invalid_argument(format!("{field}.join_eui: required")))?;
    let dev_eui = ids
        .dev_eui()
        .map_err(bad)?
        .ok_or_else(|| Status::invalid_argument(format!("{field}.dev_eui: required")))?;
    Ok((join_eui, dev_eui))
}

fn record_euis(record: &JsDeviceRecord) -> Result<(Eui64, Eui64), Status> {
    let ids = record.ids.clone().unwrap_or_default();
    euis(&ids, "stored ids").map_err(|e| Status::data_loss(e.message().to_owned()))
}

fn wants_keys(mask: Option<&FieldMask>) -> bool {
    mask.is_some_and(|m| {
        m.paths
            .iter()
            .any(|p| p == "root_keys" || p.starts_with("root_keys."))
    })
}

impl Registry {
    fn inner(&self) -> &Inner {
        &self.0
    }

    /// The device named by `ids`: by device ID, else by EUIs (then it must belong to the
    /// named application).
    async fn find(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        app: &str,
        field: &str,
    ) -> Result<Versioned<JsDeviceRecord>, Status> {
        let store = &self.inner().store;
        let found = if !ids.device_id.is_empty() {
            store
                .get_js_device_by_id(app, &ids.device_id)
                .await
                .map_err(store_status)?
        } else {
            let (join_eui, dev_eui) = euis(ids, field)?;
            store
                .get_js_device(join_eui, dev_eui)
                .await
                .map_err(store_status)?
                .filter(|r| {
                    r.value
                        .ids
                        .as_ref()
                        .and_then(|i| i.application_ids.as_ref())
                        .is_some_and(|a| a.application_id == app)
                })
        };
        found.ok_or_else(|| {
            Status::not_found(format!(
                "device {app}/{} not found on the Join Server",
                ids.device_id
            ))
        })
    }

    fn to_end_device(
        &self,
        record: &JsDeviceRecord,
        with_keys: bool,
    ) -> Result<v3::EndDevice, Status> {
        to_end_device(self.inner(), record, with_keys)
    }
}

/// The Join Server's view of a device; root keys in clear when asked for.
fn to_end_device(
    inner: &Inner,
    record: &JsDeviceRecord,
    with_keys: bool,
) -> Result<v3::EndDevice, Status> {
    let mut device = v3::EndDevice {
        ids: record.ids.clone(),
        lorawan_version: record.lorawan_version,
        ..Default::default()
    };
    if with_keys {
        let (join_eui, dev_eui) = record_euis(record)?;
        let keys = seal::open_root_keys(
            &inner.config.root_kek,
            &record.encrypted_root_keys,
            join_eui,
            dev_eui,
        )
        .map_err(|e| Status::internal(format!("root keys of {dev_eui}: {e}")))?;
        device.root_keys = Some(v3::RootKeys {
            app_key: keys.app_key.map(v3::KeyEnvelope::clear),
            nwk_key: keys.nwk_key.map(v3::KeyEnvelope::clear),
        });
    }
    Ok(device)
}

/// A key from its envelope: clear, or wrapped under a configured KEK; `None` to remove.
fn envelope_key(
    inner: &Inner,
    envelope: Option<&v3::KeyEnvelope>,
    field: &str,
) -> Result<Option<Aes128Key>, Status> {
    let Some(env) = envelope else {
        return Ok(None);
    };
    if env.is_wrapped() {
        let kek = inner.config.keks.get(&env.kek_label).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{field}.kek_label: no KEK {:?} is configured on the Join Server",
                env.kek_label
            ))
        })?;
        return kek
            .unwrap_key(&env.encrypted_key)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("{field}.encrypted_key: {e}")));
    }
    env.clear_key()
        .map_err(|e| Status::invalid_argument(format!("{field}.{e}")))
}

impl Registry {
    async fn get(
        &self,
        request: Request<v3::GetEndDeviceRequest>,
    ) -> Result<v3::EndDevice, Status> {
        self.inner().check_started()?;
        let req = request.get_ref();
        let ids = req
            .end_device_ids
            .clone()
            .ok_or_else(|| Status::invalid_argument("end_device_ids: required"))?;
        let app = application_id(&ids, "end_device_ids")?;
        let entity = Entity::Application(app.clone());
        let with_keys = wants_keys(req.field_mask.as_ref());
        require(&request, &entity, RIGHT_READ)
            .await
            .map_err(Status::from)?;
        if with_keys {
            require(&request, &entity, RIGHT_READ_KEYS)
                .await
                .map_err(Status::from)?;
        }
        let record = self.find(&ids, &app, "end_device_ids").await?;
        self.to_end_device(&record.value, with_keys)
    }

    async fn set(
        &self,
        request: Request<v3::UpdateEndDeviceRequest>,
    ) -> Result<v3::EndDevice, Status> {
        self.inner().check_started()?;
        let req = request.get_ref();
        let device = req
            .end_device
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("end_device: required"))?;
        let ids = device
            .ids
            .clone()
            .ok_or_else(|| Status::invalid_argument("end_device.ids: required"))?;
        let app = application_id(&ids, "end_device.ids")?;
        require(&request, &Entity::Application(app.clone()), RIGHT_WRITE)
            .await
            .map_err(Status::from)?;
        let mask = req.field_mask.clone();
        self.0.set_device(device.clone(), mask).await
    }

    async fn delete(&self, request: Request<v3::EndDeviceIdentifiers>) -> Result<Empty, Status> {
        self.inner().check_started()?;
        let ids = request.get_ref().clone();
        let app = application_id(&ids, "end_device_ids")?;
        require(&request, &Entity::Application(app.clone()), RIGHT_WRITE)
            .await
            .map_err(Status::from)?;
        let record = self.find(&ids, &app, "end_device_ids").await?;
        let (join_eui, dev_eui) = record_euis(&record.value)?;
        let store = &self.inner().store;
        store
            .delete_js_device(join_eui, dev_eui)
            .await
            .map_err(store_status)?;
        // Its rejoin state goes too, when it is this device's.
        if let Some(r) = store
            .get(&REJOIN_STATE, &dev_eui.to_string())
            .await
            .map_err(store_status)?
        {
            let state =
                <RejoinState as prost::Message>::decode(r.value.as_slice()).unwrap_or_default();
            if state.join_eui == join_eui.0 {
                let mut batch = Batch::new();
                batch.delete(&REJOIN_STATE, r.key, Expect::Version(r.version));
                // A concurrent rejoin wrote it: that session is gone with the device anyway.
                let _ = store.commit(batch).await;
            }
        }
        Ok(Empty {})
    }
}

#[async_trait]
impl v3::js_end_device_registry_server::JsEndDeviceRegistry for Registry {
    async fn get(
        &self,
        request: Request<v3::GetEndDeviceRequest>,
    ) -> Result<Response<v3::EndDevice>, Status> {
        let result = Registry::get(self, request).await;
        self.inner().metrics.registry("get", result_label(&result));
        result.map(Response::new)
    }

    async fn set(
        &self,
        request: Request<v3::UpdateEndDeviceRequest>,
    ) -> Result<Response<v3::EndDevice>, Status> {
        let result = Registry::set(self, request).await;
        self.inner().metrics.registry("set", result_label(&result));
        result.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<v3::EndDeviceIdentifiers>,
    ) -> Result<Response<Empty>, Status> {
        let result = Registry::delete(self, request).await;
        self.inner()
            .metrics
            .registry("delete", result_label(&result));
        result.map(Response::new)
    }
}

impl Inner {
    /// Creates or updates the Join Server's fields of a device (those in `mask`), without
    /// a rights check: the gRPC service checks rights first; in-process callers own theirs.
    pub(crate) async fn set_device(
        &self,
        device: v3::EndDevice,
        mask: Option<FieldMask>,
    ) -> Result<v3::EndDevice, Status> {
        let ids = device
            .ids
            .clone()
            .ok_or_else(|| Status::invalid_argument("end_device.ids: required"))?;
        let app = application_id(&ids, "end_device.ids")?;
        if ids.device_id.is_empty() {
            return Err(Status::invalid_argument(
                "end_device.ids.device_id: required",
            ));
        }
        let (join_eui, dev_eui) = euis(&ids, "end_device.ids")?;
        let mask = mask.filter(|m| !m.paths.is_empty()).ok_or_else(|| {
            Status::invalid_argument(format!(
                "field_mask: required; the Join Server's fields are {}",
                SETTABLE.join(", ")
            ))
        })?;
        if let Some(bad) = mask
            .paths
            .iter()
            .find(|p| !SETTABLE.contains(&p.as_str()) && *p != "ids" && !p.starts_with("ids."))
        {
            return Err(Status::invalid_argument(format!(
                "field_mask: {bad:?} is not a Join Server field; the Join Server's fields are {}",
                SETTABLE.join(", ")
            )));
        }
        if mask.covers("lorawan_version")
            && v3::MacVersion::try_from(device.lorawan_version).is_err()
        {
            return Err(Status::invalid_argument(format!(
                "end_device.lorawan_version: unknown value {}",
                device.lorawan_version
            )));
        }
        let served = &self.config.join_euis;
        if !served.is_empty() && !served.iter().any(|p| p.matches(join_eui)) {
            return Err(Status::invalid_argument(format!(
                "end_device.ids.join_eui: {join_eui} is not served by this Join Server \
                 (join-server.join-euis)"
            )));
        }
        // Keys from the request first: bad input changes nothing.
        let root_keys = device.root_keys.clone().unwrap_or_default();
        let app_key = if mask.covers("root_keys.app_key") {
            Some(envelope_key(
                self,
                root_keys.app_key.as_ref(),
                "end_device.root_keys.app_key",
            )?)
        } else {
            None
        };
        let nwk_key = if mask.covers("root_keys.nwk_key") {
            Some(envelope_key(
                self,
                root_keys.nwk_key.as_ref(),
                "end_device.root_keys.nwk_key",
            )?)
        } else {
            None
        };

        let store = &self.store;
        if let Some(by_id) = store
            .get_js_device_by_id(&app, &ids.device_id)
            .await
            .map_err(store_status)?
        {
            let stored = record_euis(&by_id.value)?;
            if stored != (join_eui, dev_eui) {
                return Err(Status::failed_precondition(format!(
                    "device {app}/{} has JoinEUI {} DevEUI {} on the Join Server; delete it \
                     before changing its EUIs",
                    ids.device_id, stored.0, stored.1
                )));
            }
        }
        let existing = store
            .get_js_device(join_eui, dev_eui)
            .await
            .map_err(store_status)?;
        if let Some(e) = &existing {
            let other = e.value.ids.clone().unwrap_or_default();
            let other_app = other
                .application_ids
                .map(|a| a.application_id)
                .unwrap_or_default();
            if other_app != app || other.device_id != ids.device_id {
                return Err(Status::already_exists(format!(
                    "JoinEUI {join_eui} DevEUI {dev_eui} is taken by another device on the \
                     Join Server"
                )));
            }
        }
        let kek = &self.config.root_kek;
        let mut keys = match &existing {
            Some(e) => {
                seal::open_root_keys(kek, &e.value.encrypted_root_keys, join_eui, dev_eui)
                    .map_err(|e| Status::internal(format!("stored root keys of {dev_eui}: {e}")))?
            }
            None => RootKeys::default(),
        };
        if let Some(k) = app_key {
            keys.app_key = k;
        }
        if let Some(k) = nwk_key {
            keys.nwk_key = k;
        }
        let lorawan_version = if mask.covers("lorawan_version") {
            device.lorawan_version
        } else {
            existing.as_ref().map_or(0, |e| e.value.lorawan_version)
        };
        let record = JsDeviceRecord {
            ids: Some(v3::EndDeviceIdentifiers {
                dev_addr: Vec::new(),
                ..ids
            }),
            encrypted_root_keys: seal::seal_root_keys(kek, &keys, join_eui, dev_eui),
            lorawan_version,
        };
        let expect = existing
            .as_ref()
            .map_or(Expect::Absent, |e| Expect::Version(e.version));
        store
            .set_js_device(&record, expect)
            .await
            .map_err(store_status)?;
        to_end_device(self, &record, false)
    }
}
