//! The gRPC services of the NS↔JS and AS↔JS links.
//!
//! `NsJs` is for cluster callers only. `AsJs` also admits an application API key with
//! `application:link` on the application of the session's device: an Application Server
//! outside the cluster.

use std::sync::Arc;

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::{Caller, Entity, RIGHT_APPLICATION_LINK, require};
use tern_store::JoinStore;
use tonic::{Request, Response, Status};

use crate::Inner;

/// Serves `tern.v3.NsJs`.
pub(crate) struct NsJsService(pub Arc<Inner>);

#[async_trait]
impl v3::ns_js_server::NsJs for NsJsService {
    async fn handle_join(
        &self,
        request: Request<v3::JoinRequest>,
    ) -> Result<Response<v3::JoinResponse>, Status> {
        self.0.check_started()?;
        Caller::of(&request)
            .map_err(Status::from)?
            .require_cluster("tern.v3.NsJs/HandleJoin")
            .map_err(Status::from)?;
        self.0
            .handle_join(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Serves `tern.v3.AsJs`.
pub(crate) struct AsJsService(pub Arc<Inner>);

#[async_trait]
impl v3::as_js_server::AsJs for AsJsService {
    async fn get_app_s_key(
        &self,
        request: Request<v3::SessionKeyRequest>,
    ) -> Result<Response<v3::AppSKeyResponse>, Status> {
        self.0.check_started()?;
        let caller = Caller::of(&request).map_err(Status::from)?;
        if !caller.is_cluster() {
            // An external AS: it must hold the link right on the device's application.
            let app = self.application_of_session(request.get_ref()).await?;
            require(&request, &Entity::Application(app), RIGHT_APPLICATION_LINK)
                .await
                .map_err(Status::from)?;
        }
        let response = self.0.get_app_s_key(request.into_inner()).await?;
        Ok(Response::new(response))
    }
}

impl AsJsService {
    /// The application of the device a session belongs to; NOT_FOUND when the session is
    /// not one of the named device's.
    async fn application_of_session(
        &self,
        request: &v3::SessionKeyRequest,
    ) -> Result<String, Status> {
        let not_found = || {
            Status::not_found(format!(
                "no session key ID {} of the given device",
                hex::encode(&request.session_key_id)
            ))
        };
        if request.session_key_id.is_empty() {
            return Err(Status::invalid_argument("session_key_id: required"));
        }
        let record = self
            .0
            .store
            .get_session_keys(&request.session_key_id)
            .await
            .map_err(crate::error::store_status)?
            .ok_or_else(not_found)?;
        if record.join_eui != request.join_eui || record.dev_eui != request.dev_eui {
            return Err(not_found());
        }
        let (Ok(Some(join_eui)), Ok(Some(dev_eui))) = (
            tern_api::convert::eui64("join_eui", &record.join_eui),
            tern_api::convert::eui64("dev_eui", &record.dev_eui),
        ) else {
            return Err(not_found());
        };
        let device = self
            .0
            .store
            .get_js_device(join_eui, dev_eui)
            .await
            .map_err(crate::error::store_status)?
            .ok_or_else(not_found)?;
        let app = device
            .value
            .ids
            .and_then(|ids| ids.application_ids)
            .map(|a| a.application_id)
            .unwrap_or_default();
        if app.is_empty() {
            return Err(Status::permission_denied(format!(
                "device JoinEUI {join_eui} DevEUI {dev_eui} belongs to no application: only \
                 cluster callers may read its session keys"
            )));
        }
        Ok(app)
    }
}
