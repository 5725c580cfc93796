//! Acknowledged delivery on the AS↔NS link: the NS end (`LinkHub` with its persisted
//! outbox on an embedded store) against a test-side AS that reads the stream and sends
//! acknowledgements. Unacknowledged messages are resent after a relink and after the hub is
//! dropped and re-created on the same store (the crash case); acknowledged ones are not; a
//! full outbox drops the oldest with an event and a metric; bad acknowledgements are
//! refused and change nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use tern_api::v3;
use tern_cluster::auth::Caller;
use tern_cluster::links::{AsNs, BoxStream, LinkResult};
use tern_events::{EventBus, Filter};
use tern_networkserver::link::{LinkHub, LinkOptions, OutboxState, QueueHandler};
use tern_store::{Store, StoreConfig};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

const WAIT: Duration = Duration::from_secs(10);

/// The queue side of the NS, which these tests do not exercise.
struct NoQueues;

#[async_trait]
impl QueueHandler for NoQueues {
    async fn queue_operation(
        &self,
        op: v3::DownlinkQueueOperation,
    ) -> v3::DownlinkQueueOperationResult {
        v3::DownlinkQueueOperationResult {
            operation_id: op.operation_id,
            ..Default::default()
        }
    }
    async fn queue_list(
        &self,
        _: &v3::EndDeviceIdentifiers,
    ) -> Result<v3::ApplicationDownlinks, Status> {
        Ok(v3::ApplicationDownlinks::default())
    }
}

struct Ns {
    hub: LinkHub,
    store: Store,
    events: EventBus,
    registry: Registry,
}

async fn ns(dir: &Path, outbox_limit: usize) -> Ns {
    let store = Store::open(&StoreConfig::default(), dir).await.unwrap();
    let events = EventBus::in_process(256);
    let hub = LinkHub::new();
    hub.attach(
        store.clone(),
        Arc::new(NoQueues),
        LinkOptions {
            outbox_limit,
            instance_id: "ns-a".into(),
            events: events.clone(),
        },
    );
    let mut registry = Registry::default();
    hub.register_metrics(&mut registry);
    Ns {
        hub,
        store,
        events,
        registry,
    }
}

fn metrics(registry: &Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s
}

/// An uplink of `app-1`'s `dev-1` with FCnt `f_cnt`, so that tests can tell messages apart.
fn up(f_cnt: u32) -> v3::ApplicationUp {
    v3::ApplicationUp {
        end_device_ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
        up: Some(v3::application_up::Up::UplinkMessage(
            v3::ApplicationUplink {
                f_port: 1,
                f_cnt,
                frm_payload: vec![0xAB, f_cnt as u8],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn f_cnt(m: &v3::SequencedApplicationUp) -> u32 {
    match m.up.as_ref().and_then(|u| u.up.as_ref()) {
        Some(v3::application_up::Up::UplinkMessage(u)) => u.f_cnt,
        other => panic!("not an uplink: {other:?}"),
    }
}

/// The AS side of one link.
struct As {
    tx: mpsc::Sender<LinkResult<v3::LinkRequest>>,
    responses: BoxStream<LinkResult<v3::LinkResponse>>,
    ns_instance_id: String,
}

impl As {
    async fn link(hub: &LinkHub, acknowledged: Vec<v3::LinkAck>) -> As {
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(v3::LinkRequest {
            frame: Some(v3::link_request::Frame::Start(v3::LinkStart {
                application_ids: vec![v3::ApplicationIdentifiers {
                    application_id: "app-1".into(),
                }],
                instance_id: "as-1".into(),
                acknowledged,
                ..Default::default()
            })),
        }))
        .await
        .unwrap();
        let mut responses = hub
            .link_application(Caller::Cluster, Box::pin(ReceiverStream::new(rx)))
            .await
            .unwrap();
        let first = responses.next().await.unwrap().unwrap();
        let Some(v3::link_response::Frame::Established(established)) = first.frame else {
            panic!("{first:?}");
        };
        As {
            tx,
            responses,
            ns_instance_id: established.ns_instance_id,
        }
    }

    async fn next(&mut self, wait: Duration) -> Option<v3::link_response::Frame> {
        tokio::time::timeout(wait, self.responses.next())
            .await
            .ok()?
            .map(|r| r.unwrap().frame.unwrap())
    }

    /// The next `up` frame; fails on anything else.
    async fn up(&mut self) -> v3::SequencedApplicationUp {
        match self.next(WAIT).await {
            Some(v3::link_response::Frame::Up(up)) => up,
            other => panic!("expected an up frame, got {other:?}"),
        }
    }

    /// Asserts that nothing more arrives for a moment.
    async fn quiet(&mut self) {
        if let Some(frame) = self.next(Duration::from_millis(300)).await {
            panic!("unexpected frame {frame:?}");
        }
    }

    async fn ack(&self, app: &str, sequence: u64, ns_instance_id: &str) {
        self.tx
            .send(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::Ack(ack(
                    app,
                    sequence,
                    ns_instance_id,
                ))),
            }))
            .await
            .unwrap();
    }
}

fn ack(app: &str, sequence: u64, ns_instance_id: &str) -> v3::LinkAck {
    v3::LinkAck {
        application_ids: Some(v3::ApplicationIdentifiers {
            application_id: app.into(),
        }),
        sequence,
        ns_instance_id: ns_instance_id.into(),
    }
}

/// Waits until `app-1`'s outbox is in `want`.
async fn outbox_becomes(hub: &LinkHub, want: OutboxState) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = hub.outbox_state("app-1").await.unwrap();
        if state == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox is {state:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn deliver(hub: &LinkHub, f_cnts: std::ops::RangeInclusive<u32>) {
    for f in f_cnts {
        hub.deliver("app-1", up(f)).await;
    }
    hub.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_resent_after_a_relink_and_acknowledged_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let ns = ns(dir.path(), 100).await;
    // Kept while no AS is linked.
    deliver(&ns.hub, 1..=3).await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 3,
            acknowledged: 0,
            kept: 3,
        },
    )
    .await;

    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    assert!(
        as_.ns_instance_id.starts_with("ns-a~"),
        "{}",
        as_.ns_instance_id
    );
    for want in 1..=3u64 {
        let m = as_.up().await;
        assert_eq!((m.sequence, f_cnt(&m)), (want, want as u32));
        assert_eq!(m.ns_instance_id, as_.ns_instance_id);
    }
    as_.quiet().await;
    // Cumulative: 1 and 2 are forgotten, 3 is kept.
    as_.ack("app-1", 2, &as_.ns_instance_id.clone()).await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 3,
            acknowledged: 2,
            kept: 1,
        },
    )
    .await;
    // Live messages follow in order.
    deliver(&ns.hub, 4..=4).await;
    assert_eq!(as_.up().await.sequence, 4);

    // The link drops before 3 and 4 are acknowledged: the next link gets them again, in
    // order, and not 1 or 2.
    let instance = as_.ns_instance_id.clone();
    drop(as_);
    let deadline = tokio::time::Instant::now() + WAIT;
    while ns.hub.is_linked("app-1") {
        assert!(tokio::time::Instant::now() < deadline, "link not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    assert_eq!(as_.ns_instance_id, instance);
    let (a, b) = (as_.up().await, as_.up().await);
    assert_eq!((a.sequence, f_cnt(&a)), (3, 3));
    assert_eq!((b.sequence, f_cnt(&b)), (4, 4));
    as_.quiet().await;

    // An AS that says in LinkStart what it processed gets only what follows.
    as_.ack("app-1", 3, &instance).await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 4,
            acknowledged: 3,
            kept: 1,
        },
    )
    .await;
    drop(as_);
    while ns.hub.is_linked("app-1") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut as_ = As::link(&ns.hub, vec![ack("app-1", 4, &instance)]).await;
    as_.quiet().await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 4,
            acknowledged: 4,
            kept: 0,
        },
    )
    .await;
    assert!(metrics(&ns.registry).contains("link_acknowledged_total 4"));
}

/// A crash may store an acknowledgement before the deletes of earlier ones (the writer
/// records the application's last one with each batch): a restarted NS neither resends
/// nor keeps such leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_leftovers_of_a_crash_are_deleted_not_resent() {
    use tern_networkserver::link::LINK_BACKLOG;
    let dir = tempfile::tempdir().unwrap();
    let leftover = {
        let ns = ns(dir.path(), 100).await;
        let mut as_ = As::link(&ns.hub, Vec::new()).await;
        deliver(&ns.hub, 1..=3).await;
        for want in 1..=3 {
            assert_eq!(as_.up().await.sequence, want);
        }
        ns.hub.flush().await;
        let stored = ns.store.scan(&LINK_BACKLOG, "", None, 10).await.unwrap();
        assert_eq!(stored.items.len(), 3);
        as_.ack("app-1", 3, &as_.ns_instance_id.clone()).await;
        outbox_becomes(
            &ns.hub,
            OutboxState {
                last: 3,
                acknowledged: 3,
                kept: 0,
            },
        )
        .await;
        ns.hub.flush().await;
        assert!(
            ns.store
                .scan(&LINK_BACKLOG, "", None, 10)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        ns.store.close().await.unwrap();
        stored.items[1].clone()
    };
    // What the crash left: message 2 still stored under an acknowledgement of 3.
    {
        let store = Store::open(&StoreConfig::default(), dir.path())
            .await
            .unwrap();
        let mut batch = tern_store::Batch::new();
        batch.put(
            &LINK_BACKLOG,
            leftover.key.clone(),
            leftover.value.clone(),
            tern_store::Expect::Any,
            Vec::new(),
        );
        store.commit(batch).await.unwrap();
        store.close().await.unwrap();
    }
    let ns = ns(dir.path(), 100).await;
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    as_.quiet().await;
    assert!(
        ns.store
            .scan(&LINK_BACKLOG, "", None, 10)
            .await
            .unwrap()
            .items
            .is_empty(),
        "the leftover is deleted at open"
    );
    deliver(&ns.hub, 4..=4).await;
    assert_eq!(as_.up().await.sequence, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_survive_an_ns_crash() {
    let dir = tempfile::tempdir().unwrap();
    let instance = {
        let ns = ns(dir.path(), 100).await;
        let mut as_ = As::link(&ns.hub, Vec::new()).await;
        deliver(&ns.hub, 1..=3).await;
        for want in 1..=3 {
            assert_eq!(as_.up().await.sequence, want);
        }
        as_.ack("app-1", 1, &as_.ns_instance_id.clone()).await;
        outbox_becomes(
            &ns.hub,
            OutboxState {
                last: 3,
                acknowledged: 1,
                kept: 2,
            },
        )
        .await;
        // The writer deletes acknowledged messages with its next batch: wait for it, so
        // that the crash below resends exactly the unacknowledged ones.
        ns.hub.flush().await;
        // The NS goes away without a word to the AS; its store is closed under it.
        ns.store.close().await.unwrap();
        as_.ns_instance_id.clone()
    };

    // A new NS on the same store: same instance, same numbering, 2 and 3 resent.
    let instance = {
        let ns = ns(dir.path(), 100).await;
        let mut as_ = As::link(&ns.hub, Vec::new()).await;
        assert_eq!(as_.ns_instance_id, instance);
        let (a, b) = (as_.up().await, as_.up().await);
        assert_eq!((a.sequence, f_cnt(&a)), (2, 2));
        assert_eq!((b.sequence, f_cnt(&b)), (3, 3));
        assert_eq!(a.ns_instance_id, instance);
        as_.quiet().await;
        // Everything acknowledged: the outbox is empty, but the numbering must go on.
        as_.ack("app-1", 3, &instance).await;
        outbox_becomes(
            &ns.hub,
            OutboxState {
                last: 3,
                acknowledged: 3,
                kept: 0,
            },
        )
        .await;
        ns.hub.flush().await;
        ns.store.close().await.unwrap();
        instance
    };

    let ns = ns(dir.path(), 100).await;
    deliver(&ns.hub, 4..=4).await;
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    let m = as_.up().await;
    assert_eq!((m.sequence, f_cnt(&m), m.ns_instance_id), (4, 4, instance));
    as_.quiet().await;
}

/// Staged messages are numbered at once but committed by their callers, in any order: a
/// message is sent only when every lower number is committed or given up, so that the
/// AS's cumulative acknowledgement never covers one it was not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_messages_are_sent_in_sequence_order_whatever_order_they_commit_in() {
    let dir = tempfile::tempdir().unwrap();
    let ns = ns(dir.path(), 100).await;
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    let mut staged = Vec::new();
    for f in 1..=4 {
        staged.push(ns.hub.stage("app-1", up(f)).await);
    }
    let [s1, s2, s3, s4] = <[_; 4]>::try_from(staged).unwrap();
    let commit = |s: &tern_networkserver::link::Staged| {
        let mut batch = tern_store::Batch::new();
        s.add_to(&mut batch);
        assert_eq!(batch.ops.len(), 1);
        ns.store.commit(batch)
    };
    // 2 is committed first: it waits for 1.
    commit(&s2).await.unwrap();
    s2.committed().await;
    as_.quiet().await;
    assert_eq!(ns.hub.outbox_state("app-1").await.unwrap().last, 0);
    commit(&s1).await.unwrap();
    s1.committed().await;
    assert_eq!(as_.up().await.sequence, 1);
    assert_eq!(as_.up().await.sequence, 2);
    // 3's commit fails (dropped unsettled): a gap, and 4 does not wait for it.
    drop(s3);
    commit(&s4).await.unwrap();
    s4.committed().await;
    let m = as_.up().await;
    assert_eq!((m.sequence, f_cnt(&m)), (4, 4));
    as_.quiet().await;
    // Messages handed over the usual way continue the numbering.
    deliver(&ns.hub, 5..=5).await;
    assert_eq!(as_.up().await.sequence, 5);
    as_.ack("app-1", 5, &as_.ns_instance_id.clone()).await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 5,
            acknowledged: 5,
            kept: 0,
        },
    )
    .await;
    // After a restart, a committed message above an uncommitted one is resent in order.
    let held = ns.hub.stage("app-1", up(6)).await;
    let next = ns.hub.stage("app-1", up(7)).await;
    commit(&next).await.unwrap();
    next.committed().await;
    as_.quiet().await;
    // The crash: 6 is never settled (`held` outlives the store).
    ns.store.close().await.unwrap();
    drop(as_);
    let ns = self::ns(dir.path(), 100).await;
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    let m = as_.up().await;
    assert_eq!((m.sequence, f_cnt(&m)), (7, 7));
    as_.quiet().await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_settled_at_once_over_the_limit_are_dropped_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let ns = ns(dir.path(), 10).await;
    let mut staged = Vec::new();
    let mut batch = tern_store::Batch::new();
    for f in 1..=200 {
        let s = ns.hub.stage("app-1", up(f)).await;
        s.add_to(&mut batch);
        staged.push(s);
    }
    ns.store.commit(batch).await.unwrap();
    // All settle together (as uplinks committed by one group commit do): each finds the
    // outbox over its limit while the others' evictions are still being committed.
    futures_util::future::join_all(staged.into_iter().map(|s| s.committed())).await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 200,
            acknowledged: 0,
            kept: 10,
        },
    )
    .await;
    assert!(
        metrics(&ns.registry).contains(r#"link_dropped_total{reason="outbox_full"} 190"#),
        "{}",
        metrics(&ns.registry)
    );
    // The store keeps the newest ten, which a new link gets in order.
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    for sequence in 191..=200 {
        assert_eq!(as_.up().await.sequence, sequence);
    }
    as_.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_starts_a_new_numbering_epoch() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = ns(a.path(), 10).await.hub.ns_instance_id().await.unwrap();
    let second = ns(b.path(), 10).await.hub.ns_instance_id().await.unwrap();
    // Same configured instance, different stores: an AS must not take one's sequence
    // numbers for the other's.
    assert!(first.starts_with("ns-a~") && second.starts_with("ns-a~"));
    assert_ne!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_counted_and_with_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let ns = ns(dir.path(), 3).await;
    let mut drops = ns
        .events
        .subscribe(Filter::all().name("ns.link.drop"))
        .await
        .unwrap();
    deliver(&ns.hub, 1..=5).await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 5,
            acknowledged: 0,
            kept: 3,
        },
    )
    .await;
    assert!(
        metrics(&ns.registry).contains(r#"link_dropped_total{reason="outbox_full"} 2"#),
        "{}",
        metrics(&ns.registry)
    );
    // One event per drop (the writer may have committed the five in several batches).
    let mut dropped = 0;
    while dropped < 2 {
        let event = tokio::time::timeout(WAIT, drops.recv())
            .await
            .expect("ns.link.drop event")
            .unwrap();
        let data = event.data.clone().unwrap();
        let text = |v: Option<&pbjson_types::Value>| match v.and_then(|v| v.kind.clone()) {
            Some(pbjson_types::value::Kind::StringValue(s)) => s,
            other => panic!("{other:?} in {data:?}"),
        };
        assert_eq!(text(data.fields.get("name")), "outbox_full");
        assert!(text(data.fields.get("message")).contains("\"app-1\""));
        let Some(pbjson_types::value::Kind::StructValue(attributes)) =
            data.fields.get("attributes").and_then(|v| v.kind.clone())
        else {
            panic!("no attributes in {data:?}");
        };
        dropped += text(attributes.fields.get("dropped"))
            .parse::<u64>()
            .unwrap();
    }
    assert_eq!(dropped, 2);
    // The AS gets the newest three, with a gap that shows the drop.
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    for want in 3..=5 {
        assert_eq!(as_.up().await.sequence, want);
    }
    as_.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acknowledgements_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ns = ns(dir.path(), 100).await;
    let mut as_ = As::link(&ns.hub, Vec::new()).await;
    deliver(&ns.hub, 1..=2).await;
    as_.up().await;
    as_.up().await;
    let instance = as_.ns_instance_id.clone();
    let unchanged = OutboxState {
        last: 2,
        acknowledged: 0,
        kept: 2,
    };
    let cases = [
        (
            ack("app-1", 3, &instance),
            "ahead",
            "LinkAck.sequence 3 of application \"app-1\" is ahead of the last sequence this \
             Network Server sent, 2"
                .to_owned(),
        ),
        (
            ack("app-1", 1, "ns-b~00"),
            "other_instance",
            format!("LinkAck.ns_instance_id \"ns-b~00\" is not this Network Server's {instance:?}"),
        ),
        (
            ack("app-2", 1, &instance),
            "not_linked",
            "application \"app-2\" is not linked on this link".to_owned(),
        ),
        (
            ack("", 1, &instance),
            "malformed",
            "LinkAck.application_ids.application_id is empty".to_owned(),
        ),
    ];
    for (bad, reason, message) in cases {
        as_.tx
            .send(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::Ack(bad.clone())),
            }))
            .await
            .unwrap();
        let Some(v3::link_response::Frame::AckRefused(refused)) = as_.next(WAIT).await else {
            panic!("no ack_refused for {bad:?}");
        };
        assert_eq!(refused.ack.as_ref(), Some(&bad));
        let error = refused.error.unwrap();
        if reason == "ahead" {
            // Where the numbering really is, for an AS whose memory is ahead.
            assert_eq!(error.attributes.get("last").map(String::as_str), Some("2"));
        }
        assert_eq!((error.name.as_str(), error.message), (reason, message));
        assert_eq!(ns.hub.outbox_state("app-1").await.unwrap(), unchanged);
        assert!(
            metrics(&ns.registry)
                .contains(&format!("link_ack_refused_total{{reason=\"{reason}\"}} 1")),
            "{}",
            metrics(&ns.registry)
        );
    }
    // The link is still up and a right acknowledgement still works.
    as_.ack("app-1", 2, &instance).await;
    outbox_becomes(
        &ns.hub,
        OutboxState {
            last: 2,
            acknowledged: 2,
            kept: 0,
        },
    )
    .await;
    deliver(&ns.hub, 3..=3).await;
    assert_eq!(as_.up().await.sequence, 3);
}
