//! `EventBus::wants` and `publish_with`: an event nobody can receive is not even built.

use std::cell::Cell;
use std::sync::Arc;

use tern_api::v3;
use tern_events::definitions::{self, catalogue};
use tern_events::{CorrelationIds, Definition, Event, EventBus, Filter, Subscription};

fn uplink() -> v3::UplinkMessage {
    v3::UplinkMessage {
        raw_payload: vec![0x40, 0x04, 0x03, 0x02, 0x01, 0x80, 0x01, 0x00, 0x01, 0xa6],
        correlation_ids: vec!["gs:uplink:01J9Z3QK5E4Y7X8W2V1T0S9R8P".into()],
        ..Default::default()
    }
}

fn device() -> v3::EndDeviceIdentifiers {
    v3::EndDeviceIdentifiers::new("app-1", "dev-1")
}

/// Publishes an `ns.up.data.receive` through `publish_with`; says whether it was built.
fn publish_receive(bus: &EventBus, up: &v3::UplinkMessage) -> bool {
    let built = Cell::new(false);
    bus.publish_with(&definitions::NS_UP_DATA_RECEIVE, |e| {
        built.set(true);
        e.with_identifiers([device()])
            .with_correlation_ids(["ns:uplink:A"])
            .with_data(up)
    });
    built.get()
}

fn drain(sub: &mut Subscription) -> Vec<Arc<v3::Event>> {
    let mut events = Vec::new();
    while let Some(event) = sub.try_recv().expect("no lag, not closed") {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn nobody_listening_builds_nothing() {
    let bus = EventBus::in_process(16);
    for def in catalogue() {
        let def: Definition = Definition::new(def.name, def.description);
        assert!(!bus.wants(&def), "{}", def.name());
    }
    assert!(!bus.wants(&definitions::NS_UP_DATA_RECEIVE));
    assert!(!publish_receive(&bus, &uplink()), "the closure ran");
    let stats = bus.stats();
    assert_eq!((stats.published, stats.skipped), (0, 1));
}

#[tokio::test]
async fn a_filter_for_other_names_is_not_a_listener() {
    let bus = EventBus::in_process(16);
    // Like the Identity Server's and the Gateway Server's own subscriptions.
    let _is = bus.subscribe(Filter::all().name("is.*")).await.unwrap();
    let _gs = bus
        .subscribe(Filter::all().name("is.gateway.*"))
        .await
        .unwrap();
    let _drops = bus.subscribe(Filter::all().name("*.drop")).await.unwrap();
    assert!(!bus.wants(&definitions::NS_UP_DATA_RECEIVE));
    assert!(!bus.wants(&definitions::GS_UP_RECEIVE));
    assert!(!bus.wants(&definitions::AS_UP_DATA_FORWARD));
    assert!(bus.wants(&definitions::IS_GATEWAY_UPDATE));
    assert!(bus.wants(&definitions::NS_UP_DATA_DROP));
    assert!(bus.wants(&definitions::GS_UP_DROP));
    assert!(!publish_receive(&bus, &uplink()));
    assert_eq!(bus.stats().skipped, 1);
}

#[tokio::test]
async fn a_matching_subscriber_gets_the_same_event_as_with_publish() {
    let bus = EventBus::in_process(16);
    // An entity filter does not make `wants` false: only names count.
    let mut sub = bus
        .subscribe(Filter::all().application("app-1").name("ns.up.*"))
        .await
        .unwrap();
    let mut other_app = bus
        .subscribe(Filter::all().application("app-2"))
        .await
        .unwrap();
    assert!(bus.wants(&definitions::NS_UP_DATA_RECEIVE));
    let up = uplink();
    CorrelationIds::from(vec!["gs:uplink:X".to_owned()])
        .scope(async {
            assert!(publish_receive(&bus, &up));
            bus.publish(
                Event::new(&definitions::NS_UP_DATA_RECEIVE)
                    .with_identifiers([device()])
                    .with_correlation_ids(["ns:uplink:A"])
                    .with_data(&up),
            );
        })
        .await;
    let got = drain(&mut sub);
    assert_eq!(got.len(), 2);
    let (lazy, eager) = (&got[0], &got[1]);
    assert_ne!(lazy.unique_id, eager.unique_id);
    // Everything but the per-event ULID and time is the same.
    let same = |e: &v3::Event| v3::Event {
        unique_id: String::new(),
        time: None,
        ..e.clone()
    };
    assert_eq!(same(lazy), same(eager));
    assert_eq!(lazy.name, "ns.up.data.receive");
    assert_eq!(lazy.data_type, "tern.v3.UplinkMessage");
    assert_eq!(lazy.correlation_ids, ["gs:uplink:X", "ns:uplink:A"]);
    assert!(lazy.time.is_some());
    let back: v3::UplinkMessage = lazy.data_as().unwrap().unwrap();
    assert_eq!(back, up);
    assert!(drain(&mut other_app).is_empty());
    let stats = bus.stats();
    assert_eq!((stats.published, stats.skipped), (2, 0));
}

#[tokio::test]
async fn subscribing_later_sees_later_events_and_dropping_stops_them() {
    let bus = EventBus::in_process(16);
    let up = uplink();
    assert!(!publish_receive(&bus, &up));

    let mut all = bus.subscribe(Filter::all()).await.unwrap();
    assert!(bus.wants(&definitions::NS_UP_DATA_RECEIVE));
    assert!(publish_receive(&bus, &up));
    let got = drain(&mut all);
    assert_eq!(got.len(), 1, "only the event after subscribe");
    assert_eq!(got[0].name, "ns.up.data.receive");

    let mut ns = bus.subscribe(Filter::all().name("ns.*")).await.unwrap();
    drop(all);
    assert!(bus.wants(&definitions::NS_UP_DATA_RECEIVE));
    assert!(!bus.wants(&definitions::GS_UP_RECEIVE), "only ns.* is left");
    assert!(publish_receive(&bus, &up));
    assert_eq!(drain(&mut ns).len(), 1);

    drop(ns);
    assert!(!bus.wants(&definitions::NS_UP_DATA_RECEIVE));
    assert!(!publish_receive(&bus, &up));
    let stats = bus.stats();
    assert_eq!((stats.published, stats.skipped), (2, 2));
}

#[tokio::test]
async fn definitions_outside_the_catalogue_ask_the_filters() {
    const CUSTOM: Definition<v3::ErrorDetails> =
        Definition::new("xx.custom.happen", "Something outside the catalogue.");
    let bus = EventBus::in_process(16);
    assert!(!bus.wants(&CUSTOM));
    let _other = bus.subscribe(Filter::all().name("ns.*")).await.unwrap();
    assert!(!bus.wants(&CUSTOM));
    let mut sub = bus.subscribe(Filter::all().name("xx.*")).await.unwrap();
    assert!(bus.wants(&CUSTOM));
    let details = v3::ErrorDetails {
        name: "custom".into(),
        ..Default::default()
    };
    bus.publish_with(&CUSTOM, |e| e.with_data(&details));
    let got = drain(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "xx.custom.happen");
    drop(sub);
    assert!(!bus.wants(&CUSTOM));
}

#[tokio::test]
async fn prepare_builds_only_when_wanted() {
    let bus = EventBus::in_process(16);
    let details = v3::ErrorDetails {
        name: "f_cnt_too_low".into(),
        ..Default::default()
    };
    let prepared = bus.prepare(&definitions::NS_UP_DATA_DROP, |e| e.with_data(&details));
    assert!(prepared.is_none());
    assert_eq!(bus.stats().skipped, 1);

    let mut sub = bus.subscribe(Filter::all().name("*.drop")).await.unwrap();
    let prepared = bus
        .prepare(&definitions::NS_UP_DATA_DROP, |e| {
            e.with_identifiers([device()]).with_data(&details)
        })
        .expect("a subscriber wants it");
    assert!(drain(&mut sub).is_empty(), "prepared, not yet published");
    bus.publish(prepared);
    let got = drain(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "ns.up.data.drop");
    let back: v3::ErrorDetails = got[0].data_as().unwrap().unwrap();
    assert_eq!(back, details);
    let stats = bus.stats();
    assert_eq!((stats.published, stats.skipped), (1, 1));
}

#[tokio::test]
async fn uncatalogued_definitions_of_catalogued_names_use_the_catalogue() {
    // Like the NS's MAC command events: `Definition::new` with a name of the catalogue.
    let bus = EventBus::in_process(16);
    let _mac = bus.subscribe(Filter::all().name("ns.mac.*")).await.unwrap();
    for info in catalogue() {
        let def: Definition = Definition::new(info.name, info.description);
        assert_eq!(
            bus.wants(&def),
            info.name.starts_with("ns.mac."),
            "{}",
            info.name
        );
    }
}
