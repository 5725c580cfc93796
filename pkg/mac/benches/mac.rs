//! The MAC layer's share of the NS uplink hot path: one uplink without MAC commands through
//! `handle_uplink`, then `next_commands` for its downlink, for a converged EU868 device
//! with a full ADR history; and the state's decode + encode round trip.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use band::FrequencyPlan;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use tern_api::v3::{MacVersion, PhyVersion};
use tern_mac::{DeviceMac, GatewayRx, MacConfig, MacContext, UplinkMac};

fn bench(c: &mut Criterion) {
    let config = MacConfig::default();
    let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let ctx = MacContext {
        plan: FrequencyPlan::by_id("EU_863_870").unwrap(),
        settings: None,
        config: &config,
        now,
    };
    let mut mac = DeviceMac::new(&ctx, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    mac.join_accept(&ctx);
    let gws = [GatewayRx {
        snr: -3.0,
        rssi: -110.0,
    }];
    let mut f_cnt = 0u32;
    let up = |mac: &mut DeviceMac, f_cnt: u32| {
        let u = UplinkMac {
            commands: &[],
            adr: true,
            adr_ack_req: false,
            f_cnt,
            data_rate: 5,
            frequency: 868_100_000,
            gateways: &gws,
            received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            gps_time: None,
        };
        let out = mac.handle_uplink(&ctx, &u);
        let cmds = mac.next_commands(&ctx, 15);
        (out, cmds)
    };
    for _ in 0..40 {
        up(&mut mac, f_cnt);
        f_cnt += 1;
    }
    c.bench_function("handle_uplink+next_commands (EU868, converged)", |b| {
        b.iter(|| {
            f_cnt += 1;
            black_box(up(&mut mac, f_cnt))
        })
    });
    let bytes = mac.encode_to_vec();
    c.bench_function("state decode+encode", |b| {
        b.iter(|| {
            let m = DeviceMac::decode(black_box(bytes.as_slice())).unwrap();
            black_box(m.encode_to_vec())
        })
    });
    // On stderr: stdout is the benchmark list when a test runner asks for it.
    eprintln!("state size: {} bytes", bytes.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
