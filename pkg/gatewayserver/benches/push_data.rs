//! A PUSH_DATA datagram with 8 `rxpk` parsed and turned into 8 uplink messages: the GS's
//! per-frame cost before the NS. Criterion reports the time per datagram and, through the
//! throughput, frames per second; ns per frame = time per datagram / 8.

use base64::Engine;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use tern_api::v3;
use tern_gatewayserver::udp::packet::{Upstream, parse_datagram, parse_push_data};
use tern_gatewayserver::uplink::{UplinkContext, rxpk_to_uplink};

fn datagram() -> Vec<u8> {
    let phy: Vec<u8> = (0..23u8).collect();
    let data = base64::engine::general_purpose::STANDARD.encode(&phy);
    let rxpk: Vec<serde_json::Value> = (0..8u32)
        .map(|i| {
            serde_json::json!({
                "time": "2026-11-21T08:00:00.123456Z", "tmms": 1_447_000_000_000u64,
                "tmst": 1_000_000 + i, "chan": i, "rfch": 0, "freq": 868.1 + f64::from(i) * 0.2,
                "stat": 1, "modu": "LORA", "datr": "SF7BW125", "codr": "4/5", "rssi": -50,
                "rssis": -52, "lsnr": 9.5, "foff": -120, "size": phy.len(), "data": data,
            })
        })
        .collect();
    let mut b = vec![2, 0x12, 0x34, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    b.extend_from_slice(serde_json::json!({ "rxpk": rxpk }).to_string().as_bytes());
    b
}

fn bench(c: &mut Criterion) {
    let b = datagram();
    let ids = v3::GatewayIdentifiers {
        gateway_id: "gw-bench".into(),
        eui: vec![1, 2, 3, 4, 5, 6, 7, 8],
    };
    let plan = band::FrequencyPlan::by_id("EU_863_870").unwrap();
    let mut g = c.benchmark_group("gs");
    g.throughput(Throughput::Elements(8));
    g.bench_function("push_data_8_rxpk_to_uplinks", |bench| {
        bench.iter(|| {
            let d = parse_datagram(black_box(&b)).unwrap();
            let Upstream::PushData(json) = d.kind else {
                unreachable!()
            };
            let push = parse_push_data(json).unwrap();
            let mut out = Vec::with_capacity(8);
            for rx in &push.rxpk {
                let ctx = UplinkContext {
                    ids: &ids,
                    eui: d.eui,
                    plan,
                    instance_id: "gs-bench",
                    received_at_us: 1_763_712_000_000_000,
                    correlation_id: "gs:uplink:bench".into(),
                };
                out.push(rxpk_to_uplink(rx, &ctx).unwrap());
            }
            out
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
