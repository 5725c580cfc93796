//! The NS uplink hot path after deduplication, for one device among 1,000,000 sessions:
//! decode the PHYPayload, one DevAddr index lookup, the device lock, 32-bit FCnt
//! reconstruction, the MIC (AES-CMAC), and the FCnt update. The store's group commit and the
//! link send are outside (they are I/O, batched across devices).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lorawan::crypto;
use lorawan::phy::{FCtrl, FOpts, Fhdr, MacPayload, Mhdr, Payload};
use lorawan::{Aes128Key, DevAddr, Direction, MType, PhyPayload};
use tern_api::v3;
use tern_networkserver::devices::{Device, Devices, NsState, SessionCtx, TxParams};
use tern_store::NsDeviceRecord;

const SESSIONS: u32 = 1_000_000;

fn key_of(i: u32) -> Aes128Key {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&i.to_be_bytes());
    Aes128Key(k)
}

fn addr_of(i: u32) -> DevAddr {
    DevAddr::from_u32(0x2600_0000 | i)
}

fn device(i: u32) -> Device {
    let addr = addr_of(i);
    let key = key_of(i);
    let ids = v3::EndDeviceIdentifiers::new("bench", format!("dev-{i}"));
    Device {
        record: NsDeviceRecord {
            device: Some(v3::EndDevice {
                ids: Some(ids),
                lorawan_version: v3::MacVersion::MacV103 as i32,
                session: Some(v3::Session {
                    dev_addr: addr.to_be_bytes().to_vec(),
                    last_f_cnt_up: 100,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        version: 1,
        state: NsState {
            f_cnt_up_seen: true,
            ..Default::default()
        },
        current: Some(SessionCtx {
            dev_addr: addr,
            f_nwk_s_int_key: key,
            s_nwk_s_int_key: key,
            nwk_s_enc_key: key,
            v1_1: false,
            session_key_id: Vec::new(),
        }),
        pending: None,
    }
}

fn frame(i: u32, f_cnt: u32) -> Vec<u8> {
    let addr = addr_of(i);
    let mut frm = b"temperature=21.5".to_vec();
    crypto::encrypt_frm_payload(&key_of(i), Direction::Uplink, addr, f_cnt, &mut frm);
    let mut phy = PhyPayload {
        mhdr: Mhdr::new(MType::UnconfirmedDataUp),
        payload: Payload::MacPayload(MacPayload {
            fhdr: Fhdr {
                dev_addr: addr,
                f_ctrl: FCtrl::default(),
                f_cnt: f_cnt as u16,
                f_opts: FOpts::EMPTY,
            },
            f_port: Some(1),
            frm_payload: frm,
        }),
        mic: Some([0; 4]),
    };
    let msg = phy.encode_mic_input().unwrap();
    phy.mic = Some(crypto::uplink_mic_1_0(&key_of(i), addr, f_cnt, &msg));
    phy.encode().unwrap()
}

fn bench(c: &mut Criterion) {
    let devices = Devices::new();
    for i in 0..SESSIONS {
        devices.insert(device(i));
    }
    assert_eq!(devices.len(), SESSIONS as usize);
    let target = 777_777;
    let raw = frame(target, 101);
    c.bench_function("ns_uplink_hot_path_1m_sessions", |b| {
        b.iter(|| {
            let raw = black_box(&raw);
            let phy = PhyPayload::decode(raw).unwrap();
            let addr = phy.dev_addr().unwrap();
            let mut accepted = None;
            for slot in devices.by_dev_addr(addr) {
                let mut dev = slot.try_lock().unwrap();
                if let Ok(v) = dev.verify(&phy, PhyPayload::mic_input(raw), TxParams::default()) {
                    // The accepted counter, as the pipeline records it before forwarding.
                    if let Some(s) = dev.record.device.as_mut().and_then(|d| d.session.as_mut()) {
                        s.last_f_cnt_up = v.f_cnt.min(100);
                    }
                    accepted = Some(v.f_cnt);
                    break;
                }
            }
            assert_eq!(accepted, Some(101));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
