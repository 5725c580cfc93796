//! The in-process bus, the builder, the catalogue and the configuration.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tern_api::v3;
use tern_events::definitions::{self, catalogue};
use tern_events::{
    CorrelationIds, Encoding, Event, EventBus, EventsConfig, Filter, RecvError, Stats, Subscription,
};

fn device(app: &str, dev: &str) -> v3::EndDeviceIdentifiers {
    v3::EndDeviceIdentifiers::new(app, dev)
}

fn app(id: &str) -> v3::ApplicationIdentifiers {
    v3::ApplicationIdentifiers {
        application_id: id.into(),
    }
}

fn gateway(id: &str) -> v3::GatewayIdentifiers {
    v3::GatewayIdentifiers {
        gateway_id: id.into(),
        eui: Vec::new(),
    }
}

/// Everything queued on `sub`, by unique ID; panics on lag or close.
fn drain(sub: &mut Subscription) -> Vec<Arc<v3::Event>> {
    let mut events = Vec::new();
    while let Some(event) = sub.try_recv().expect("no lag, not closed") {
        events.push(event);
    }
    events
}

fn names(events: &[Arc<v3::Event>]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

#[tokio::test]
async fn builder_fills_time_origin_id_and_correlation_ids() {
    let uplink = v3::UplinkMessage {
        raw_payload: vec![0x40, 1, 2, 3, 4],
        correlation_ids: vec!["gs:uplink:X".into()],
        ..Default::default()
    };
    let before = std::time::SystemTime::now();
    let event = CorrelationIds::from(vec!["gs:uplink:X".to_owned()])
        .scope(async {
            Event::new(&definitions::NS_UP_DATA_RECEIVE)
                .with_identifiers([device("app-1", "dev-1")])
                .with_data(&uplink)
                .with_correlation_ids(["ns:uplink:Y", "gs:uplink:X"])
                .with_context("tenant", b"acme".to_vec())
                .into_proto()
        })
        .await;
    assert_eq!(event.name, "ns.up.data.receive");
    assert_eq!(event.correlation_ids, ["gs:uplink:X", "ns:uplink:Y"]);
    assert_eq!(event.origin, tern_events::origin());
    assert!(!event.origin.is_empty());
    assert_eq!(event.unique_id.len(), 26, "a ULID: {}", event.unique_id);
    let time = event.time.unwrap().to_datetime().unwrap();
    assert!(std::time::SystemTime::from(time) >= before - Duration::from_secs(1));
    assert_eq!(event.data_type, "tern.v3.UplinkMessage");
    assert_eq!(
        event.data_as::<v3::UplinkMessage>().unwrap().unwrap(),
        uplink
    );
    assert_eq!(event.context["tenant"], b"acme");
    let other = Event::new(&definitions::NS_UP_DATA_RECEIVE).into_proto();
    assert_ne!(other.unique_id, event.unique_id);
    assert!(other.correlation_ids.is_empty(), "no scope, no IDs");
    assert!(other.data.is_none() && other.data_type.is_empty());
}

#[tokio::test]
async fn mac_events_carry_free_fields() {
    let event = Event::new(&definitions::NS_MAC_LINK_ADR_REQUEST)
        .with_identifiers([device("app-1", "dev-1")])
        .with_data(
            &tern_events::Fields::new()
                .with("dataRateIndex", 5)
                .with("txPowerIndex", 1),
        )
        .into_proto();
    assert_eq!(event.data_type, "google.protobuf.Struct");
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["data"]["dataRateIndex"], 5.0);
}

/// One event of each kind of entity, and one about several.
fn publish_sample(bus: &EventBus) {
    let uplink = v3::UplinkMessage::default();
    bus.publish(
        Event::new(&definitions::GS_UP_RECEIVE)
            .with_identifiers([gateway("gw-1")])
            .with_data(&uplink),
    );
    bus.publish(
        Event::new(&definitions::NS_UP_DATA_RECEIVE)
            .with_identifiers([device("app-1", "dev-1")])
            .with_data(&uplink),
    );
    bus.publish(
        Event::new(&definitions::NS_UP_DATA_DROP)
            .with_identifiers([device("app-1", "dev-2")])
            .with_data(&v3::ErrorDetails {
                name: "f_cnt_too_low".into(),
                ..Default::default()
            }),
    );
    bus.publish(
        Event::new(&definitions::IS_APPLICATION_UPDATE)
            .with_identifiers([app("app-1")])
            .with_data(&v3::Application::default()),
    );
    bus.publish(
        Event::new(&definitions::NS_UP_DATA_RECEIVE)
            .with_identifiers([device("app-2", "dev-1")])
            .with_data(&uplink),
    );
    // About a device, its application and a gateway at once.
    bus.publish(
        Event::new(&definitions::GS_UP_DROP)
            .with_identifiers([v3::EntityIdentifiers::default()])
            .with_identifiers([device("app-1", "dev-1")])
            .with_identifiers([app("app-1")])
            .with_identifiers([gateway("gw-1")])
            .with_data(&v3::ErrorDetails::default()),
    );
}

#[tokio::test]
async fn filters_select_by_entity_and_name() {
    let bus = EventBus::default();
    assert_eq!(bus.kind(), "in-process");
    let sub = |f: Filter| {
        let bus = bus.clone();
        async move { bus.subscribe(f).await.unwrap() }
    };
    let mut all = sub(Filter::all()).await;
    let mut app1 = sub(Filter::all().application("app-1")).await;
    let mut dev1 = sub(Filter::all().device("app-1", "dev-1")).await;
    let mut gw1 = sub(Filter::all().gateway("gw-1")).await;
    let mut ns_up = sub(Filter::all().name("ns.up.*")).await;
    let mut drops = sub(Filter::all().application("app-1").name("*.drop")).await;
    let mut overlapping = sub(Filter::all()
        .device("app-1", "dev-1")
        .application("app-1")
        .gateway("gw-1"))
    .await;
    let mut nothing = sub(Filter::all().user("nobody")).await;

    publish_sample(&bus);

    assert_eq!(drain(&mut all).len(), 6);
    assert_eq!(
        names(&drain(&mut app1)),
        [
            "ns.up.data.receive",
            "ns.up.data.drop",
            "is.application.update",
            "gs.up.drop"
        ]
    );
    assert_eq!(
        names(&drain(&mut dev1)),
        ["ns.up.data.receive", "gs.up.drop"]
    );
    assert_eq!(names(&drain(&mut gw1)), ["gs.up.receive", "gs.up.drop"]);
    assert_eq!(
        names(&drain(&mut ns_up)),
        [
            "ns.up.data.receive",
            "ns.up.data.drop",
            "ns.up.data.receive"
        ]
    );
    assert_eq!(names(&drain(&mut drops)), ["ns.up.data.drop", "gs.up.drop"]);
    let got = drain(&mut overlapping);
    assert_eq!(got.len(), 5, "each event once: {:?}", names(&got));
    let ids: HashSet<_> = got.iter().map(|e| e.unique_id.clone()).collect();
    assert_eq!(ids.len(), 5);
    assert!(drain(&mut nothing).is_empty());
    assert_eq!(
        bus.stats(),
        Stats {
            published: 6,
            skipped: 0,
            dropped: 0,
            lagged: 0
        }
    );
}

#[tokio::test]
async fn filter_from_stream_request_and_matches() {
    let request = v3::StreamEventsRequest {
        identifiers: vec![v3::EntityIdentifiers {
            ids: Some(v3::entity_identifiers::Ids::ApplicationIds(app("app-1"))),
        }],
        names: vec!["ns.*".into()],
        ..Default::default()
    };
    let filter = Filter::from_request(&request);
    filter.validate().unwrap();
    let ev = Event::new(&definitions::NS_UP_JOIN_RECEIVE)
        .with_identifiers([device("app-1", "d")])
        .into_proto();
    assert!(filter.matches(&ev));
    let ev = Event::new(&definitions::AS_UP_DATA_FORWARD)
        .with_identifiers([device("app-1", "d")])
        .into_proto();
    assert!(!filter.matches(&ev));
    let bad = Filter::all().name("ns.UP");
    let err = EventBus::default().subscribe(bad).await.unwrap_err();
    assert!(err.to_string().contains("names[0] \"ns.UP\""), "{err}");
}

#[tokio::test]
async fn slow_subscriber_lags_and_is_told_how_much() {
    let bus = EventBus::in_process(4);
    let mut slow = bus.subscribe(Filter::all()).await.unwrap();
    let mut fast = bus.subscribe(Filter::all()).await.unwrap();
    let mut seen_fast = Vec::new();
    for i in 0..10u32 {
        bus.publish(
            Event::new(&definitions::GS_STATUS_RECEIVE)
                .with_identifiers([gateway("gw-1")])
                .with_context("seq", i.to_string().into_bytes()),
        );
        seen_fast.extend(drain(&mut fast));
    }
    assert_eq!(
        seen_fast.len(),
        10,
        "a slow subscriber does not slow others"
    );
    assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(6));
    // Then the oldest events it still had, in order.
    for i in 0..4u32 {
        let event = slow.recv().await.unwrap();
        assert_eq!(event.context["seq"], i.to_string().into_bytes());
    }
    assert_eq!(slow.try_recv(), Ok(None));
    assert_eq!(bus.stats().lagged, 6);

    // Publishing never waits, even for a subscriber nobody reads.
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        bus.publish(Event::new(&definitions::GS_STATUS_RECEIVE));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        slow.recv().await.unwrap_err(),
        RecvError::Lagged(10_000 - 4)
    );
    assert_eq!(
        fast.recv().await.unwrap_err(),
        RecvError::Lagged(10_000 - 4)
    );
    assert_eq!(drain(&mut fast).len(), 4);

    // A dropped subscription no longer counts.
    drop(slow);
    let lagged = bus.stats().lagged;
    for _ in 0..4 {
        bus.publish(Event::new(&definitions::GS_STATUS_RECEIVE));
    }
    assert_eq!(bus.stats().lagged, lagged);
    assert_eq!(drain(&mut fast).len(), 4);
}

#[tokio::test]
async fn subscription_is_a_stream_that_ends_with_the_bus() {
    let bus = EventBus::default();
    let mut sub = bus.subscribe(Filter::all().gateway("gw-1")).await.unwrap();
    let publisher = bus.clone();
    tokio::spawn(async move {
        for _ in 0..3 {
            publisher.publish(
                Event::new(&definitions::GS_GATEWAY_CONNECT).with_identifiers([gateway("gw-1")]),
            );
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    drop(bus);
    let events: Vec<_> = (&mut sub).collect().await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(Result::is_ok));
    assert_eq!(sub.recv().await.unwrap_err(), RecvError::Closed);
}

#[test]
fn catalogue_is_complete_and_well_formed() {
    let all = catalogue();
    let mut seen = HashSet::new();
    for def in &all {
        assert!(seen.insert(def.name), "{} defined twice", def.name);
        let role = def.name.split('.').next().unwrap();
        assert!(
            ["gs", "ns", "js", "as", "is"].contains(&role),
            "{}: unknown role",
            def.name
        );
        assert!(
            def.name
                .split('.')
                .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')),
            "{}: not a dotted lowercase name",
            def.name
        );
        assert!(def.description.ends_with('.'), "{}: description", def.name);
        assert!(!def.data_type.is_empty(), "{}: no data type", def.name);
        assert!(Filter::all().name(def.name).validate().is_ok());
    }
    let required = [
        "gs.gateway.connect",
        "gs.gateway.disconnect",
        "gs.status.receive",
        "gs.up.receive",
        "gs.up.drop",
        "gs.down.send",
        "gs.down.tx.success",
        "gs.down.tx.fail",
        "ns.up.data.receive",
        "ns.up.data.drop",
        "ns.up.join.receive",
        "ns.up.join.accept",
        "ns.up.join.reject",
        "ns.down.data.schedule",
        "ns.down.join.schedule",
        "ns.mac.link_adr.request",
        "js.join.accept",
        "js.join.reject",
        "as.up.data.forward",
        "as.down.data.receive",
        "as.down.queue.invalidated",
    ];
    for name in required {
        assert!(seen.contains(name), "{name} missing");
    }
    for entity in [
        "user",
        "organization",
        "application",
        "gateway",
        "end_device",
        "api_key",
    ] {
        for op in ["create", "update", "delete"] {
            let name = format!("is.{entity}.{op}");
            assert!(seen.contains(name.as_str()), "{name} missing");
        }
    }
    assert_eq!(
        definitions::lookup("ns.up.data.drop").unwrap().data_type,
        "tern.v3.ErrorDetails"
    );
    assert_eq!(definitions::GS_UP_DROP.data_type(), "tern.v3.ErrorDetails");
    assert!(definitions::lookup("ns.up.nope").is_none());

    // The README documents every event.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("pkg/events/README.md");
    for def in &all {
        assert!(
            readme.contains(&format!("`{}`", def.name)),
            "README.md does not list {}",
            def.name
        );
    }
}

#[derive(serde::Deserialize)]
struct Root {
    events: EventsConfig,
}

#[test]
fn config_is_kebab_case_with_defaults() {
    let config = EventsConfig::default();
    assert!(config.nats.is_none());
    assert_eq!(config.buffer, 4096);

    let root: Root = toml::from_str(
        r#"
        [events]
        buffer = 128
        [events.nats]
        url = "nats://127.0.0.1:4222"
        "#,
    )
    .unwrap();
    let nats = root.events.nats.unwrap();
    assert_eq!(nats.url, "nats://127.0.0.1:4222");
    assert_eq!(nats.subject_prefix, "tern");
    assert_eq!(nats.encoding, Encoding::Json);
    assert_eq!(nats.credentials, None);
    assert_eq!(root.events.buffer, 128);

    let root: Root = toml::from_str(
        r#"
        [events.nats]
        url = "nats://a:4222"
        subject-prefix = "eu1.tern"
        credentials = "/etc/tern/nats.creds"
        encoding = "protobuf"
        "#,
    )
    .unwrap();
    let nats = root.events.nats.unwrap();
    assert_eq!(nats.subject_prefix, "eu1.tern");
    assert_eq!(nats.encoding, Encoding::Protobuf);
    assert_eq!(root.events.buffer, 4096);

    let err = toml::from_str::<Root>("[events]\nbufer = 1\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown field `bufer`"), "{err}");
    let err = toml::from_str::<Root>("[events.nats]\nurl = \"x\"\nsubject_prefix = \"y\"\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown field `subject_prefix`"), "{err}");
    let err = toml::from_str::<Root>("[events.nats]\nsubject-prefix = \"y\"\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing field `url`"), "{err}");
}

#[tokio::test]
async fn default_config_connects_in_process() {
    let bus = EventBus::connect(&EventsConfig::default()).await.unwrap();
    assert_eq!(bus.kind(), "in-process");
    assert_eq!(bus.health(), Ok(()));
    bus.flush().await.unwrap();
    let err = EventBus::connect(&EventsConfig {
        buffer: 0,
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "events.buffer = \"0\": must be at least 1");
}
