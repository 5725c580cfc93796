//! Hot-path cost of one uplink: decode a 20-byte PHYPayload, check its 1.0 MIC and decrypt
//! its FRMPayload. `make bench-lorawan` runs it; the target is under 1 µs for all three.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use lorawan::crypto::{self, Direction};
use lorawan::{Aes128Key, PhyPayload};

/// Unconfirmed uplink, DevAddr 49BE7DF1, FCnt 2, FPort 1, 7-byte FRMPayload: 20 bytes in all.
fn uplink_20_bytes(nwk_s_key: &Aes128Key, app_s_key: &Aes128Key) -> Vec<u8> {
    let dev_addr = "49be7df1".parse().unwrap();
    let mut payload = b"tern-20".to_vec();
    crypto::encrypt_frm_payload(app_s_key, Direction::Uplink, dev_addr, 2, &mut payload);
    let mut raw = vec![0x40];
    raw.extend_from_slice(&lorawan::DevAddr::to_le_bytes(dev_addr));
    raw.extend_from_slice(&[0x00, 0x02, 0x00, 0x01]); // FCtrl, FCnt, FPort
    raw.extend_from_slice(&payload);
    let mic = crypto::uplink_mic_1_0(nwk_s_key, dev_addr, 2, &raw);
    raw.extend_from_slice(&mic);
    assert_eq!(raw.len(), 20);
    raw
}

fn bench_uplink(c: &mut Criterion) {
    let nwk_s_key: Aes128Key = "44024241ED4CE9A68C6A8BC055233FD3".parse().unwrap();
    let app_s_key: Aes128Key = "EC925802AE430CA77FD3DD73CB2CC588".parse().unwrap();
    let raw = uplink_20_bytes(&nwk_s_key, &app_s_key);

    c.bench_function("decode_20b", |b| {
        b.iter(|| PhyPayload::decode(black_box(&raw)).unwrap())
    });

    let msg = PhyPayload::mic_input(&raw);
    let dev_addr = "49be7df1".parse().unwrap();
    c.bench_function("mic_1_0_20b", |b| {
        b.iter(|| crypto::uplink_mic_1_0(black_box(&nwk_s_key), dev_addr, 2, black_box(msg)))
    });

    let mut buf = [0u8; 7];
    c.bench_function("decrypt_7b", |b| {
        b.iter(|| {
            buf.copy_from_slice(&raw[9..16]);
            crypto::decrypt_frm_payload(&app_s_key, Direction::Uplink, dev_addr, 2, &mut buf);
            black_box(&buf);
        })
    });

    c.bench_function("decode_mic_decrypt_20b", |b| {
        b.iter(|| {
            let raw = black_box(&raw);
            let mut phy = PhyPayload::decode(raw).unwrap();
            let mac = phy.mac_payload_mut().unwrap();
            let dev_addr = mac.fhdr.dev_addr;
            let f_cnt = u32::from(mac.fhdr.f_cnt);
            let mic =
                crypto::uplink_mic_1_0(&nwk_s_key, dev_addr, f_cnt, PhyPayload::mic_input(raw));
            assert!(crypto::mic_matches(&mic, &raw[raw.len() - 4..]));
            crypto::decrypt_frm_payload(
                &app_s_key,
                Direction::Uplink,
                dev_addr,
                f_cnt,
                &mut mac.frm_payload,
            );
            phy
        })
    });
}

criterion_group!(benches, bench_uplink);
criterion_main!(benches);
