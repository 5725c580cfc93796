//! The public `tern.v3.Events` service: live events filtered by entity and name pattern,
//! for callers that may see every entity they ask for.
//!
//! Mount it behind the authentication layer (`auth.layer().layer(EventsServer::new(..))`);
//! each entity of the filter needs a right of the caller: the application's
//! `application:traffic:read` (also for a device of it), `gateway:info`,
//! `organization:info` or `user:info`.

use std::pin::Pin;

use tern_api::v3;
use tern_cluster::auth::{self, Entity};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::{EventBus, Filter, RecvError};

/// Serves `Events.Stream` from an [`EventBus`].
#[derive(Clone)]
pub struct EventsService {
    bus: EventBus,
}

impl EventsService {
    /// The service over `bus`.
    pub fn new(bus: EventBus) -> Self {
        Self { bus }
    }

    /// The generated tonic server of this service.
    pub fn into_server(self) -> v3::events_server::EventsServer<Self> {
        v3::events_server::EventsServer::new(self)
    }
}

/// The entity and right a filter entry needs, or why the entry is not usable.
fn needed(ids: &v3::EntityIdentifiers) -> Result<(Entity, &'static str), Status> {
    use v3::entity_identifiers::Ids;
    let missing = |what: &str| Status::invalid_argument(format!("identifiers: {what} is empty"));
    match &ids.ids {
        Some(Ids::ApplicationIds(a)) if !a.application_id.is_empty() => Ok((
            Entity::Application(a.application_id.clone()),
            "application:traffic:read",
        )),
        Some(Ids::DeviceIds(d)) => {
            let app = d
                .application_ids
                .as_ref()
                .map(|a| a.application_id.clone())
                .filter(|a| !a.is_empty())
                .ok_or_else(|| missing("device_ids.application_ids.application_id"))?;
            Ok((Entity::Application(app), "application:traffic:read"))
        }
        Some(Ids::GatewayIds(g)) if !g.gateway_id.is_empty() => {
            Ok((Entity::Gateway(g.gateway_id.clone()), "gateway:info"))
        }
        Some(Ids::OrganizationIds(o)) if !o.organization_id.is_empty() => Ok((
            Entity::Organization(o.organization_id.clone()),
            "organization:info",
        )),
        Some(Ids::UserIds(u)) if !u.user_id.is_empty() => {
            Ok((Entity::User(u.user_id.clone()), "user:info"))
        }
        Some(_) => Err(missing("the entity ID")),
        None => Err(missing("an entry")),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v3::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl v3::events_server::Events for EventsService {
    type StreamStream = EventStream;

    async fn stream(
        &self,
        request: Request<v3::StreamEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let body = request.get_ref();
        if body.identifiers.is_empty() {
            return Err(Status::invalid_argument(
                "identifiers: at least one entity is needed",
            ));
        }
        if body.tail > 0 || body.after.is_some() {
            return Err(Status::unimplemented(
                "tail and after need stored events, which this deployment does not keep: \
                 subscribe to live events only",
            ));
        }
        for ids in &body.identifiers {
            let (entity, right) = needed(ids)?;
            auth::require(&request, &entity, right).await?;
        }
        let mut subscription = self
            .bus
            .subscribe(Filter::from_request(body))
            .await
            .map_err(|e| Status::unavailable(format!("subscribing to events: {e}")))?;
        let stream = async_stream(move |tx| async move {
            loop {
                match subscription.recv().await {
                    Ok(event) => {
                        if tx.send(Ok(event.as_ref().clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => debug!("event stream fell behind by {n}"),
                    Err(RecvError::Closed) => {
                        let _ = tx
                            .send(Err(Status::unavailable("the event bus closed")))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task; the task stops when the caller hangs up.
fn async_stream<F, Fut>(body: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<v3::Event, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
