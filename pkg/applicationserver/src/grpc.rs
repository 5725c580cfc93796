//! The public gRPC API of the AS: the downlink queue (`AppAs`), the AS part of devices
//! (`AsEndDeviceRegistry`: ABP AppSKey, formatters) and formatter management (`AsFormatters`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lorawan::Aes128Key;
use tern_api::v3;
use tern_cluster::auth::{Entity, require};
use tern_store::{AsDeviceRecord, AsSession, AsStore, Expect};
use tonic::{Request, Response, Status};

use crate::core::{AsCore, QueueOp, formatter_kind, store_status};
use crate::mqtt::{RIGHT_TRAFFIC_DOWN_WRITE, RIGHT_TRAFFIC_READ};

/// Reading an application's devices.
pub const RIGHT_DEVICES_READ: &str = "application:devices:read";
/// Reading the keys of an application's devices.
pub const RIGHT_DEVICES_READ_KEYS: &str = "application:devices:read-keys";
/// Writing an application's devices.
pub const RIGHT_DEVICES_WRITE: &str = "application:devices:write";
/// Reading an application.
pub const RIGHT_APPLICATION_INFO: &str = "application:info";
/// Changing an application's settings.
pub const RIGHT_SETTINGS_BASIC: &str = "application:settings";

/// The gRPC services, sharing the AS core; they answer `UNAVAILABLE` until the role started.
#[derive(Clone)]
pub struct AsApi {
    core: Arc<AsCore>,
    started: Arc<AtomicBool>,
    kek: Option<(String, Aes128Key)>,
}

impl AsApi {
    /// The services over `core`; `kek` wraps the ABP AppSKeys set in clear.
    pub fn new(
        core: Arc<AsCore>,
        started: Arc<AtomicBool>,
        kek: Option<(String, Aes128Key)>,
    ) -> Self {
        Self { core, started, kek }
    }

    fn ready(&self) -> Result<(), Status> {
        if self.started.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::unavailable("the Application Server is starting"))
        }
    }
}

fn app_entity(application_id: &str) -> Result<Entity, Status> {
    if application_id.is_empty() {
        return Err(Status::invalid_argument(
            "application_ids.application_id: required",
        ));
    }
    Ok(Entity::Application(application_id.to_owned()))
}

fn device_ids(
    ids: Option<&v3::EndDeviceIdentifiers>,
    field: &str,
) -> Result<(v3::EndDeviceIdentifiers, Entity), Status> {
    let ids = ids
        .cloned()
        .ok_or_else(|| Status::invalid_argument(format!("{field}: required")))?;
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
    if ids.device_id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}.device_id: required"
        )));
    }
    Ok((ids, Entity::Application(app)))
}

fn app_id(ids: &v3::EndDeviceIdentifiers) -> &str {
    ids.application_ids
        .as_ref()
        .map(|a| a.application_id.as_str())
        .unwrap_or("")
}

#[tonic::async_trait]
impl v3::app_as_server::AppAs for AsApi {
    async fn downlink_queue_push(
        &self,
        request: Request<v3::DownlinkQueueRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        self.ready()?;
        let (ids, entity) =
            device_ids(request.get_ref().end_device_ids.as_ref(), "end_device_ids")?;
        require(&request, &entity, RIGHT_TRAFFIC_DOWN_WRITE).await?;
        let downlinks = request.into_inner().downlinks;
        self.core.queue(&ids, QueueOp::Push, downlinks).await?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn downlink_queue_replace(
        &self,
        request: Request<v3::DownlinkQueueRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        self.ready()?;
        let (ids, entity) =
            device_ids(request.get_ref().end_device_ids.as_ref(), "end_device_ids")?;
        require(&request, &entity, RIGHT_TRAFFIC_DOWN_WRITE).await?;
        let downlinks = request.into_inner().downlinks;
        self.core.queue(&ids, QueueOp::Replace, downlinks).await?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn downlink_queue_list(
        &self,
        request: Request<v3::EndDeviceIdentifiers>,
    ) -> Result<Response<v3::ApplicationDownlinks>, Status> {
        self.ready()?;
        let (ids, entity) = device_ids(Some(request.get_ref()), "end_device_ids")?;
        require(&request, &entity, RIGHT_TRAFFIC_READ).await?;
        let downlinks = self.core.list(&ids).await?;
        Ok(Response::new(v3::ApplicationDownlinks { downlinks }))
    }
}

fn session_out(s: &AsSession, with_keys: bool) -> v3::Session {
    v3::Session {
        dev_addr: s.dev_addr.clone(),
        keys: Some(v3::SessionKeys {
            session_key_id: s.session_key_id.clone(),
            app_s_key: if with_keys { s.app_s_key.clone() } else { None },
            ..Default::default()
        }),
        last_a_f_cnt_down: s.last_a_f_cnt_down,
        ..Default::default()
    }
}

/// The AS fields of a device.
const SET_PATHS: &[&str] = &["formatters", "session"];

#[tonic::async_trait]
impl v3::as_end_device_registry_server::AsEndDeviceRegistry for AsApi {
    async fn get(
        &self,
        request: Request<v3::GetEndDeviceRequest>,
    ) -> Result<Response<v3::EndDevice>, Status> {
        self.ready()?;
        let (ids, entity) =
            device_ids(request.get_ref().end_device_ids.as_ref(), "end_device_ids")?;
        require(&request, &entity, RIGHT_DEVICES_READ).await?;
        let mask = request.get_ref().field_mask.clone().unwrap_or_default();
        let with_keys = mask.covers("session.keys.app_s_key");
        if with_keys {
            require(&request, &entity, RIGHT_DEVICES_READ_KEYS).await?;
        }
        let record = self
            .core
            .store
            .get_as_device(app_id(&ids), &ids.device_id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "device {:?} is not on the Application Server",
                    ids.device_id
                ))
            })?
            .value;
        Ok(Response::new(v3::EndDevice {
            ids: record.ids.clone().or(Some(ids)),
            session: record.session.as_ref().map(|s| session_out(s, with_keys)),
            formatters: record.formatters.clone(),
            ..Default::default()
        }))
    }

    async fn set(
        &self,
        request: Request<v3::UpdateEndDeviceRequest>,
    ) -> Result<Response<v3::EndDevice>, Status> {
        self.ready()?;
        let device = request
            .get_ref()
            .end_device
            .clone()
            .ok_or_else(|| Status::invalid_argument("end_device: required"))?;
        let (ids, entity) = device_ids(device.ids.as_ref(), "end_device.ids")?;
        require(&request, &entity, RIGHT_DEVICES_WRITE).await?;
        let mask = request.get_ref().field_mask.clone().unwrap_or_default();
        if mask.paths.is_empty() {
            return Err(Status::invalid_argument(
                "field_mask: required (e.g. \"formatters\" or \"session\")",
            ));
        }
        for path in &mask.paths {
            if !SET_PATHS
                .iter()
                .any(|p| path == p || path.starts_with(&format!("{p}.")))
            {
                return Err(Status::invalid_argument(format!(
                    "field_mask: {path:?} is not an Application Server field (formatters, session)"
                )));
            }
        }
        let app = app_id(&ids).to_owned();
        // Under the device's lock, so that the pipeline's cache sees this write in order.
        let lock = self.core.device_lock(&app, &ids.device_id);
        let _guard = lock.lock().await;
        let existing = self
            .core
            .store
            .get_as_device(&app, &ids.device_id)
            .await
            .map_err(store_status)?;
        let (mut record, expect) = match existing {
            Some(v) => (v.value, Expect::Version(v.version)),
            None => (
                AsDeviceRecord {
                    ids: Some(ids.clone()),
                    ..Default::default()
                },
                Expect::Absent,
            ),
        };
        if mask.covers("formatters") {
            if let Some(f) = &device.formatters {
                self.core.validate_formatters(f).await?;
            }
            record.formatters = device.formatters.clone();
        }
        if mask
            .paths
            .iter()
            .any(|p| p == "session" || p.starts_with("session."))
        {
            match &device.session {
                None => record.session = None,
                Some(s) => {
                    if s.dev_addr.len() != 4 {
                        return Err(Status::invalid_argument(format!(
                            "end_device.session.dev_addr: {} bytes, expected 4",
                            s.dev_addr.len()
                        )));
                    }
                    let keys = s.keys.clone().unwrap_or_default();
                    let mut envelope = keys.app_s_key.ok_or_else(|| {
                        Status::invalid_argument("end_device.session.keys.app_s_key: required")
                    })?;
                    if envelope.kek_label.is_empty() {
                        if envelope.key.len() != 16 {
                            return Err(Status::invalid_argument(format!(
                                "end_device.session.keys.app_s_key.key: {} bytes, expected 16",
                                envelope.key.len()
                            )));
                        }
                        // Kept wrapped when this AS has a KEK, so the store never holds it in clear.
                        if let Some((label, kek)) = &self.kek {
                            let mut clear = [0u8; 16];
                            clear.copy_from_slice(&envelope.key);
                            envelope = v3::KeyEnvelope {
                                kek_label: label.clone(),
                                encrypted_key: lorawan::crypto::wrap_key(kek, &Aes128Key(clear))
                                    .to_vec(),
                                key: Vec::new(),
                            };
                        }
                    }
                    let mut ids_with_addr = record.ids.clone().unwrap_or_else(|| ids.clone());
                    ids_with_addr.dev_addr = s.dev_addr.clone();
                    record.ids = Some(ids_with_addr);
                    record.session = Some(AsSession {
                        session_key_id: keys.session_key_id,
                        app_s_key: Some(envelope),
                        last_a_f_cnt_down: s.last_a_f_cnt_down,
                        dev_addr: s.dev_addr.clone(),
                    });
                    record.pending_session = None;
                }
            }
        }
        match self.core.store.set_as_device(&record, expect).await {
            Ok(version) => self.core.cache_written(record.clone(), version),
            Err(e) => {
                self.core.cache_forget(&app, &ids.device_id);
                return Err(store_status(e));
            }
        }
        Ok(Response::new(v3::EndDevice {
            ids: record.ids.clone(),
            session: record.session.as_ref().map(|s| session_out(s, false)),
            formatters: record.formatters.clone(),
            ..Default::default()
        }))
    }

    async fn delete(
        &self,
        request: Request<v3::EndDeviceIdentifiers>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        self.ready()?;
        let (ids, entity) = device_ids(Some(request.get_ref()), "end_device_ids")?;
        require(&request, &entity, RIGHT_DEVICES_WRITE).await?;
        let lock = self.core.device_lock(app_id(&ids), &ids.device_id);
        let _guard = lock.lock().await;
        let deleted = self
            .core
            .store
            .delete_as_device(app_id(&ids), &ids.device_id)
            .await;
        // Forgotten whatever the outcome: the next use reads the store.
        self.core.cache_forget(app_id(&ids), &ids.device_id);
        deleted.map_err(store_status)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }
}

#[tonic::async_trait]
impl v3::as_formatters_server::AsFormatters for AsApi {
    async fn get_application_formatters(
        &self,
        request: Request<v3::ApplicationIdentifiers>,
    ) -> Result<Response<v3::ApplicationFormatters>, Status> {
        self.ready()?;
        let entity = app_entity(&request.get_ref().application_id)?;
        require(&request, &entity, RIGHT_APPLICATION_INFO).await?;
        let app = request.into_inner();
        let formatters = self
            .core
            .application_formatters(&app.application_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(v3::ApplicationFormatters {
            application_ids: Some(app),
            formatters: Some(formatters),
        }))
    }

    async fn set_application_formatters(
        &self,
        request: Request<v3::ApplicationFormatters>,
    ) -> Result<Response<v3::ApplicationFormatters>, Status> {
        self.ready()?;
        let app = request
            .get_ref()
            .application_ids
            .clone()
            .ok_or_else(|| Status::invalid_argument("application_ids: required"))?;
        let entity = app_entity(&app.application_id)?;
        require(&request, &entity, RIGHT_SETTINGS_BASIC).await?;
        let formatters = request.into_inner().formatters.unwrap_or_default();
        self.core
            .set_application_formatters(&app.application_id, formatters.clone())
            .await?;
        Ok(Response::new(v3::ApplicationFormatters {
            application_ids: Some(app),
            formatters: Some(formatters),
        }))
    }

    async fn test_decode_uplink(
        &self,
        request: Request<v3::TestDecodeUplinkRequest>,
    ) -> Result<Response<v3::TestDecodeUplinkResponse>, Status> {
        self.ready()?;
        let (ids, entity) =
            device_ids(request.get_ref().end_device_ids.as_ref(), "end_device_ids")?;
        require(&request, &entity, RIGHT_DEVICES_READ).await?;
        let req = request.into_inner();
        let kind = match req.formatter {
            Some(f) => formatter_kind(f, &req.formatter_parameter)
                .map_err(|e| Status::invalid_argument(format!("formatter: {e}")))?,
            None => {
                let record = self
                    .core
                    .store
                    .get_as_device(app_id(&ids), &ids.device_id)
                    .await
                    .map_err(store_status)?
                    .map(|v| v.value);
                self.core
                    .uplink_formatter(app_id(&ids), record.as_ref())
                    .await
                    .map_err(Status::failed_precondition)?
            }
        };
        if kind == tern_formatters::FormatterKind::None {
            return Err(Status::failed_precondition(format!(
                "device {:?} has no uplink payload formatter (nor has its application)",
                ids.device_id
            )));
        }
        let response = match self
            .core
            .decode_uplink(kind, req.frm_payload, req.f_port, None)
            .await
        {
            Ok(d) => v3::TestDecodeUplinkResponse {
                decoded_payload: serde_json::from_value(d.data.clone()).ok(),
                decoded_payload_warnings: d.warnings,
                error: String::new(),
            },
            Err(e) => v3::TestDecodeUplinkResponse {
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}

impl AsApi {
    /// Adds the three services, behind the authentication layer, to `routes`.
    pub fn add_to(
        &self,
        auth: &tern_cluster::auth::Authenticator,
        routes: &mut tonic::service::RoutesBuilder,
    ) {
        use tower::Layer;
        routes.add_service(
            auth.layer()
                .layer(v3::app_as_server::AppAsServer::new(self.clone())),
        );
        routes.add_service(auth.layer().layer(
            v3::as_end_device_registry_server::AsEndDeviceRegistryServer::new(self.clone()),
        ));
        routes.add_service(
            auth.layer()
                .layer(v3::as_formatters_server::AsFormattersServer::new(
                    self.clone(),
                )),
        );
    }
}

#[cfg(test)]
mod rights_tests {
    use super::*;

    /// Every right the AS requires is one the Identity Server can grant (a misspelt one would
    /// refuse every key but an admin's).
    #[test]
    fn required_rights_are_granted_rights() {
        for right in [
            RIGHT_DEVICES_READ,
            RIGHT_DEVICES_READ_KEYS,
            RIGHT_DEVICES_WRITE,
            RIGHT_APPLICATION_INFO,
            RIGHT_SETTINGS_BASIC,
            RIGHT_TRAFFIC_READ,
            RIGHT_TRAFFIC_DOWN_WRITE,
        ] {
            assert!(tern_api::rights::from_str(right).is_some(), "{right}");
        }
    }
}
