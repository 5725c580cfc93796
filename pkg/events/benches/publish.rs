//! Publishing an `ns.up.data.receive` event with an uplink heard by 3 gateways, the way the
//! Network Server does for every uplink: eagerly (`publish(Event::new(..).with_data(..))`,
//! what every call site did before `publish_with`) and lazily (`publish_with`), with no
//! subscriber, with only the Identity and Gateway Servers' own `is.*` subscriptions (what
//! `tern start` has), and with a subscriber that takes the event.
//!
//! `cargo bench -p tern-events --bench publish -- --quick`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tern_api::{Timestamp, v3};
use tern_events::definitions::NS_UP_DATA_RECEIVE;
use tern_events::{Event, EventBus, Filter};

fn uplink() -> v3::UplinkMessage {
    let rx = |i: u8| v3::RxMetadata {
        gateway_ids: Some(v3::GatewayIdentifiers {
            gateway_id: format!("gateway-{i}"),
            eui: vec![0xaa, 0x55, 0, 0, 0, 0, 0, i],
        }),
        channel_index: 2,
        timestamp: 1_000_000 * u32::from(i),
        received_at: Some(Timestamp::now()),
        rssi: -42.0 - f32::from(i),
        channel_rssi: -42.0 - f32::from(i),
        snr: 9.5,
        uplink_token: vec![i; 24],
        gateway_server_id: "gs-1".into(),
        ..Default::default()
    };
    v3::UplinkMessage {
        raw_payload: (0..30).collect(),
        settings: Some(v3::TxSettings {
            data_rate_index: Some(5),
            frequency: 868_100_000,
            timestamp: 1_000_000,
            enable_crc: true,
            ..Default::default()
        }),
        rx_metadata: (1..=3).map(rx).collect(),
        received_at: Some(Timestamp::now()),
        correlation_ids: vec!["gs:uplink:01J9Z3QK5E4Y7X8W2V1T0S9R8P".into()],
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let up = uplink();
    let ids = v3::EndDeviceIdentifiers::new("app-1", "dev-1");
    let cids = ["ns:uplink:01J9Z3QK5E4Y7X8W2V1T0S9R8Q".to_owned()];
    let eager = |bus: &EventBus| {
        bus.publish(
            Event::new(&NS_UP_DATA_RECEIVE)
                .with_identifiers([&ids])
                .with_correlation_ids(cids.iter().cloned())
                .with_data(black_box(&up)),
        )
    };
    let lazy = |bus: &EventBus| {
        bus.publish_with(&NS_UP_DATA_RECEIVE, |e| {
            e.with_identifiers([&ids])
                .with_correlation_ids(cids.iter().cloned())
                .with_data(black_box(&up))
        })
    };

    let mut group = c.benchmark_group("ns.up.data.receive");
    let bus = EventBus::in_process(16);
    group.bench_function("no subscriber/publish", |b| b.iter(|| eager(&bus)));
    group.bench_function("no subscriber/publish_with", |b| b.iter(|| lazy(&bus)));

    let _is = rt
        .block_on(bus.subscribe(Filter::all().name("is.*")))
        .unwrap();
    let _gs = rt
        .block_on(bus.subscribe(Filter::all().name("is.gateway.*")))
        .unwrap();
    group.bench_function("is.* subscribers/publish", |b| b.iter(|| eager(&bus)));
    group.bench_function("is.* subscribers/publish_with", |b| b.iter(|| lazy(&bus)));

    // A subscriber that takes every event; drained so that it never lags.
    let mut all = rt.block_on(bus.subscribe(Filter::all())).unwrap();
    group.bench_function("matching subscriber/publish_with", |b| {
        b.iter(|| {
            lazy(&bus);
            black_box(all.try_recv().unwrap());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
