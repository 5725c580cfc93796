//! Provisioning over the public gRPC API, as an operator would: the application with a
//! CayenneLPP uplink formatter, an application API key for MQTT, the gateways, and the
//! devices (IS registry entry, then the NS and AS parts of an ABP session, or the JS root
//! key and NS part of an OTAA device), many requests in flight at once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use lorawan::{Aes128Key, DevAddr, Eui64};
use tern_api::FieldMask;
use tern_api::v3;
use tern_cluster::auth::CallCredentials;
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The application every bench device belongs to.
pub const APP: &str = "bench";
/// The frequency plan of gateways and devices.
pub const PLAN: &str = "EU_863_870";
/// JoinEUI of the OTAA devices.
pub const JOIN_EUI: u64 = 0x70B3_D57E_D000_0000;
/// DevAddr of ABP bench device 0 (NetID 000013's range, 0x26000000/7); device i has +i.
pub const BENCH_DEV_ADDR: u32 = 0x27F0_0000;
/// DevAddr of the memory-phase ABP device 0.
pub const MEMORY_DEV_ADDR: u32 = 0x2700_0000;

type Authed = InterceptedService<Channel, CallCredentials>;

/// A gRPC client factory with one set of credentials.
#[derive(Clone)]
pub struct Api {
    channels: Vec<Channel>,
    creds: CallCredentials,
}

impl Api {
    /// Connects lazily to `grpc` with `key`, over a few HTTP/2 connections so that many
    /// concurrent requests are not all serialized on one.
    pub fn new(grpc: std::net::SocketAddr, key: &str) -> Result<Self> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
            .timeout(Duration::from_secs(60));
        let channels = (0..4).map(|_| endpoint.connect_lazy()).collect();
        Ok(Self {
            channels,
            creds: CallCredentials::api_key(key).map_err(|e| anyhow!("API key: {e}"))?,
        })
    }

    fn authed(&self, n: usize) -> Authed {
        InterceptedService::new(
            self.channels[n % self.channels.len()].clone(),
            self.creds.clone(),
        )
    }
}

fn app_ids() -> v3::ApplicationIdentifiers {
    v3::ApplicationIdentifiers {
        application_id: APP.into(),
    }
}

/// Creates the application, sets its CayenneLPP uplink formatter, and returns a new
/// application API key with traffic rights (the MQTT password).
pub async fn application(api: &Api) -> Result<String> {
    v3::application_registry_client::ApplicationRegistryClient::new(api.authed(0))
        .create(v3::CreateApplicationRequest {
            application: Some(v3::Application {
                ids: Some(app_ids()),
                name: "Benchmark".into(),
                ..Default::default()
            }),
            collaborator: None,
        })
        .await
        .context("create the application")?;
    v3::as_formatters_client::AsFormattersClient::new(api.authed(0))
        .set_application_formatters(v3::ApplicationFormatters {
            application_ids: Some(app_ids()),
            formatters: Some(v3::MessagePayloadFormatters {
                up_formatter: v3::PayloadFormatter::FormatterCayennelpp as i32,
                ..Default::default()
            }),
        })
        .await
        .context("set the CayenneLPP formatter")?;
    let key = v3::entity_access_client::EntityAccessClient::new(api.authed(0))
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(v3::EntityIdentifiers {
                ids: Some(v3::entity_identifiers::Ids::ApplicationIds(app_ids())),
            }),
            name: "bench".into(),
            rights: [
                v3::Right::ApplicationTrafficRead,
                v3::Right::ApplicationTrafficDownWrite,
            ]
            .into_iter()
            .map(|r| r as i32)
            .collect(),
            expires_at: None,
        })
        .await
        .context("create the application API key")?;
    Ok(key.into_inner().key)
}

/// The EUI of bench gateway `i`.
pub fn gateway_eui(i: usize) -> [u8; 8] {
    let mut eui = [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0, 0, 0];
    eui[5..].copy_from_slice(&(i as u32).to_be_bytes()[1..]);
    eui
}

/// Registers `count` gateways. Duty cycle enforcement is off: these are lab gateways, and
/// at thousands of downlinks per second no real EU868 gateway set would be within 1%.
pub async fn gateways(api: &Api, count: usize) -> Result<()> {
    let mut set = JoinSet::new();
    for i in 0..count {
        let mut client = v3::gateway_registry_client::GatewayRegistryClient::new(api.authed(i));
        set.spawn(async move {
            client
                .create(v3::CreateGatewayRequest {
                    gateway: Some(v3::Gateway {
                        ids: Some(v3::GatewayIdentifiers {
                            gateway_id: format!("bench-gw-{i}"),
                            eui: gateway_eui(i).to_vec(),
                        }),
                        frequency_plan_ids: vec![PLAN.into()],
                        enforce_duty_cycle: false,
                        ..Default::default()
                    }),
                    collaborator: None,
                })
                .await
                .with_context(|| format!("create gateway bench-gw-{i}"))
        });
        while set.len() >= 32 {
            set.join_next().await.expect("non-empty")??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// The session keys of ABP device `dev_addr`: derived from it, so the generator can
/// rebuild them without storing a million keys.
pub fn abp_keys(dev_addr: u32) -> lorawan::crypto::SessionKeys10 {
    let mut nwk = [0x11u8; 16];
    nwk[12..].copy_from_slice(&dev_addr.to_be_bytes());
    let mut app = [0x22u8; 16];
    app[12..].copy_from_slice(&dev_addr.to_be_bytes());
    lorawan::crypto::SessionKeys10 {
        nwk_s_key: Aes128Key(nwk),
        app_s_key: Aes128Key(app),
    }
}

/// The AppKey of OTAA device `dev_eui`.
pub fn app_key(dev_eui: u64) -> Aes128Key {
    let mut k = [0x33u8; 16];
    k[8..].copy_from_slice(&dev_eui.to_be_bytes());
    Aes128Key(k)
}

fn set_request(dev: v3::EndDevice, paths: &[&str]) -> v3::UpdateEndDeviceRequest {
    v3::UpdateEndDeviceRequest {
        end_device: Some(dev),
        field_mask: Some(FieldMask::new(paths.iter().copied())),
    }
}

fn base_device(ids: v3::EndDeviceIdentifiers, otaa: bool) -> v3::EndDevice {
    v3::EndDevice {
        ids: Some(ids),
        frequency_plan_id: PLAN.into(),
        lorawan_version: v3::MacVersion::MacV103 as i32,
        lorawan_phy_version: v3::PhyVersion::Rp002V103 as i32,
        supports_join: otaa,
        ..Default::default()
    }
}

const NS_PATHS: [&str; 4] = [
    "frequency_plan_id",
    "lorawan_version",
    "lorawan_phy_version",
    "supports_join",
];

/// Creates ABP device `device_id` with `dev_addr` and an active session in the IS, NS and AS.
async fn abp_device(api: Api, n: usize, device_id: String, dev_addr: u32) -> Result<()> {
    let keys = abp_keys(dev_addr);
    let addr = DevAddr(dev_addr.to_be_bytes());
    let ids = v3::EndDeviceIdentifiers {
        application_ids: Some(app_ids()),
        device_id: device_id.clone(),
        dev_eui: Vec::new(),
        join_eui: Vec::new(),
        dev_addr: addr.0.to_vec(),
    };
    let key = |k: Aes128Key| {
        Some(v3::KeyEnvelope {
            key: k.0.to_vec(),
            ..Default::default()
        })
    };
    v3::end_device_registry_client::EndDeviceRegistryClient::new(api.authed(n))
        .create(v3::CreateEndDeviceRequest {
            end_device: Some(base_device(ids.clone(), false)),
        })
        .await
        .with_context(|| format!("create {device_id} in the IS"))?;
    let mut ns = base_device(ids.clone(), false);
    ns.session = Some(v3::Session {
        dev_addr: addr.0.to_vec(),
        keys: Some(v3::SessionKeys {
            f_nwk_s_int_key: key(keys.nwk_s_key),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut paths = NS_PATHS.to_vec();
    paths.extend(["session.dev_addr", "session.keys.f_nwk_s_int_key"]);
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(api.authed(n))
        .set(set_request(ns, &paths))
        .await
        .with_context(|| format!("set {device_id}'s session in the NS"))?;
    let as_dev = v3::EndDevice {
        ids: Some(ids),
        session: Some(v3::Session {
            dev_addr: addr.0.to_vec(),
            keys: Some(v3::SessionKeys {
                app_s_key: key(keys.app_s_key),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    v3::as_end_device_registry_client::AsEndDeviceRegistryClient::new(api.authed(n))
        .set(set_request(
            as_dev,
            &["session.dev_addr", "session.keys.app_s_key"],
        ))
        .await
        .with_context(|| format!("set {device_id}'s AppSKey in the AS"))?;
    Ok(())
}

/// Creates OTAA device `device_id` (DevEUI `dev_eui`) in the IS, its AppKey in the JS and
/// its MAC settings in the NS.
async fn otaa_device(api: Api, n: usize, device_id: String, dev_eui: u64) -> Result<()> {
    let ids = v3::EndDeviceIdentifiers {
        application_ids: Some(app_ids()),
        device_id: device_id.clone(),
        dev_eui: dev_eui.to_be_bytes().to_vec(),
        join_eui: JOIN_EUI.to_be_bytes().to_vec(),
        dev_addr: Vec::new(),
    };
    let device = base_device(ids.clone(), true);
    v3::end_device_registry_client::EndDeviceRegistryClient::new(api.authed(n))
        .create(v3::CreateEndDeviceRequest {
            end_device: Some(device.clone()),
        })
        .await
        .with_context(|| format!("create {device_id} in the IS"))?;
    v3::js_end_device_registry_client::JsEndDeviceRegistryClient::new(api.authed(n))
        .set(set_request(
            v3::EndDevice {
                ids: Some(ids),
                root_keys: Some(v3::RootKeys {
                    app_key: Some(v3::KeyEnvelope {
                        key: app_key(dev_eui).0.to_vec(),
                        ..Default::default()
                    }),
                    nwk_key: None,
                }),
                ..Default::default()
            },
            &["root_keys.app_key"],
        ))
        .await
        .with_context(|| format!("set {device_id}'s AppKey in the JS"))?;
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(api.authed(n))
        .set(set_request(device, &NS_PATHS))
        .await
        .with_context(|| format!("set {device_id} in the NS"))?;
    Ok(())
}

/// How a batch of devices went.
#[derive(Debug, Clone, Copy)]
pub struct Provisioned {
    /// Devices created.
    pub devices: usize,
    /// Seconds it took.
    pub secs: f64,
}

impl Provisioned {
    /// Devices per second.
    pub fn rate(&self) -> f64 {
        self.devices as f64 / self.secs.max(1e-9)
    }
}

/// What kind of devices to create.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// ABP with a session, DevAddr `base + i`, ID `<prefix>-<i>`.
    Abp {
        /// DevAddr of device 0.
        base: u32,
    },
    /// OTAA, DevEUI `base + i`.
    Otaa {
        /// DevEUI of device 0.
        base: u64,
    },
}

/// Creates devices `range` of `kind`, `concurrency` at a time, reporting progress every
/// `progress` devices (0: never).
pub async fn devices(
    api: &Api,
    prefix: &str,
    kind: Kind,
    range: std::ops::Range<usize>,
    concurrency: usize,
    progress: usize,
) -> Result<Provisioned> {
    let started = Instant::now();
    let count = range.len();
    let mut set = JoinSet::new();
    let mut done = 0usize;
    for i in range {
        let api = api.clone();
        let id = format!("{prefix}-{i}");
        match kind {
            Kind::Abp { base } => set.spawn(abp_device(api, i, id, base + i as u32)),
            Kind::Otaa { base } => set.spawn(otaa_device(api, i, id, base + i as u64)),
        };
        while set.len() >= concurrency {
            set.join_next().await.expect("non-empty")??;
            done += 1;
            if progress > 0 && done.is_multiple_of(progress) {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  {done}/{count} {prefix} devices in {secs:.0} s ({:.0}/s)",
                    done as f64 / secs
                );
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(Provisioned {
        devices: count,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Queues one class A downlink (FPort 10, 3 bytes) for each of `device_ids` through the
/// public AS API.
pub async fn queue_downlinks(api: &Api, device_ids: Vec<String>) -> Result<()> {
    let mut set = JoinSet::new();
    for (n, id) in device_ids.into_iter().enumerate() {
        let mut client = v3::app_as_client::AppAsClient::new(api.authed(n));
        set.spawn(async move {
            client
                .downlink_queue_push(v3::DownlinkQueueRequest {
                    end_device_ids: Some(v3::EndDeviceIdentifiers::new(APP, id.clone())),
                    downlinks: vec![v3::ApplicationDownlink {
                        f_port: DOWNLINK_F_PORT.into(),
                        frm_payload: vec![1, 2, 3],
                        priority: v3::TxSchedulePriority::Normal as i32,
                        ..Default::default()
                    }],
                })
                .await
                .with_context(|| format!("queue a downlink for {id}"))
        });
        while set.len() >= 64 {
            set.join_next().await.expect("non-empty")??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// The FPort of the queued downlinks, to tell them from MAC-only downlinks.
pub const DOWNLINK_F_PORT: u8 = 10;

/// The DevEUI as an [`Eui64`].
pub fn eui(v: u64) -> Eui64 {
    Eui64(v.to_be_bytes())
}
