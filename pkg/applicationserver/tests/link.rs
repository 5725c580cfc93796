//! The link pipeline against a test-side NS: join-accept → uplink decrypted (lora-packet
//! vector) and decoded, formatter failures still delivered, downlinks encrypted with the
//! counter the NS requires, and invalidated downlinks re-encrypted.

mod common;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use lorawan::Direction;
use serde_json::Value;
use tern_api::v3;
use tern_applicationserver::{AppMessage, TopicKind};
use tokio::sync::broadcast;

const SCRIPT: &str = r#"
function decodeUplink(input) {
  if (input.fPort === 2) { throw new Error("boom on port 2"); }
  return { data: { text: String.fromCharCode.apply(null, input.bytes), port: input.fPort }, warnings: [] };
}
"#;

async fn next_of(rx: &mut broadcast::Receiver<Arc<AppMessage>>, kind: TopicKind) -> Value {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("message in time")
            .expect("fan-out open");
        if msg.kind == kind {
            return serde_json::from_slice(&msg.json).unwrap();
        }
    }
}

fn decrypt(d: &v3::ApplicationDownlink) -> Vec<u8> {
    let mut p = d.frm_payload.clone();
    lorawan::crypto::decrypt_frm_payload(
        &app_s_key(),
        Direction::Downlink,
        lorawan::DevAddr(DEV_ADDR),
        d.f_cnt,
        &mut p,
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_uplink_downlink_and_invalidation() {
    let h = start(Keys::default()).await;
    let core = h.asrv.core().unwrap().clone();
    core.set_application_formatters(
        "app-1",
        v3::MessagePayloadFormatters {
            up_formatter: v3::PayloadFormatter::FormatterJavascript as i32,
            up_formatter_parameter: SCRIPT.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut rx = h.asrv.subscribe().unwrap();
    let sk = b"session-1".to_vec();

    // Join, then the vector's uplink: decrypted to "test" and decoded by the script.
    h.ns.send(join_accept("app-1", "dev-1", &sk));
    let join = next_of(&mut rx, TopicKind::Join).await;
    assert_eq!(join["end_device_ids"]["device_id"], "dev-1");
    assert_eq!(join["join_accept"]["session_key_id"], B64.encode(&sk));
    assert!(!join.to_string().contains("app_s_key"), "{join}");

    h.ns.send(uplink("app-1", "dev-1", &sk, 1));
    let up = next_of(&mut rx, TopicKind::Up).await;
    let msg = &up["uplink_message"];
    assert_eq!(msg["frm_payload"], B64.encode(b"test"));
    assert_eq!(msg["f_cnt"], 2);
    assert_eq!(msg["f_port"], 1);
    assert_eq!(msg["decoded_payload"]["text"], "test");
    assert_eq!(msg["decoded_payload"]["port"], 1);
    assert_eq!(up["end_device_ids"]["dev_addr"], "49BE7DF1");
    assert_eq!(
        up["end_device_ids"]["application_ids"]["application_id"],
        "app-1"
    );
    assert_eq!(
        msg["rx_metadata"][0]["gateway_ids"]["eui"],
        "AAAAAAAAAAAAAAAA"
    );
    assert_eq!(msg["settings"]["data_rate"]["lora"]["spreading_factor"], 7);
    assert_eq!(msg["settings"]["frequency"], "868100000");

    // A formatter that throws: the uplink still arrives, with the error as a warning.
    h.ns.send(uplink("app-1", "dev-1", &sk, 2));
    let up = next_of(&mut rx, TopicKind::Up).await;
    let msg = &up["uplink_message"];
    assert_eq!(msg["frm_payload"], B64.encode(b"test"));
    assert!(msg.get("decoded_payload").is_none(), "{msg}");
    assert!(
        msg["decoded_payload_warnings"][0]
            .as_str()
            .unwrap()
            .contains("boom on port 2"),
        "{msg}"
    );
    // Every message was acknowledged once handed on.
    h.ns.wait_for("acks 1..=3", |s| s.acks.ends_with(&[3]))
        .await;

    // A downlink: the NS requires counter 7; the AS's first guess is refused and it
    // re-encrypts with 7. No accepted frame carries another counter.
    *h.ns.expect.lock().unwrap() = (sk.clone(), 7);
    h.asrv
        .push(
            &ids("app-1", "dev-1"),
            vec![v3::ApplicationDownlink {
                f_port: 5,
                frm_payload: b"hi".to_vec(),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    {
        let seen = h.ns.seen.lock().unwrap();
        assert_eq!(seen.accepted.len(), 1);
        let d = &seen.accepted[0].downlinks[0];
        assert_eq!((d.f_cnt, d.f_port), (7, 5));
        assert_eq!(d.session_key_id, sk);
        assert_eq!(decrypt(d), b"hi");
        assert!(seen.refused.iter().all(|op| op.downlinks[0].f_cnt != 7));
    }
    // The next one uses the counter the NS reported: no refusal.
    let refused_before = h.ns.seen.lock().unwrap().refused.len();
    h.asrv
        .push(
            &ids("app-1", "dev-1"),
            vec![v3::ApplicationDownlink {
                f_port: 6,
                frm_payload: b"yo".to_vec(),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    {
        let seen = h.ns.seen.lock().unwrap();
        assert_eq!(seen.refused.len(), refused_before);
        assert_eq!(seen.accepted[1].downlinks[0].f_cnt, 8);
        assert_eq!(decrypt(&seen.accepted[1].downlinks[0]), b"yo");
    }

    // The NS took counters 9 and 10 for MAC-only frames and invalidates the queue: the AS
    // re-encrypts both downlinks, in order, from 11.
    let old: Vec<_> =
        h.ns.seen
            .lock()
            .unwrap()
            .accepted
            .iter()
            .flat_map(|op| op.downlinks.clone())
            .collect();
    *h.ns.expect.lock().unwrap() = (sk.clone(), 11);
    h.ns.send(v3::ApplicationUp {
        end_device_ids: Some(ids("app-1", "dev-1")),
        up: Some(v3::application_up::Up::DownlinkQueueInvalidated(
            v3::ApplicationInvalidatedDownlinks {
                downlinks: old,
                next_a_f_cnt_down: 11,
                session_key_id: sk.clone(),
            },
        )),
        ..Default::default()
    });
    let inv = next_of(&mut rx, TopicKind::DownInvalidated).await;
    assert_eq!(
        inv["downlink_queue_invalidated"]["downlinks"][0]["frm_payload"],
        B64.encode(b"hi")
    );
    {
        let seen = h.ns.seen.lock().unwrap();
        let op = seen.accepted.last().unwrap();
        let counters: Vec<u32> = op.downlinks.iter().map(|d| d.f_cnt).collect();
        assert_eq!(counters, [11, 12]);
        assert_eq!(decrypt(&op.downlinks[0]), b"hi");
        assert_eq!(decrypt(&op.downlinks[1]), b"yo");
    }

    // Downlink events arrive with the payload in clear.
    let sent = h.ns.seen.lock().unwrap().accepted.last().unwrap().downlinks[0].clone();
    h.ns.send(v3::ApplicationUp {
        end_device_ids: Some(ids("app-1", "dev-1")),
        up: Some(v3::application_up::Up::DownlinkSent(sent)),
        ..Default::default()
    });
    let ev = next_of(&mut rx, TopicKind::DownSent).await;
    assert_eq!(ev["downlink_sent"]["frm_payload"], B64.encode(b"hi"));
    assert_eq!(ev["downlink_sent"]["f_cnt"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_downlinks_are_refused_and_change_nothing() {
    let h = start(Keys::default()).await;
    // No session yet.
    let err = h
        .asrv
        .push(
            &ids("app-1", "dev-9"),
            vec![v3::ApplicationDownlink {
                f_port: 1,
                frm_payload: vec![1],
                ..Default::default()
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    // FPort 0 is the MAC layer's.
    let err = h
        .asrv
        .push(
            &ids("app-1", "dev-9"),
            vec![v3::ApplicationDownlink {
                f_port: 0,
                frm_payload: vec![1],
                ..Default::default()
            }],
        )
        .await
        .unwrap_err();
    assert!(err.message().contains("downlinks[0].f_port"), "{err}");
    assert!(h.ns.seen.lock().unwrap().accepted.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_requeues_old_downlinks_and_unknown_keys_come_from_the_join_server() {
    let sk2 = b"session-2".to_vec();
    let h = start_full(
        Keys::default(),
        Some(Arc::new(FakeJs {
            session_key_id: b"session-js".to_vec(),
        })),
        |_| {},
    )
    .await;
    let mut rx = h.asrv.subscribe().unwrap();
    let sk1 = b"session-1".to_vec();
    h.ns.send(join_accept("app-1", "dev-1", &sk1));
    next_of(&mut rx, TopicKind::Join).await;
    *h.ns.expect.lock().unwrap() = (sk1.clone(), 3);
    h.asrv
        .push(
            &ids("app-1", "dev-1"),
            vec![v3::ApplicationDownlink {
                f_port: 9,
                frm_payload: b"old".to_vec(),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    let old = h.ns.seen.lock().unwrap().accepted[0].downlinks.clone();
    assert_eq!(old[0].f_cnt, 3);

    // A rejoin: the NS hands back the old session's queue; the AS re-encrypts it for the
    // new session, from its first counter.
    *h.ns.expect.lock().unwrap() = (sk2.clone(), 0);
    let mut rejoin = join_accept("app-1", "dev-1", &sk2);
    if let Some(v3::application_up::Up::JoinAccept(j)) = &mut rejoin.up {
        j.invalidated_downlinks = old;
    }
    h.ns.send(rejoin);
    next_of(&mut rx, TopicKind::Join).await;
    {
        let seen = h.ns.seen.lock().unwrap();
        let d = &seen.accepted.last().unwrap().downlinks[0];
        assert_eq!((d.session_key_id.as_slice(), d.f_cnt), (sk2.as_slice(), 0));
        assert_eq!(decrypt(d), b"old");
    }

    // An uplink of a session the AS was never sent: its AppSKey comes from the JS.
    h.ns.send(uplink("app-1", "dev-1", b"session-js", 1));
    let up = next_of(&mut rx, TopicKind::Up).await;
    assert_eq!(up["uplink_message"]["frm_payload"], B64.encode(b"test"));

    // One nobody knows is not delivered, but acknowledged (it would block the stream) and
    // counted.
    h.ns.send(uplink("app-1", "dev-1", b"session-unknown", 1));
    h.ns.wait_for("the ack of the undecryptable uplink", |s| {
        s.acks.ends_with(&[4])
    })
    .await;
    let dropped = h
        .asrv
        .core()
        .unwrap()
        .metrics()
        .up_dropped
        .get_or_create(&vec![("reason", "no_app_s_key".to_owned())])
        .get();
    assert_eq!(dropped, 1);
}
