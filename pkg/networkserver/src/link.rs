//! The NS end of the AS↔NS link: who holds the link of which application.
//!
//! An Application Server opens the link (a bidirectional gRPC stream, or an in-process call)
//! and names the applications it serves in its first frame. The hub checks the caller may
//! link each of them (cluster peers may link any; an API key only its own application, with
//! `application:link`), refuses an application another AS already holds (naming the
//! holder), and keeps the sending half of the link so that the uplink path can deliver to
//! it. One AS holds an application at a time; a link for all applications (a cluster AS)
//! serves every application no specific link holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tern_api::v3;
use tern_cluster::auth::{Caller, RIGHT_APPLICATION_LINK};
use tern_cluster::links::{AsNs, BoxStream, LinkResult};
use tern_cluster::role::Shutdown;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{info, warn};

/// How long an AS has to send its `LinkStart` after opening the stream.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many frames may wait for a slow AS before the link is dropped (the AS relinks and
/// the NS resends what was not acknowledged).
const LINK_BUFFER: usize = 1024;

/// Who holds a link.
#[derive(Debug, Clone)]
struct Holder {
    link_id: u64,
    instance_id: String,
    tx: mpsc::Sender<LinkResult<v3::LinkResponse>>,
}

#[derive(Default)]
struct Links {
    by_application: HashMap<String, Holder>,
    all: Option<Holder>,
}

/// Link metrics, registered under `tern_ns_`.
#[derive(Clone, Default)]
struct LinkMetrics {
    active: Gauge,
    refused: Family<[(&'static str, &'static str); 1], Counter>,
}

/// The applications linked to this Network Server, and to which AS.
#[derive(Clone, Default)]
pub struct LinkHub {
    links: Arc<Mutex<Links>>,
    next_id: Arc<AtomicU64>,
    metrics: LinkMetrics,
    closing: Shutdown,
}

impl std::fmt::Debug for LinkHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHub")
            .field("linked", &self.linked_applications())
            .finish()
    }
}

impl LinkHub {
    /// A hub with no links.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every open link with `UNAVAILABLE` and refuses new ones: at shutdown, so that the
    /// gRPC server can drain (a link stream would otherwise never finish).
    pub fn close_all(&self) {
        self.closing.trigger();
    }

    /// Registers `tern_ns_links_active` and `tern_ns_link_refused_total{reason}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "links_active",
            "Application Server links currently open",
            self.metrics.active.clone(),
        );
        registry.register(
            "link_refused",
            "Application Server links refused, by reason",
            self.metrics.refused.clone(),
        );
    }

    /// The applications with a link of their own, sorted.
    pub fn linked_applications(&self) -> Vec<String> {
        let links = self.links.lock().expect("link table lock");
        let mut ids: Vec<String> = links.by_application.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether an AS would receive this application's messages now.
    pub fn is_linked(&self, application_id: &str) -> bool {
        let links = self.links.lock().expect("link table lock");
        links.by_application.contains_key(application_id) || links.all.is_some()
    }

    /// Sends `frame` on the link serving `application_id`; `false` when no AS holds it or
    /// the link is gone (the caller keeps the message for the next link).
    pub fn send(&self, application_id: &str, frame: v3::LinkResponse) -> bool {
        let holder = {
            let links = self.links.lock().expect("link table lock");
            links
                .by_application
                .get(application_id)
                .or(links.all.as_ref())
                .cloned()
        };
        holder.is_some_and(|h| h.tx.try_send(Ok(frame)).is_ok())
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics
            .refused
            .get_or_create(&[("reason", reason)])
            .inc();
        warn!(reason, error = %status.message(), "application link refused");
        status
    }

    /// Checks and registers a `LinkStart`; returns the link id and the linked applications.
    fn register(
        &self,
        caller: &Caller,
        start: &v3::LinkStart,
        tx: &mpsc::Sender<LinkResult<v3::LinkResponse>>,
    ) -> Result<(u64, Vec<v3::ApplicationIdentifiers>), Status> {
        if start.all_applications && !start.application_ids.is_empty() {
            return Err(self.refuse(
                "invalid_start",
                Status::invalid_argument(
                    "LinkStart names applications and asks for all applications: choose one",
                ),
            ));
        }
        if !start.all_applications && start.application_ids.is_empty() {
            return Err(self.refuse(
                "invalid_start",
                Status::invalid_argument("LinkStart names no application"),
            ));
        }
        if start.all_applications && !caller.is_cluster() {
            return Err(self.refuse(
                "permission_denied",
                Status::permission_denied(
                    "only roles of the cluster may link all applications; an API key links \
                     its own application",
                ),
            ));
        }
        for ids in &start.application_ids {
            if ids.application_id.is_empty() {
                return Err(self.refuse(
                    "invalid_start",
                    Status::invalid_argument("LinkStart has an empty application_id"),
                ));
            }
            caller
                .require_application(&ids.application_id, RIGHT_APPLICATION_LINK)
                .map_err(|e| self.refuse(e.reason(), Status::from(e)))?;
        }
        let instance_id = if start.instance_id.is_empty() {
            "unnamed".to_owned()
        } else {
            start.instance_id.clone()
        };
        let link_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let holder = Holder {
            link_id,
            instance_id,
            tx: tx.clone(),
        };
        let mut links = self.links.lock().expect("link table lock");
        if start.all_applications {
            if let Some(other) = links.all.as_ref().filter(|h| !h.tx.is_closed()) {
                let message = format!(
                    "all applications are already linked by Application Server instance {:?}",
                    other.instance_id
                );
                drop(links);
                return Err(self.refuse("already_linked", Status::failed_precondition(message)));
            }
            links.all = Some(holder);
            return Ok((link_id, Vec::new()));
        }
        for ids in &start.application_ids {
            if let Some(other) = links
                .by_application
                .get(&ids.application_id)
                .filter(|h| !h.tx.is_closed())
            {
                let message = format!(
                    "application {:?} is already linked by Application Server instance {:?}",
                    ids.application_id, other.instance_id
                );
                drop(links);
                return Err(self.refuse("already_linked", Status::failed_precondition(message)));
            }
        }
        for ids in &start.application_ids {
            links
                .by_application
                .insert(ids.application_id.clone(), holder.clone());
        }
        Ok((link_id, start.application_ids.clone()))
    }

    /// Forgets every entry of link `link_id` (and only those: a newer link stays).
    fn unregister(&self, link_id: u64) {
        let mut links = self.links.lock().expect("link table lock");
        links.by_application.retain(|_, h| h.link_id != link_id);
        if links.all.as_ref().is_some_and(|h| h.link_id == link_id) {
            links.all = None;
        }
    }

    /// Answers one queue operation. The NS holds no device sessions yet (they arrive with
    /// the uplink path), so every device is unknown to it.
    fn queue_result(op: &v3::DownlinkQueueOperation) -> v3::LinkResponse {
        let device = op
            .end_device_ids
            .as_ref()
            .map_or("?", |ids| ids.device_id.as_str());
        v3::LinkResponse {
            frame: Some(v3::link_response::Frame::QueueResult(
                v3::DownlinkQueueOperationResult {
                    operation_id: op.operation_id,
                    error: Some(v3::ErrorDetails {
                        code: tonic::Code::NotFound as u32,
                        name: "unknown_session".to_owned(),
                        message: format!("device {device:?} has no session on this Network Server"),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
        }
    }
}

#[async_trait]
impl AsNs for LinkHub {
    async fn link_application(
        &self,
        caller: Caller,
        mut requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        if self.closing.is_triggered() {
            return Err(Status::unavailable("the Network Server is shutting down"));
        }
        let first = tokio::time::timeout(START_TIMEOUT, requests.next())
            .await
            .map_err(|_| {
                self.refuse(
                    "no_start",
                    Status::deadline_exceeded(format!(
                        "no LinkStart within {}s of opening the link",
                        START_TIMEOUT.as_secs()
                    )),
                )
            })?;
        let start = match first {
            Some(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::Start(start)),
            })) => start,
            Some(Err(status)) => return Err(status),
            None => return Err(Status::cancelled("the link closed before LinkStart")),
            Some(Ok(_)) => {
                return Err(self.refuse(
                    "invalid_start",
                    Status::invalid_argument("the first frame of a link must be LinkStart"),
                ));
            }
        };
        let (tx, rx) = mpsc::channel(LINK_BUFFER);
        let (link_id, application_ids) = self.register(&caller, &start, &tx)?;
        self.metrics.active.inc();
        info!(
            link_id,
            instance = %start.instance_id,
            all = start.all_applications,
            applications = ?application_ids.iter().map(|a| a.application_id.as_str()).collect::<Vec<_>>(),
            "application link established"
        );
        let established = v3::LinkResponse {
            frame: Some(v3::link_response::Frame::Established(v3::LinkEstablished {
                application_ids,
            })),
        };
        // The channel is new and large: the first frame always fits.
        let _ = tx.try_send(Ok(established));

        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    request = requests.next() => match request {
                        Some(Ok(v3::LinkRequest { frame: Some(v3::link_request::Frame::QueueOperation(op)) })) => {
                            if tx.send(Ok(LinkHub::queue_result(&op))).await.is_err() {
                                break;
                            }
                        }
                        // Acknowledgements let the NS forget delivered messages; nothing is
                        // kept yet.
                        Some(Ok(v3::LinkRequest { frame: Some(v3::link_request::Frame::Ack(_)) })) => {}
                        Some(Ok(_)) => {
                            let _ = tx
                                .send(Err(Status::invalid_argument(
                                    "LinkStart may only be sent once, first",
                                )))
                                .await;
                            break;
                        }
                        Some(Err(_)) | None => break,
                    },
                    // The AS stopped reading: the link is gone.
                    () = tx.closed() => break,
                    () = hub.closing.wait() => {
                        let _ = tx.try_send(Err(Status::unavailable(
                            "the Network Server is shutting down",
                        )));
                        break;
                    }
                }
            }
            hub.unregister(link_id);
            hub.metrics.active.dec();
            info!(link_id, "application link closed");
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn downlink_queue_list(
        &self,
        caller: Caller,
        device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        let app = device
            .application_ids
            .as_ref()
            .map(|a| a.application_id.clone())
            .unwrap_or_default();
        caller
            .require_application(&app, RIGHT_APPLICATION_LINK)
            .map_err(Status::from)?;
        Err(Status::not_found(format!(
            "device {:?} of application {app:?} has no session on this Network Server",
            device.device_id
        )))
    }
}
