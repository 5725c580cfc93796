//! The management API: `ApplicationWebhookRegistry` and `ApplicationPubSubRegistry`.

use std::sync::Arc;

use tern_api::v3;
use tern_cluster::auth::{Authenticator, Entity, require};
use tonic::{Request, Response, Status};
use tower::Layer;

use crate::{Inner, pubsub, webhook};

/// The right to read and change an application's webhooks and pub/sub integrations (their
/// configuration holds secrets such as header values and passwords).
pub const RIGHT_INTEGRATIONS: &str = "application:settings:packages";

/// The right to push downlinks through the webhook downlink routes.
pub const RIGHT_TRAFFIC_DOWN_WRITE: &str = "application:traffic:down:write";

#[derive(Debug, Clone)]
struct Api(Arc<Inner>);

impl Api {
    async fn check<T>(&self, request: &Request<T>, app: &str) -> Result<(), Status> {
        if app.is_empty() {
            self.0.metrics.reject("missing_application_id");
            return Err(Status::invalid_argument("application_id is required"));
        }
        require(
            request,
            &Entity::Application(app.to_owned()),
            RIGHT_INTEGRATIONS,
        )
        .await
        .map_err(|e| {
            self.0.metrics.reject("permission");
            Status::from(e)
        })
    }
}

fn webhook_ids(ids: &v3::ApplicationWebhookIdentifiers) -> (&str, &str) {
    (
        ids.application_ids
            .as_ref()
            .map(|a| a.application_id.as_str())
            .unwrap_or_default(),
        ids.webhook_id.as_str(),
    )
}

fn pubsub_ids(ids: &v3::ApplicationPubSubIdentifiers) -> (&str, &str) {
    (
        ids.application_ids
            .as_ref()
            .map(|a| a.application_id.as_str())
            .unwrap_or_default(),
        ids.pub_sub_id.as_str(),
    )
}

#[tonic::async_trait]
impl v3::application_webhook_registry_server::ApplicationWebhookRegistry for Api {
    async fn get(
        &self,
        request: Request<v3::ApplicationWebhookIdentifiers>,
    ) -> Result<Response<v3::ApplicationWebhook>, Status> {
        let (app, id) = webhook_ids(request.get_ref());
        self.check(&request, app).await?;
        webhook::get(&self.0, app, id).await.map(Response::new)
    }

    async fn list(
        &self,
        request: Request<v3::ApplicationIdentifiers>,
    ) -> Result<Response<v3::ApplicationWebhooks>, Status> {
        let app = request.get_ref().application_id.as_str();
        self.check(&request, app).await?;
        let webhooks = webhook::list(&self.0, app).await?;
        Ok(Response::new(v3::ApplicationWebhooks { webhooks }))
    }

    async fn set(
        &self,
        request: Request<v3::SetApplicationWebhookRequest>,
    ) -> Result<Response<v3::ApplicationWebhook>, Status> {
        let app = request
            .get_ref()
            .webhook
            .as_ref()
            .and_then(|w| w.ids.as_ref())
            .map(|ids| webhook_ids(ids).0.to_owned())
            .unwrap_or_default();
        self.check(&request, &app).await?;
        let Some(w) = request.into_inner().webhook else {
            self.0.metrics.reject("invalid_webhook");
            return Err(Status::invalid_argument("webhook is required"));
        };
        webhook::set(&self.0, w).await.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<v3::ApplicationWebhookIdentifiers>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let (app, id) = webhook_ids(request.get_ref());
        self.check(&request, app).await?;
        webhook::delete(&self.0, app, id).await?;
        Ok(Response::new(pbjson_types::Empty {}))
    }
}

#[tonic::async_trait]
impl v3::application_pub_sub_registry_server::ApplicationPubSubRegistry for Api {
    async fn get(
        &self,
        request: Request<v3::ApplicationPubSubIdentifiers>,
    ) -> Result<Response<v3::ApplicationPubSub>, Status> {
        let (app, id) = pubsub_ids(request.get_ref());
        self.check(&request, app).await?;
        pubsub::get(&self.0, app, id).await.map(Response::new)
    }

    async fn list(
        &self,
        request: Request<v3::ApplicationIdentifiers>,
    ) -> Result<Response<v3::ApplicationPubSubs>, Status> {
        let app = request.get_ref().application_id.as_str();
        self.check(&request, app).await?;
        let pubsubs = pubsub::list(&self.0, app).await?;
        Ok(Response::new(v3::ApplicationPubSubs { pubsubs }))
    }

    async fn set(
        &self,
        request: Request<v3::SetApplicationPubSubRequest>,
    ) -> Result<Response<v3::ApplicationPubSub>, Status> {
        let app = request
            .get_ref()
            .pubsub
            .as_ref()
            .and_then(|p| p.ids.as_ref())
            .map(|ids| pubsub_ids(ids).0.to_owned())
            .unwrap_or_default();
        self.check(&request, &app).await?;
        let Some(p) = request.into_inner().pubsub else {
            self.0.metrics.reject("invalid_pubsub");
            return Err(Status::invalid_argument("pubsub is required"));
        };
        pubsub::set(&self.0, p).await.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<v3::ApplicationPubSubIdentifiers>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let (app, id) = pubsub_ids(request.get_ref());
        self.check(&request, app).await?;
        pubsub::delete(&self.0, app, id).await?;
        Ok(Response::new(pbjson_types::Empty {}))
    }
}

/// Adds both services behind the authentication layer.
pub(crate) fn add_to(
    inner: Arc<Inner>,
    routes: &mut tonic::service::RoutesBuilder,
    auth: &Authenticator,
) {
    let api = Api(inner);
    routes.add_service(auth.layer().layer(
        v3::application_webhook_registry_server::ApplicationWebhookRegistryServer::new(api.clone()),
    ));
    routes.add_service(
        auth.layer().layer(
            v3::application_pub_sub_registry_server::ApplicationPubSubRegistryServer::new(api),
        ),
    );
}
