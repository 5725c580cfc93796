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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prost::Message;
use tern_store::{Batch, Expect, Store, Table};

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
    kept: Counter,
    evicted: Counter,
}

/// Messages kept for applications that no AS holds, by `application_id/sequence` (20
/// digits, so that keys sort by sequence).
pub static LINK_BACKLOG: Table = Table {
    name: "ns.link-backlog",
    what: "NS link backlog message",
};

/// Answers the downlink queue operations that arrive on links.
#[async_trait]
pub trait QueueHandler: Send + Sync + 'static {
    /// Applies one operation; failures are in the result's `error`.
    async fn queue_operation(
        &self,
        op: v3::DownlinkQueueOperation,
    ) -> v3::DownlinkQueueOperationResult;
    /// A device's queue.
    async fn queue_list(
        &self,
        device: &v3::EndDeviceIdentifiers,
    ) -> Result<v3::ApplicationDownlinks, Status>;
}

/// What a hub of a running NS has: its store (for the backlog) and its queue handler.
struct Attached {
    store: Store,
    handler: Arc<dyn QueueHandler>,
    bound: usize,
}

/// The applications linked to this Network Server, and to which AS.
#[derive(Clone, Default)]
pub struct LinkHub {
    links: Arc<Mutex<Links>>,
    next_id: Arc<AtomicU64>,
    metrics: LinkMetrics,
    closing: Shutdown,
    attached: Arc<OnceLock<Attached>>,
    sequences: Arc<tokio::sync::Mutex<HashMap<String, u64>>>,
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

    /// Connects the hub to the NS: messages for unlinked applications are kept in `store`
    /// (at most `bound` per application), queue operations go to `handler`. Once only;
    /// later calls are ignored.
    pub fn attach(&self, store: Store, handler: Arc<dyn QueueHandler>, bound: usize) {
        let _ = self.attached.set(Attached {
            store,
            handler,
            bound: bound.max(1),
        });
    }

    /// Sends a message to the AS holding `application_id`'s link, with the next sequence
    /// number of the application. When no AS holds it (or the link is gone), the message is
    /// kept in the store and sent when an AS links; beyond the bound the oldest kept message
    /// is evicted (counted in `tern_ns_link_backlog_evicted_total` and logged).
    pub async fn deliver(&self, application_id: &str, up: v3::ApplicationUp) {
        // The lock is held only to number the message (and once per application to find
        // the last kept number), not while it is sent or stored.
        let sequence = {
            let mut sequences = self.sequences.lock().await;
            let sequence = match sequences.get(application_id) {
                Some(s) => s + 1,
                None => self.last_kept_sequence(application_id).await + 1,
            };
            sequences.insert(application_id.to_owned(), sequence);
            sequence
        };
        let frame = v3::SequencedApplicationUp {
            sequence,
            up: Some(up),
        };
        let response = v3::LinkResponse {
            frame: Some(v3::link_response::Frame::Up(frame.clone())),
        };
        if self.send(application_id, response) {
            return;
        }
        let Some(attached) = self.attached.get() else {
            warn!(
                application_id,
                sequence, "no Application Server linked and no store to keep the message: dropped"
            );
            self.metrics.evicted.inc();
            return;
        };
        let mut batch = Batch::new();
        batch.put(
            &LINK_BACKLOG,
            backlog_key(application_id, sequence),
            frame.encode_to_vec(),
            Expect::Any,
            Vec::new(),
        );
        if let Err(e) = attached.store.commit(batch).await {
            warn!(application_id, sequence, error = %e, "cannot keep a message for an unlinked application: dropped");
            self.metrics.evicted.inc();
            return;
        }
        self.metrics.kept.inc();
        let prefix = format!("{application_id}/");
        let count = attached
            .store
            .count(&LINK_BACKLOG, &prefix)
            .await
            .unwrap_or(0);
        if count as usize > attached.bound {
            let excess = count as usize - attached.bound;
            if let Ok(page) = attached
                .store
                .scan(&LINK_BACKLOG, &prefix, None, excess)
                .await
            {
                let mut batch = Batch::new();
                for r in &page.items {
                    batch.delete(&LINK_BACKLOG, r.key.clone(), Expect::Any);
                }
                if attached.store.commit(batch).await.is_ok() {
                    self.metrics.evicted.inc_by(page.items.len() as u64);
                    warn!(
                        application_id,
                        evicted = page.items.len(),
                        bound = attached.bound,
                        "link backlog full: oldest messages evicted"
                    );
                }
            }
        }
    }

    /// The highest sequence kept for an application (0: none).
    async fn last_kept_sequence(&self, application_id: &str) -> u64 {
        let Some(attached) = self.attached.get() else {
            return 0;
        };
        let prefix = format!("{application_id}/");
        let mut after: Option<String> = None;
        let mut last = 0;
        loop {
            let Ok(page) = attached
                .store
                .scan(&LINK_BACKLOG, &prefix, after.as_deref(), 500)
                .await
            else {
                return last;
            };
            if let Some(r) = page.items.last() {
                last = sequence_of(&r.key).unwrap_or(last);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => return last,
            }
        }
    }

    /// Forgets the kept messages of an application up to `sequence`, and makes the next
    /// sequence number follow it.
    async fn acknowledge(&self, application_id: &str, sequence: u64) {
        {
            let mut sequences = self.sequences.lock().await;
            let s = sequences.entry(application_id.to_owned()).or_insert(0);
            *s = (*s).max(sequence);
        }
        let Some(attached) = self.attached.get() else {
            return;
        };
        let prefix = format!("{application_id}/");
        loop {
            let Ok(page) = attached.store.scan(&LINK_BACKLOG, &prefix, None, 500).await else {
                return;
            };
            let mut batch = Batch::new();
            for r in page
                .items
                .iter()
                .filter(|r| sequence_of(&r.key).is_some_and(|s| s <= sequence))
            {
                batch.delete(&LINK_BACKLOG, r.key.clone(), Expect::Any);
            }
            let done = batch.ops.len() < page.items.len() || page.next.is_none();
            if batch.ops.is_empty() || attached.store.commit(batch).await.is_err() {
                return;
            }
            if done {
                return;
            }
        }
    }

    /// The kept messages of the applications of a new link (all applications: every one).
    async fn backlog(
        &self,
        applications: &[v3::ApplicationIdentifiers],
        all: bool,
    ) -> Vec<v3::SequencedApplicationUp> {
        let Some(attached) = self.attached.get() else {
            return Vec::new();
        };
        let prefixes: Vec<String> = if all {
            vec![String::new()]
        } else {
            applications
                .iter()
                .map(|a| format!("{}/", a.application_id))
                .collect()
        };
        let mut out = Vec::new();
        for prefix in prefixes {
            let mut after: Option<String> = None;
            loop {
                let Ok(page) = attached
                    .store
                    .scan(&LINK_BACKLOG, &prefix, after.as_deref(), 500)
                    .await
                else {
                    break;
                };
                out.extend(
                    page.items.iter().filter_map(|r| {
                        v3::SequencedApplicationUp::decode(r.value.as_slice()).ok()
                    }),
                );
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        out
    }

    /// Registers `tern_ns_links_active`, `tern_ns_link_refused_total{reason}`,
    /// `tern_ns_link_backlog_kept_total` and `tern_ns_link_backlog_evicted_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "link_backlog_kept",
            "Messages kept in the store because no Application Server held the link",
            self.metrics.kept.clone(),
        );
        registry.register(
            "link_backlog_evicted",
            "Messages for unlinked applications evicted because the backlog was full",
            self.metrics.evicted.clone(),
        );
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

    /// Answers one queue operation: through the attached NS, else as unknown device.
    async fn queue_result(
        &self,
        caller: &Caller,
        op: v3::DownlinkQueueOperation,
    ) -> v3::LinkResponse {
        let app = op
            .end_device_ids
            .as_ref()
            .and_then(|d| d.application_ids.as_ref())
            .map(|a| a.application_id.clone())
            .unwrap_or_default();
        if let Err(e) = caller.require_application(&app, RIGHT_APPLICATION_LINK) {
            return v3::LinkResponse {
                frame: Some(v3::link_response::Frame::QueueResult(
                    v3::DownlinkQueueOperationResult {
                        operation_id: op.operation_id,
                        error: Some(v3::ErrorDetails {
                            code: tonic::Code::PermissionDenied as u32,
                            name: e.reason().to_owned(),
                            message: e.to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
            };
        }
        if let Some(attached) = self.attached.get() {
            return v3::LinkResponse {
                frame: Some(v3::link_response::Frame::QueueResult(
                    attached.handler.queue_operation(op).await,
                )),
            };
        }
        Self::unknown_device(&op)
    }

    fn unknown_device(op: &v3::DownlinkQueueOperation) -> v3::LinkResponse {
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
        for ack in &start.acknowledged {
            if let Some(app) = ack.application_ids.as_ref() {
                self.acknowledge(&app.application_id, ack.sequence).await;
            }
        }
        let kept = self
            .backlog(&start.application_ids, start.all_applications)
            .await;

        let hub = self.clone();
        tokio::spawn(async move {
            for frame in kept {
                let response = v3::LinkResponse {
                    frame: Some(v3::link_response::Frame::Up(frame)),
                };
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            loop {
                tokio::select! {
                    request = requests.next() => match request {
                        Some(Ok(v3::LinkRequest { frame: Some(v3::link_request::Frame::QueueOperation(op)) })) => {
                            if tx.send(Ok(hub.queue_result(&caller, op).await)).await.is_err() {
                                break;
                            }
                        }
                        // Acknowledgements let the NS forget kept messages.
                        Some(Ok(v3::LinkRequest { frame: Some(v3::link_request::Frame::Ack(ack)) })) => {
                            if let Some(app) = ack.application_ids.as_ref() {
                                hub.acknowledge(&app.application_id, ack.sequence).await;
                            }
                        }
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
        if let Some(attached) = self.attached.get() {
            return attached.handler.queue_list(&device).await;
        }
        Err(Status::not_found(format!(
            "device {:?} of application {app:?} has no session on this Network Server",
            device.device_id
        )))
    }
}

fn backlog_key(application_id: &str, sequence: u64) -> String {
    format!("{application_id}/{sequence:020}")
}

fn sequence_of(key: &str) -> Option<u64> {
    key.rsplit_once('/').and_then(|(_, s)| s.parse().ok())
}
