//! Memory per device of the Network Server's in-memory device table.
//!
//! Provisions N ABP devices with sessions into a fresh embedded store (device 0 through the
//! NS registry, the others as copies of its stored record with their own IDs, DevAddr and
//! NwkSKey, written in store batches), then measures the process RSS (`/proc/self/status`
//! VmRSS) before and after `NetworkServer::load`, and again after one uplink per device
//! (`--uplinks`), which fills the per-device uplink state (gateways, tokens, MAC state).
//!
//! ```text
//! cargo run --release -p tern-networkserver --example memory -- 100000 [--uplinks]
//! ```
//!
//! The other roles load nothing per device at start (the IS, AS, JS and GS read the store on
//! demand), so the NS table is the idle per-device cost of `tern start`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use lorawan::crypto;
use lorawan::phy::{FCtrl, FOpts, Fhdr, MacPayload, Mhdr, Payload};
use lorawan::{Aes128Key, DevAddr, Direction, MType, PhyPayload};
use prost::Message;
use tern_api::v3;
use tern_cluster::auth::{Authenticator, ClusterKeys};
use tern_cluster::links::{LinkResult, NsJs};
use tern_events::EventBus;
use tern_networkserver::{NetworkServer, NsConfig, NsDeps};
use tern_store::tables::{NS_DEV_ADDR, NS_DEVICES};
use tern_store::{Batch, Expect, IndexEntry, NsDeviceRecord, NsDeviceStore, Store, StoreConfig};

/// The application of the devices.
const APP: &str = "memory";
/// DevAddr of device 0 (NetID 000013's range); device i has +i.
const BASE: u32 = 0x2600_0000;
/// Devices per store batch.
const BATCH: usize = 2_000;

/// A JS for a run without joins.
struct NoJs;

#[async_trait]
impl NsJs for NoJs {
    async fn handle_join(&self, _: v3::JoinRequest) -> LinkResult<v3::JoinResponse> {
        Err(tonic::Status::unavailable(
            "no Join Server in the memory tool",
        ))
    }
}

/// The resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// The NwkSKey of device `addr` (as `tern-bench` derives it).
fn nwk_s_key(addr: u32) -> Aes128Key {
    let mut k = [0x11u8; 16];
    k[12..].copy_from_slice(&addr.to_be_bytes());
    Aes128Key(k)
}

fn device_id(i: usize) -> String {
    format!("abp-{i}")
}

/// Device `i` as the NS registry receives it from `tern-bench`.
fn abp_device(i: usize) -> v3::EndDevice {
    let addr = BASE + i as u32;
    v3::EndDevice {
        ids: Some(v3::EndDeviceIdentifiers {
            dev_addr: addr.to_be_bytes().to_vec(),
            ..v3::EndDeviceIdentifiers::new(APP, device_id(i))
        }),
        frequency_plan_id: "EU_863_870".into(),
        lorawan_version: v3::MacVersion::MacV103 as i32,
        lorawan_phy_version: v3::PhyVersion::Rp002V103 as i32,
        session: Some(v3::Session {
            dev_addr: addr.to_be_bytes().to_vec(),
            keys: Some(v3::SessionKeys {
                f_nwk_s_int_key: Some(v3::KeyEnvelope {
                    key: nwk_s_key(addr).0.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Device `i`'s record: the template with its IDs, DevAddr and key.
fn record_of(template: &NsDeviceRecord, i: usize) -> NsDeviceRecord {
    let mut r = template.clone();
    let want = abp_device(i);
    let d = r.device.as_mut().expect("template device");
    d.ids = want.ids;
    d.session = want.session;
    r
}

/// An unconfirmed uplink of device `i` with `f_cnt`, heard by 3 gateways.
fn uplink(i: usize, f_cnt: u32) -> v3::UplinkMessage {
    let addr = BASE + i as u32;
    let key = nwk_s_key(addr);
    let dev_addr = DevAddr::from_u32(addr);
    let mut frm = b"\x01\x67\x00\xd7".to_vec();
    crypto::encrypt_frm_payload(&key, Direction::Uplink, dev_addr, f_cnt, &mut frm);
    let mut phy = PhyPayload {
        mhdr: Mhdr::new(MType::UnconfirmedDataUp),
        payload: Payload::MacPayload(MacPayload {
            fhdr: Fhdr {
                dev_addr,
                f_ctrl: FCtrl::default(),
                f_cnt: f_cnt as u16,
                f_opts: FOpts::EMPTY,
            },
            f_port: Some(1),
            frm_payload: frm,
        }),
        mic: Some([0; 4]),
    };
    let msg = phy.encode_mic_input().expect("uplink encodes");
    phy.mic = Some(crypto::uplink_mic_1_0(&key, dev_addr, f_cnt, &msg));
    let rx = (0..3u8)
        .map(|g| v3::RxMetadata {
            gateway_ids: Some(v3::GatewayIdentifiers::new(
                format!("gw-{g}"),
                Some(lorawan::Eui64(
                    (0xAA55_0000_0000_0000 | u64::from(g)).to_be_bytes(),
                )),
            )),
            rssi: -60.0 - f32::from(g),
            snr: 7.5,
            uplink_token: vec![g; 24],
            ..Default::default()
        })
        .collect();
    v3::UplinkMessage {
        raw_payload: phy.encode().expect("uplink encodes"),
        rx_metadata: rx,
        settings: Some(v3::TxSettings {
            data_rate_index: Some(5),
            frequency: 868_100_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut n: usize = 100_000;
    let mut uplinks = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--uplinks" => uplinks = true,
            v => n = v.replace('_', "").parse()?,
        }
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreConfig::default(), dir.path()).await?;
    let ns = |store: &Store| {
        NetworkServer::with_deps(NsDeps {
            config: NsConfig::default(),
            store: store.clone(),
            events: EventBus::in_process(64),
            auth: Authenticator::new(ClusterKeys::new(&["cluster-key-0123456789"]).unwrap()),
            js: Arc::new(NoJs),
            instance_id: "memory".into(),
        })
    };

    // Device 0 through the registry: the record the API writes.
    let writer = ns(&store)?;
    writer
        .set_device(
            abp_device(0),
            &[
                "frequency_plan_id",
                "lorawan_version",
                "lorawan_phy_version",
                "supports_join",
                "session",
            ],
        )
        .await
        .map_err(|e| anyhow::anyhow!("set device 0: {e}"))?;
    drop(writer);
    let template = store
        .get_ns_device(APP, &device_id(0))
        .await?
        .expect("device 0 stored")
        .value;
    println!("stored NS record: {} bytes encoded", template.encoded_len());

    let t = Instant::now();
    for start in (1..n).step_by(BATCH) {
        let mut batch = Batch::new();
        for i in start..(start + BATCH).min(n) {
            let r = record_of(&template, i);
            let addr = DevAddr::from_u32(BASE + i as u32);
            batch.put(
                &NS_DEVICES,
                format!("{APP}/{}", device_id(i)),
                r.encode_to_vec(),
                Expect::Absent,
                vec![IndexEntry::new(&NS_DEV_ADDR, addr.to_string())],
            );
        }
        store.commit(batch).await?;
    }
    println!(
        "provisioned {n} devices in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let ns = ns(&store)?;
    let before = rss();
    let t = Instant::now();
    let loaded = ns.load().await?;
    let after = rss();
    println!(
        "NS load: {loaded} devices in {:.1} s; RSS {:.1} -> {:.1} MiB: {:.0} bytes/device",
        t.elapsed().as_secs_f64(),
        mib(before),
        mib(after),
        (after.saturating_sub(before)) as f64 / loaded.max(1) as f64
    );

    if uplinks {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let ns = Arc::new(ns);
        let per = n.div_ceil(64);
        for w in 0..64 {
            let ns = ns.clone();
            tasks.spawn(async move {
                for i in (w * per)..((w + 1) * per).min(n) {
                    ns.process_uplink(uplink(i, 1)).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r?;
        }
        let active = rss();
        let up = ns
            .get_device(&v3::EndDeviceIdentifiers::new(APP, device_id(n - 1)))
            .await
            .map_err(|e| anyhow::anyhow!("get device: {e}"))?;
        let last = up.session.map_or(0, |s| s.last_f_cnt_up);
        let stored = store
            .get_ns_device(APP, &device_id(n - 1))
            .await?
            .expect("last device stored")
            .value;
        println!(
            "stored NS record after an uplink: {} bytes encoded ({} of NS state)",
            stored.encoded_len(),
            stored.state.len()
        );
        println!(
            "after one uplink each ({:.1} s; last device's FCntUp {last}): RSS {:.1} MiB: \
             {:.0} bytes/device over the pre-load RSS",
            t.elapsed().as_secs_f64(),
            mib(active),
            (active.saturating_sub(before)) as f64 / n.max(1) as f64
        );
    }
    Ok(())
}
