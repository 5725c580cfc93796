//! A simulated device on the air: a [`Device`] with its MAC layer ([`MacResponder`]) heard
//! by one or more gateways (Semtech UDP or Basics Station), each with its own RSSI/SNR.
//!
//! It opens the receive windows a real device opens: after an uplink, class A listens in
//! RX1 (RX1 delay after the uplink, on the uplink's channel at the RX1 data rate) and RX2
//! (one second later, on the RX2 frequency and data rate), judged by the gateway's
//! concentrator clock; class C also listens on the RX2 parameters at any other time.
//! Downlinks outside the windows, on other parameters, or arriving at the gateway too late
//! to be transmitted are not received; each step is logged ([`Step`]) for printing.

use std::fmt;
use std::time::{Duration, Instant};

use lorawan::crypto::{self, SessionKeys10, SessionKeys11};
use lorawan::phy::Payload;
use lorawan::{Aes128Key, DevAddr, Eui64, MacCommand, PhyPayload};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::device::{Device, DeviceConfig, Downlink, Keys, Uplink, Version};
use crate::mac::{self, MAX_F_OPTS_LEN, MacOutcome, MacResponder, RadioState};
use crate::station::{Station, StationDownlink};
use crate::udp::{ReceivedDownlink, RxInfo, UdpGateway};

/// How far a downlink's timestamp may be from the window opening and still be in it, µs.
const WINDOW_TOLERANCE_US: i64 = 1_000;

/// How a simulated gateway is connected.
pub enum GatewayLink {
    /// Semtech UDP packet forwarder.
    Udp(UdpGateway),
    /// LoRa Basics Station.
    Station(Station),
}

/// A gateway hearing the device, with the signal it hears it at.
pub struct SimGateway {
    /// The connection.
    pub link: GatewayLink,
    /// The gateway EUI.
    pub eui: [u8; 8],
    /// RSSI of the device's uplinks at this gateway, dBm.
    pub rssi: i32,
    /// SNR of the device's uplinks at this gateway, dB.
    pub snr: f64,
}

impl SimGateway {
    /// A Semtech UDP gateway hearing the device at `rssi`/`snr`.
    pub fn udp(gateway: UdpGateway, rssi: i32, snr: f64) -> Self {
        Self {
            eui: gateway.eui(),
            link: GatewayLink::Udp(gateway),
            rssi,
            snr,
        }
    }

    /// A Basics Station with EUI `eui` hearing the device at `rssi`/`snr`.
    pub fn station(station: Station, eui: [u8; 8], rssi: i32, snr: f64) -> Self {
        Self {
            link: GatewayLink::Station(station),
            eui,
            rssi,
            snr,
        }
    }

    async fn send(&self, phy: &[u8], dr: u8, freq: u32, ch: u8) -> Result<i64, SimError> {
        match &self.link {
            GatewayLink::Udp(g) => {
                let rx = RxInfo {
                    frequency: u64::from(freq),
                    data_rate: mac::data_rate_name(dr)
                        .ok_or(SimError::Unexpected("data rate outside the plan"))?,
                    rssi: self.rssi,
                    snr: self.snr,
                    channel: u32::from(ch % 8),
                };
                Ok(i64::from(g.send_uplink(phy, &rx).await?))
            }
            GatewayLink::Station(s) => {
                s.send_uplink(phy, dr, u64::from(freq), f64::from(self.rssi), self.snr)
                    .await
            }
        }
    }

    async fn next(&self, timeout: Duration) -> Result<Received, SimError> {
        match &self.link {
            GatewayLink::Udp(g) => g.next_downlink(timeout).await.map(Received::Udp),
            GatewayLink::Station(s) => s.next_downlink(timeout).await.map(Received::Station),
        }
    }
}

/// A downlink as a gateway got it.
enum Received {
    Udp(ReceivedDownlink),
    Station(StationDownlink),
}

impl Received {
    fn payload(&self) -> &[u8] {
        match self {
            Received::Udp(d) => &d.payload,
            Received::Station(d) => &d.payload,
        }
    }
}

/// The device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DeviceClass {
    /// Class A: listens only in the two windows after each uplink.
    #[default]
    A,
    /// Class C: also listens on the RX2 parameters whenever it does not transmit.
    C,
}

/// The window a downlink was received in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Window {
    /// The first receive window.
    Rx1,
    /// The second receive window.
    Rx2,
    /// Class C continuous reception on the RX2 parameters, outside RX1/RX2.
    ClassC,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Window::Rx1 => "RX1",
            Window::Rx2 => "RX2",
            Window::ClassC => "class C",
        })
    }
}

/// What the receive windows after one uplink are, for one gateway.
#[derive(Debug, Clone, Copy)]
struct Windows {
    /// The gateway clock when the uplink was received.
    uplink_at: i64,
    rx1_delay_us: i64,
    rx1_freq: u32,
    rx1_dr: u8,
    rx2_freq: u32,
    rx2_dr: u8,
}

/// One thing that happened, for printing.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A join-request went out.
    JoinRequestSent {
        /// DevEUI.
        dev_eui: Eui64,
        /// DevNonce used.
        dev_nonce: u16,
        /// Uplink frequency, Hz.
        frequency: u32,
        /// Uplink data rate index.
        data_rate: u8,
        /// Gateways that heard it.
        gateways: usize,
    },
    /// The join-accept arrived and checked out.
    JoinAccepted {
        /// The DevAddr assigned.
        dev_addr: DevAddr,
        /// The window it came in.
        window: Window,
        /// The gateway that transmitted it (EUI, hex).
        gateway: String,
        /// How early it reached the gateway, µs.
        margin_us: Option<i64>,
    },
    /// A data uplink went out.
    UplinkSent {
        /// Its frame counter.
        f_cnt: u32,
        /// FPort.
        f_port: Option<u8>,
        /// Confirmed uplink.
        confirmed: bool,
        /// It acknowledges a confirmed downlink.
        ack: bool,
        /// MAC commands in FOpts: answers owed and requests (LinkCheckReq, DeviceTimeReq).
        f_opts: Vec<MacCommand>,
        /// Uplink frequency, Hz.
        frequency: u32,
        /// Uplink data rate index.
        data_rate: u8,
        /// Gateways that heard it.
        gateways: usize,
    },
    /// A data downlink was received and accepted.
    DownlinkReceived {
        /// The window.
        window: Window,
        /// The gateway that transmitted it (EUI, hex).
        gateway: String,
        /// How early it reached the gateway, µs (`None`: immediate).
        margin_us: Option<i64>,
        /// Its frame counter.
        f_cnt: u32,
        /// FPort.
        f_port: Option<u8>,
        /// Decrypted FRMPayload, hex.
        payload: String,
        /// Confirmed downlink (acknowledged by the next uplink).
        confirmed: bool,
        /// It acknowledges the last confirmed uplink.
        ack: bool,
        /// The network has more to send.
        f_pending: bool,
    },
    /// MAC commands of a downlink and what the device did with them.
    MacCommands {
        /// One outcome per command.
        outcomes: Vec<MacOutcome>,
    },
    /// A confirmed uplink was acknowledged.
    Acked {
        /// The uplink's frame counter.
        f_cnt: u32,
    },
    /// A confirmed uplink got no acknowledgement in its windows.
    NotAcked {
        /// The uplink's frame counter.
        f_cnt: u32,
    },
    /// A downlink the device did not receive, and why.
    DownlinkMissed {
        /// The gateway that transmitted it (EUI, hex).
        gateway: String,
        /// Why the device did not get it.
        reason: String,
    },
    /// Nothing arrived in the receive windows.
    NoDownlink,
}

fn hex_eui(eui: [u8; 8]) -> String {
    hex::encode_upper(eui)
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let margin = |m: &Option<i64>| match m {
            Some(m) => format!(", {:.1} ms ahead", *m as f64 / 1000.0),
            None => String::new(),
        };
        match self {
            Step::JoinRequestSent {
                dev_eui,
                dev_nonce,
                frequency,
                data_rate,
                gateways,
            } => write!(
                f,
                "join-request sent: DevEUI {dev_eui:X}, DevNonce {dev_nonce}, {:.1} MHz DR{data_rate}, \
                 heard by {gateways} gateway(s)",
                *frequency as f64 / 1e6
            ),
            Step::JoinAccepted {
                dev_addr,
                window,
                gateway,
                margin_us,
            } => write!(
                f,
                "join accepted: DevAddr {dev_addr:X} in {window} via gateway {gateway}{}",
                margin(margin_us)
            ),
            Step::UplinkSent {
                f_cnt,
                f_port,
                confirmed,
                ack,
                f_opts,
                frequency,
                data_rate,
                gateways,
            } => {
                write!(
                    f,
                    "uplink sent: FCnt {f_cnt}, FPort {}, {}{}, {:.1} MHz DR{data_rate}, heard by \
                     {gateways} gateway(s)",
                    f_port.map_or("-".to_owned(), |p| p.to_string()),
                    if *confirmed {
                        "confirmed"
                    } else {
                        "unconfirmed"
                    },
                    if *ack { ", ACK" } else { "" },
                    *frequency as f64 / 1e6
                )?;
                if !f_opts.is_empty() {
                    let names: Vec<_> = f_opts.iter().map(MacCommand::name).collect();
                    write!(f, ", FOpts: {}", names.join(" "))?;
                }
                Ok(())
            }
            Step::DownlinkReceived {
                window,
                gateway,
                margin_us,
                f_cnt,
                f_port,
                payload,
                confirmed,
                ack,
                f_pending,
            } => write!(
                f,
                "downlink received in {window} via gateway {gateway}{}: FCnt {f_cnt}, FPort {}, \
                 payload {}{}{}{}",
                margin(margin_us),
                f_port.map_or("-".to_owned(), |p| p.to_string()),
                if payload.is_empty() {
                    "(none)"
                } else {
                    payload
                },
                if *confirmed { ", confirmed" } else { "" },
                if *ack { ", ACK" } else { "" },
                if *f_pending { ", FPending" } else { "" },
            ),
            Step::MacCommands { outcomes } => {
                let parts: Vec<String> = outcomes
                    .iter()
                    .map(|o| {
                        let verdict = match (&o.answer, o.applied) {
                            (Some(a), true) => format!("answered {}", a.name()),
                            (Some(a), false) => format!("refused, answered {}", a.name()),
                            (None, true) => match o.received {
                                MacCommand::LinkCheckAns(a) => format!(
                                    "noted (margin {} dB, {} gateway(s))",
                                    a.margin, a.gw_cnt
                                ),
                                MacCommand::DeviceTimeAns(a) => format!(
                                    "noted (GPS time {:.3} s)",
                                    a.to_duration().as_secs_f64()
                                ),
                                _ => "noted".to_owned(),
                            },
                            (None, false) => "ignored".to_owned(),
                        };
                        format!("{} {verdict}", o.received.name())
                    })
                    .collect();
                write!(f, "MAC commands: {}", parts.join("; "))
            }
            Step::Acked { f_cnt } => write!(f, "uplink FCnt {f_cnt} acknowledged"),
            Step::NotAcked { f_cnt } => write!(f, "uplink FCnt {f_cnt} not acknowledged"),
            Step::DownlinkMissed { gateway, reason } => {
                write!(f, "downlink via gateway {gateway} not received: {reason}")
            }
            Step::NoDownlink => f.write_str("no downlink in the receive windows"),
        }
    }
}

/// The result of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The DevAddr assigned.
    pub dev_addr: DevAddr,
    /// The window the join-accept came in.
    pub window: Window,
    /// How early the join-accept reached its gateway, µs.
    pub margin_us: Option<i64>,
}

/// The result of one uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkResult {
    /// The uplink's frame counter.
    pub f_cnt: u32,
    /// The downlink received in its windows, if any.
    pub downlink: Option<(Window, Downlink)>,
    /// A confirmed uplink was acknowledged.
    pub acked: bool,
}

/// A device's state to continue later (e.g. consecutive `ternctl simulate uplink` runs):
/// the session, the next DevNonce and the radio settings. Contains session keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedDevice {
    /// DevEUI.
    pub dev_eui: Eui64,
    /// JoinEUI.
    pub join_eui: Eui64,
    /// "1.0" or "1.1".
    pub version: String,
    /// The class.
    pub class: DeviceClass,
    /// The DevNonce of the next join-request.
    pub next_dev_nonce: u16,
    /// The session, once joined.
    pub session: Option<SavedSession>,
    /// The radio settings.
    pub radio: RadioState,
}

/// A saved session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSession {
    /// DevAddr.
    pub dev_addr: DevAddr,
    /// The next uplink frame counter.
    pub f_cnt_up: u32,
    /// The session keys.
    pub keys: SavedKeys,
}

/// Saved session keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum SavedKeys {
    /// A 1.0.x session.
    #[serde(rename = "1.0")]
    V1_0 {
        /// NwkSKey.
        nwk_s_key: Aes128Key,
        /// AppSKey.
        app_s_key: Aes128Key,
    },
    /// A 1.1 session.
    #[serde(rename = "1.1")]
    V1_1 {
        /// FNwkSIntKey.
        f_nwk_s_int_key: Aes128Key,
        /// SNwkSIntKey.
        s_nwk_s_int_key: Aes128Key,
        /// NwkSEncKey.
        nwk_s_enc_key: Aes128Key,
        /// AppSKey.
        app_s_key: Aes128Key,
    },
}

impl From<Keys> for SavedKeys {
    fn from(k: Keys) -> Self {
        match k {
            Keys::V1_0(k) => SavedKeys::V1_0 {
                nwk_s_key: k.nwk_s_key,
                app_s_key: k.app_s_key,
            },
            Keys::V1_1(k) => SavedKeys::V1_1 {
                f_nwk_s_int_key: k.f_nwk_s_int_key,
                s_nwk_s_int_key: k.s_nwk_s_int_key,
                nwk_s_enc_key: k.nwk_s_enc_key,
                app_s_key: k.app_s_key,
            },
        }
    }
}

impl From<&SavedKeys> for Keys {
    fn from(k: &SavedKeys) -> Self {
        match *k {
            SavedKeys::V1_0 {
                nwk_s_key,
                app_s_key,
            } => Keys::V1_0(SessionKeys10 {
                nwk_s_key,
                app_s_key,
            }),
            SavedKeys::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
                app_s_key,
            } => Keys::V1_1(SessionKeys11 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
                app_s_key,
            }),
        }
    }
}

/// A simulated device on the air.
pub struct SimulatedDevice {
    device: Device,
    /// The MAC layer: radio settings and answers owed.
    pub mac: MacResponder,
    gateways: Vec<SimGateway>,
    class: DeviceClass,
    /// Use the ADR bit in uplinks.
    pub adr: bool,
    /// How long to keep listening after RX2 opens (covers RX2 reception and clock skew).
    pub window_slack: Duration,
    log: Vec<Step>,
    next_channel: usize,
    join_requests: u16,
    rekey_pending: bool,
    ack_next: bool,
}

impl SimulatedDevice {
    /// A device heard by `gateways` (at least one).
    pub fn new(
        device: Device,
        gateways: Vec<SimGateway>,
        class: DeviceClass,
    ) -> Result<Self, SimError> {
        if gateways.is_empty() {
            return Err(SimError::Unexpected("a simulated device needs a gateway"));
        }
        Ok(Self {
            device,
            mac: MacResponder::default(),
            gateways,
            class,
            adr: false,
            window_slack: Duration::from_millis(1500),
            log: Vec::new(),
            next_channel: 0,
            join_requests: 0,
            rekey_pending: false,
            ack_next: false,
        })
    }

    /// Rebuilds a device from saved state; `config` carries the root keys for later joins
    /// (its DevNonce is replaced by the saved one).
    pub fn restore(
        saved: &SavedDevice,
        mut config: DeviceConfig,
        gateways: Vec<SimGateway>,
    ) -> Result<Self, SimError> {
        config.first_dev_nonce = saved.next_dev_nonce;
        let device = match &saved.session {
            Some(s) => {
                let mut d = Device::abp(config, s.dev_addr, Keys::from(&s.keys));
                d.set_f_cnt_up(s.f_cnt_up)?;
                d
            }
            None => Device::new(config),
        };
        let mut sim = Self::new(device, gateways, saved.class)?;
        sim.mac.state = saved.radio.clone();
        Ok(sim)
    }

    /// The state to save.
    pub fn save(&self) -> SavedDevice {
        let config = self.device.config();
        SavedDevice {
            dev_eui: config.dev_eui,
            join_eui: config.join_eui,
            version: match config.version {
                Version::V1_0 => "1.0".into(),
                Version::V1_1 => "1.1".into(),
            },
            class: self.class,
            next_dev_nonce: self.next_dev_nonce(),
            session: self.device.session().map(|s| SavedSession {
                dev_addr: s.dev_addr,
                f_cnt_up: s.f_cnt_up,
                keys: s.keys.into(),
            }),
            radio: self.mac.state.clone(),
        }
    }

    fn next_dev_nonce(&self) -> u16 {
        self.device
            .config()
            .first_dev_nonce
            .wrapping_add(self.join_requests)
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Sets the next uplink frame counter.
    pub fn set_f_cnt_up(&mut self, f_cnt: u32) -> Result<(), SimError> {
        self.device.set_f_cnt_up(f_cnt)
    }

    /// The class.
    pub fn class(&self) -> DeviceClass {
        self.class
    }

    /// Switches class (the network must know: device profile or DeviceModeInd).
    pub fn set_class(&mut self, class: DeviceClass) {
        self.class = class;
    }

    /// Everything logged so far.
    pub fn log(&self) -> &[Step] {
        &self.log
    }

    /// Takes the steps logged since the last call.
    pub fn take_log(&mut self) -> Vec<Step> {
        std::mem::take(&mut self.log)
    }

    fn next_channel(&mut self) -> Result<(u8, u32), SimError> {
        let usable = self.mac.state.usable_channels();
        if usable.is_empty() {
            return Err(SimError::Unexpected(
                "no enabled channel allows the current data rate",
            ));
        }
        let (i, c) = usable[self.next_channel % usable.len()];
        self.next_channel = self.next_channel.wrapping_add(1);
        Ok((i, c.frequency))
    }

    /// Sends `phy` through every gateway; returns each gateway's receive timestamp.
    async fn transmit(&self, phy: &[u8], dr: u8, freq: u32, ch: u8) -> Result<Vec<i64>, SimError> {
        let mut stamps = Vec::with_capacity(self.gateways.len());
        for gw in &self.gateways {
            stamps.push(gw.send(phy, dr, freq, ch).await?);
        }
        Ok(stamps)
    }

    /// Sends a join-request through every gateway and waits for the join-accept in RX1
    /// (5 s) or RX2 (6 s). Starts the session and resets the radio settings to the
    /// join-accept's (DLSettings, RX delay, CFList).
    pub async fn join(&mut self) -> Result<Joined, SimError> {
        let phy = self.device.join_request()?;
        let dev_nonce = self.next_dev_nonce();
        self.join_requests = self.join_requests.wrapping_add(1);
        // Joins go out on the default channels at the current data rate.
        let defaults = RadioState::eu868();
        let ch = (self.next_channel % mac::DEFAULT_CHANNELS) as u8;
        self.next_channel = self.next_channel.wrapping_add(1);
        let freq = defaults.channels[ch as usize]
            .expect("default channel")
            .frequency;
        let dr = self.mac.state.data_rate.min(5);
        let sent_at = Instant::now();
        let stamps = self.transmit(&phy, dr, freq, ch).await?;
        self.log.push(Step::JoinRequestSent {
            dev_eui: self.device.config().dev_eui,
            dev_nonce,
            frequency: freq,
            data_rate: dr,
            gateways: stamps.len(),
        });
        let windows: Vec<Windows> = stamps
            .iter()
            .map(|&uplink_at| Windows {
                uplink_at,
                rx1_delay_us: 5_000_000,
                rx1_freq: freq,
                rx1_dr: dr,
                rx2_freq: defaults.rx2_frequency,
                rx2_dr: defaults.rx2_data_rate,
            })
            .collect();
        let deadline = sent_at + Duration::from_secs(6) + self.window_slack;
        while let Some((gw, received)) = self.next_received(deadline).await {
            let Some((window, margin)) = self.classify(gw, &received, Some(&windows[gw])) else {
                continue;
            };
            match self.device.accept_join(received.payload()) {
                Ok(session) => {
                    let dev_addr = session.dev_addr;
                    let rx1_delay = session.rx1_delay;
                    let dl_settings = session.dl_settings;
                    let cf_list = self.cf_list(received.payload());
                    self.mac
                        .state
                        .apply_join_accept(dl_settings, rx1_delay, cf_list.as_ref());
                    self.mac.forget_answers();
                    self.rekey_pending =
                        matches!(self.device.session().map(|s| s.keys), Some(Keys::V1_1(_)));
                    self.ack_next = false;
                    self.next_channel = 0;
                    self.log.push(Step::JoinAccepted {
                        dev_addr,
                        window,
                        gateway: hex_eui(self.gateways[gw].eui),
                        margin_us: margin,
                    });
                    return Ok(Joined {
                        dev_addr,
                        window,
                        margin_us: margin,
                    });
                }
                Err(e) => self.log.push(Step::DownlinkMissed {
                    gateway: hex_eui(self.gateways[gw].eui),
                    reason: format!("not a join-accept for this device: {e}"),
                }),
            }
        }
        self.log.push(Step::NoDownlink);
        Err(SimError::Timeout("join-accept in RX1 or RX2"))
    }

    /// The CFList of a join-accept the device already accepted.
    fn cf_list(&self, raw: &[u8]) -> Option<lorawan::phy::CfList> {
        let config = self.device.config();
        let key = match config.version {
            Version::V1_0 => config.app_key,
            Version::V1_1 => config.nwk_key?,
        };
        let plain = crypto::decrypt_join_accept(&key, raw).ok()?;
        match PhyPayload::decode(&plain).ok()?.payload {
            Payload::JoinAccept(a) => a.cf_list,
            _ => None,
        }
    }

    /// Sends a data uplink (with the MAC answers owed in FOpts) through every gateway and
    /// listens in its receive windows.
    pub async fn uplink(
        &mut self,
        payload: &[u8],
        f_port: u8,
        confirmed: bool,
    ) -> Result<UplinkResult, SimError> {
        let f_cnt = self.device.session().ok_or(SimError::NotJoined)?.f_cnt_up;
        let (ch, freq) = self.next_channel()?;
        let dr = self.mac.state.data_rate;
        // A 1.1 device repeats RekeyInd (2 bytes) until RekeyConf.
        let budget = MAX_F_OPTS_LEN - if self.rekey_pending { 2 } else { 0 };
        let f_opts = self.mac.take_for_uplink(budget);
        let phy = self.device.uplink(&Uplink {
            f_port: Some(f_port),
            payload: payload.to_vec(),
            confirmed,
            f_opts: f_opts.clone(),
            adr: self.adr,
            adr_ack_req: false,
            tx_dr: dr,
            tx_ch: ch,
        })?;
        let ack = std::mem::take(&mut self.ack_next);
        let mut result = UplinkResult {
            f_cnt,
            downlink: None,
            acked: false,
        };
        // An unconfirmed uplink goes out NbTrans times unless a downlink answers it first
        // (on the same channel: the 1.1 MIC covers the channel index).
        let transmissions = if confirmed {
            1
        } else {
            self.mac.state.nb_trans.max(1)
        };
        for _ in 0..transmissions {
            let sent_at = Instant::now();
            let stamps = self.transmit(&phy, dr, freq, ch).await?;
            self.log.push(Step::UplinkSent {
                f_cnt,
                f_port: Some(f_port),
                confirmed,
                ack,
                f_opts: f_opts.clone(),
                frequency: freq,
                data_rate: dr,
                gateways: stamps.len(),
            });
            let state = &self.mac.state;
            let windows: Vec<Windows> = stamps
                .iter()
                .map(|&uplink_at| Windows {
                    uplink_at,
                    rx1_delay_us: i64::from(state.rx1_delay) * 1_000_000,
                    rx1_freq: state.rx1_frequency(ch, freq),
                    rx1_dr: state.rx1_data_rate(dr),
                    rx2_freq: state.rx2_frequency,
                    rx2_dr: state.rx2_data_rate,
                })
                .collect();
            let deadline =
                sent_at + Duration::from_secs(u64::from(state.rx1_delay) + 1) + self.window_slack;
            while let Some((gw, received)) = self.next_received(deadline).await {
                let Some((window, margin)) = self.classify(gw, &received, Some(&windows[gw]))
                else {
                    continue;
                };
                let Some(downlink) = self.accept_downlink(gw, &received, window, margin) else {
                    continue;
                };
                if downlink.ack && confirmed {
                    result.acked = true;
                    self.log.push(Step::Acked { f_cnt });
                }
                let rx_window = matches!(window, Window::Rx1 | Window::Rx2);
                result.downlink = Some((window, downlink));
                // A class A device closes its windows after a reception.
                if self.class == DeviceClass::A && rx_window {
                    break;
                }
            }
            if result.downlink.is_some() {
                break;
            }
        }
        if result.downlink.is_none() {
            self.log.push(Step::NoDownlink);
        }
        if confirmed && !result.acked {
            self.log.push(Step::NotAcked { f_cnt });
        }
        Ok(result)
    }

    /// Class C: listens on the RX2 parameters for `duration`; returns what was received.
    /// A class A device only drains (and logs as missed) what its gateways got.
    pub async fn listen(&mut self, duration: Duration) -> Vec<Downlink> {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        while let Some((gw, received)) = self.next_received(deadline).await {
            if let Some((window, margin)) = self.classify(gw, &received, None)
                && let Some(d) = self.accept_downlink(gw, &received, window, margin)
            {
                out.push(d);
            }
        }
        out
    }

    /// Decrypts and checks a received downlink, handles its MAC commands; logs the result.
    fn accept_downlink(
        &mut self,
        gw: usize,
        received: &Received,
        window: Window,
        margin_us: Option<i64>,
    ) -> Option<Downlink> {
        let gateway = hex_eui(self.gateways[gw].eui);
        let downlink = match self.device.downlink(received.payload()) {
            Ok(d) => d,
            Err(e) => {
                self.log.push(Step::DownlinkMissed {
                    gateway,
                    reason: format!("dropped by the device: {e}"),
                });
                return None;
            }
        };
        self.log.push(Step::DownlinkReceived {
            window,
            gateway,
            margin_us,
            f_cnt: downlink.f_cnt,
            f_port: downlink.f_port,
            payload: hex::encode_upper(&downlink.payload),
            confirmed: downlink.confirmed,
            ack: downlink.ack,
            f_pending: downlink.f_pending,
        });
        if downlink.confirmed {
            self.ack_next = true;
        }
        if downlink
            .commands
            .iter()
            .any(|c| matches!(c, MacCommand::RekeyConf(_)))
        {
            self.rekey_pending = false;
        }
        // The device measures the downlink about as well as the gateway measured it.
        let outcomes = self.mac.handle(&downlink.commands, self.gateways[gw].snr);
        if !outcomes.is_empty() {
            self.log.push(Step::MacCommands { outcomes });
        }
        Some(downlink)
    }

    /// The next downlink any gateway got before `deadline`.
    async fn next_received(&self, deadline: Instant) -> Option<(usize, Received)> {
        // Each gateway queues what it receives with its arrival time, so polling them in
        // turn loses nothing and judges every downlink by when it really arrived.
        let slice = Duration::from_millis(if self.gateways.len() == 1 { 200 } else { 20 });
        loop {
            for (i, gw) in self.gateways.iter().enumerate() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                if let Ok(r) = gw.next(left.min(slice)).await {
                    return Some((i, r));
                }
            }
        }
    }

    /// The window a downlink falls in for this device, or `None` (logged) when the device
    /// would not receive it. `windows` is `None` outside the windows of an uplink.
    fn classify(
        &mut self,
        gw: usize,
        received: &Received,
        windows: Option<&Windows>,
    ) -> Option<(Window, Option<i64>)> {
        let verdict = match received {
            Received::Udp(d) => self.classify_udp(d, windows),
            Received::Station(d) => self.classify_station(d, windows),
        };
        match verdict {
            Ok(w) => Some(w),
            Err(reason) => {
                self.log.push(Step::DownlinkMissed {
                    gateway: hex_eui(self.gateways[gw].eui),
                    reason,
                });
                None
            }
        }
    }

    fn rx2_matches(&self, freq: u32, dr: Option<u8>) -> bool {
        freq == self.mac.state.rx2_frequency && dr == Some(self.mac.state.rx2_data_rate)
    }

    fn classify_udp(
        &self,
        d: &ReceivedDownlink,
        windows: Option<&Windows>,
    ) -> Result<(Window, Option<i64>), String> {
        let freq = (d.txpk.freq * 1e6).round() as u32;
        let dr = mac::data_rate_index(&d.txpk.datr);
        let datr = d
            .txpk
            .datr
            .as_str()
            .map_or_else(|| d.txpk.datr.to_string(), str::to_owned);
        let params = format!("{:.3} MHz {datr}", d.txpk.freq);
        let class_c = self.class == DeviceClass::C;
        let tmst = match d.txpk.tmst {
            Some(t) if !d.txpk.imme => t,
            _ => {
                return if class_c && self.rx2_matches(freq, dr) {
                    Ok((Window::ClassC, None))
                } else if class_c {
                    Err(format!(
                        "immediate downlink on {params}, not on the RX2 parameters"
                    ))
                } else {
                    Err(format!(
                        "immediate downlink on {params} while the class A device sleeps"
                    ))
                };
            }
        };
        let margin = d.margin_us();
        if let Some(m) = margin.filter(|m| *m < 0) {
            return Err(format!(
                "reached the gateway {:.1} ms after its transmission time",
                -m as f64 / 1000.0
            ));
        }
        if let Some(w) = windows {
            let offset = i64::from(tmst.wrapping_sub(w.uplink_at as u32) as i32);
            for (window, delay, wf, wdr) in [
                (Window::Rx1, w.rx1_delay_us, w.rx1_freq, w.rx1_dr),
                (
                    Window::Rx2,
                    w.rx1_delay_us + 1_000_000,
                    w.rx2_freq,
                    w.rx2_dr,
                ),
            ] {
                if (offset - delay).abs() <= WINDOW_TOLERANCE_US {
                    return if freq == wf && dr == Some(wdr) {
                        Ok((window, margin))
                    } else {
                        Err(format!(
                            "{window} on {params}, but the device listens on {:.3} MHz DR{wdr}",
                            wf as f64 / 1e6
                        ))
                    };
                }
            }
            if !class_c {
                return Err(format!(
                    "transmitted {:.3} s after the uplink, outside RX1 and RX2",
                    offset as f64 / 1e6
                ));
            }
        }
        if class_c && self.rx2_matches(freq, dr) {
            Ok((Window::ClassC, margin))
        } else {
            Err(format!(
                "timed downlink on {params} outside the receive windows"
            ))
        }
    }

    fn classify_station(
        &self,
        d: &StationDownlink,
        windows: Option<&Windows>,
    ) -> Result<(Window, Option<i64>), String> {
        let m = &d.message;
        let freq_of = |k: &str| m[k].as_u64().map(|f| f as u32);
        let dr_of = |k: &str| m[k].as_u64().map(|d| d as u8);
        if m["dC"].as_i64() == Some(2) {
            return match (
                freq_of("RX2Freq").or(freq_of("freq")),
                dr_of("RX2DR").or(dr_of("DR")),
            ) {
                (Some(f), dr) if self.class == DeviceClass::C && self.rx2_matches(f, dr) => {
                    Ok((Window::ClassC, None))
                }
                _ if self.class == DeviceClass::A => {
                    Err("class C downlink while the class A device sleeps".into())
                }
                _ => Err("class C downlink not on the RX2 parameters".into()),
            };
        }
        let Some(w) = windows else {
            return Err("class A downlink outside the windows of an uplink".into());
        };
        let xtime = m["xtime"].as_i64().unwrap_or_default();
        if xtime != w.uplink_at {
            return Err(format!(
                "answers the uplink at xtime {xtime}, not this one ({})",
                w.uplink_at
            ));
        }
        let delay = m["RxDelay"].as_i64().unwrap_or(1).max(1) * 1_000_000;
        if delay != w.rx1_delay_us {
            return Err(format!(
                "RxDelay {} s, but the device opens RX1 after {} s",
                delay / 1_000_000,
                w.rx1_delay_us / 1_000_000
            ));
        }
        let rx1_margin = xtime + delay - d.arrived_at_xtime;
        // The station transmits in RX1 when it can, else in RX2.
        if let (Some(f), Some(dr)) = (freq_of("RX1Freq"), dr_of("RX1DR"))
            && rx1_margin > 0
        {
            if f == w.rx1_freq && dr == w.rx1_dr {
                return Ok((Window::Rx1, Some(rx1_margin)));
            }
            return Err(format!(
                "RX1 on {f} Hz DR{dr}, but the device listens on {} Hz DR{}",
                w.rx1_freq, w.rx1_dr
            ));
        }
        let rx2_margin = rx1_margin + 1_000_000;
        match (freq_of("RX2Freq"), dr_of("RX2DR")) {
            (Some(f), Some(dr)) if rx2_margin > 0 && f == w.rx2_freq && dr == w.rx2_dr => {
                Ok((Window::Rx2, Some(rx2_margin)))
            }
            (Some(f), Some(dr)) if rx2_margin > 0 => Err(format!(
                "RX2 on {f} Hz DR{dr}, but the device listens on {} Hz DR{}",
                w.rx2_freq, w.rx2_dr
            )),
            _ => Err(format!(
                "reached the station {:.1} ms too late",
                -rx2_margin as f64 / 1000.0
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semtech::{PULL_ACK, PULL_DATA, PULL_RESP, PUSH_ACK, PUSH_DATA, RxPk, TX_ACK};
    use crate::udp::UdpGatewayConfig;
    use base64::Engine as _;
    use lorawan::crypto::Direction;
    use lorawan::mac::{DevStatusAns, LinkADRReq};
    use lorawan::phy::{FCtrl, FOpts, Fhdr, MacPayload, Mhdr};
    use lorawan::{MType, crypto::downlink_mic};
    use std::net::SocketAddr;
    use tokio::net::UdpSocket;

    const EUI: [u8; 8] = [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x01];
    const NWK_S_KEY: [u8; 16] = [0x11; 16];
    const APP_S_KEY: [u8; 16] = [0x22; 16];
    const DEV_ADDR: [u8; 4] = [0x26, 0x01, 0x02, 0x03];

    /// The server side of Semtech UDP on a loopback socket: answers PUSH/PULL, remembers
    /// the last rxpk, sends PULL_RESPs.
    struct Server {
        socket: UdpSocket,
        gateway: Option<SocketAddr>,
    }

    impl Server {
        async fn new() -> Self {
            Self {
                socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
                gateway: None,
            }
        }

        /// Answers datagrams until a PUSH_DATA with an rxpk arrives; returns the rxpk.
        async fn next_rxpk(&mut self) -> RxPk {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (n, from) =
                    tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf))
                        .await
                        .expect("a datagram")
                        .unwrap();
                let d = &buf[..n];
                match d[3] {
                    PULL_DATA => {
                        self.gateway = Some(from);
                        self.socket
                            .send_to(&[2, d[1], d[2], PULL_ACK], from)
                            .await
                            .unwrap();
                    }
                    PUSH_DATA => {
                        self.socket
                            .send_to(&[2, d[1], d[2], PUSH_ACK], from)
                            .await
                            .unwrap();
                        let body: serde_json::Value = serde_json::from_slice(&d[12..]).unwrap();
                        if let Some(rxpk) = body["rxpk"].get(0) {
                            return serde_json::from_value(rxpk.clone()).unwrap();
                        }
                    }
                    TX_ACK => {}
                    other => panic!("unexpected datagram type {other}"),
                }
            }
        }

        /// Answers PULL_DATA until the gateway address is known.
        async fn wait_pull(&mut self) {
            let mut buf = vec![0u8; 1024];
            while self.gateway.is_none() {
                let (n, from) = self.socket.recv_from(&mut buf).await.unwrap();
                if buf[..n][3] == PULL_DATA {
                    self.gateway = Some(from);
                    self.socket
                        .send_to(&[2, buf[1], buf[2], PULL_ACK], from)
                        .await
                        .unwrap();
                }
            }
        }

        async fn pull_resp(&self, txpk: serde_json::Value) {
            let mut d = vec![2, 0x12, 0x34, PULL_RESP];
            d.extend_from_slice(json_bytes(&serde_json::json!({ "txpk": txpk })).as_slice());
            self.socket
                .send_to(&d, self.gateway.expect("the gateway pulled"))
                .await
                .unwrap();
        }
    }

    fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    /// A data downlink for the test session, built as a network server would.
    fn downlink_frame(f_cnt: u32, confirmed: bool, ack: bool, f_opts: &[MacCommand]) -> Vec<u8> {
        let dev_addr = DevAddr(DEV_ADDR);
        let mut opts = Vec::new();
        MacCommand::encode_all(f_opts, &mut opts).unwrap();
        let mut payload = vec![0xCA, 0xFE];
        crypto::encrypt_frm_payload(
            &Aes128Key(APP_S_KEY),
            Direction::Downlink,
            dev_addr,
            f_cnt,
            &mut payload,
        );
        let phy = PhyPayload {
            mhdr: Mhdr::new(if confirmed {
                MType::ConfirmedDataDown
            } else {
                MType::UnconfirmedDataDown
            }),
            payload: Payload::MacPayload(MacPayload {
                fhdr: Fhdr {
                    dev_addr,
                    f_ctrl: FCtrl {
                        adr: false,
                        adr_ack_req: false,
                        ack,
                        f_pending: false,
                        class_b: false,
                    },
                    f_cnt: f_cnt as u16,
                    f_opts: FOpts::new(&opts).unwrap(),
                },
                f_port: Some(5),
                frm_payload: payload,
            }),
            mic: Some([0; 4]),
        };
        let mut bytes = phy.encode_mic_input().unwrap();
        let mic = downlink_mic(&Aes128Key(NWK_S_KEY), 0, dev_addr, f_cnt, &bytes);
        bytes.extend_from_slice(&mic);
        bytes
    }

    fn txpk(frame: &[u8], tmst: Option<u32>, freq_mhz: f64, datr: &str) -> serde_json::Value {
        serde_json::json!({
            "imme": tmst.is_none(), "tmst": tmst, "freq": freq_mhz, "rfch": 0, "powe": 14,
            "modu": "LORA", "datr": datr, "codr": "4/5", "ipol": true, "size": frame.len(),
            "data": base64::engine::general_purpose::STANDARD.encode(frame),
        })
    }

    async fn abp_device(server: &mut Server, class: DeviceClass) -> SimulatedDevice {
        let addr = server.socket.local_addr().unwrap();
        let mut config = UdpGatewayConfig::new(EUI, addr);
        config.pull_interval = Duration::from_secs(60);
        let connect = tokio::spawn(UdpGateway::connect(config));
        server.wait_pull().await;
        let gateway = connect.await.unwrap().unwrap();
        let device = Device::abp(
            DeviceConfig::otaa(
                Eui64([1; 8]),
                Eui64([2; 8]),
                Version::V1_0,
                Aes128Key([0; 16]),
            ),
            DevAddr(DEV_ADDR),
            Keys::V1_0(SessionKeys10 {
                nwk_s_key: Aes128Key(NWK_S_KEY),
                app_s_key: Aes128Key(APP_S_KEY),
            }),
        );
        let mut sim =
            SimulatedDevice::new(device, vec![SimGateway::udp(gateway, -70, 7.0)], class).unwrap();
        sim.window_slack = Duration::from_millis(300);
        sim
    }

    fn freq_mhz(rxpk: &RxPk) -> f64 {
        rxpk.freq
    }

    /// RX1 at uplink tmst + 1 s on the uplink channel: received, its MAC commands answered
    /// in the next uplink, its confirmation acknowledged there.
    #[tokio::test]
    async fn rx1_downlink_with_mac_commands_is_received_and_answered() {
        let mut server = Server::new().await;
        let mut sim = abp_device(&mut server, DeviceClass::A).await;
        let up = tokio::spawn(async move {
            let r = sim.uplink(&[1, 2], 2, true).await.unwrap();
            (sim, r)
        });
        let rxpk = server.next_rxpk().await;
        assert_eq!(rxpk.datr, "SF7BW125");
        let frame = downlink_frame(
            0,
            true,
            true,
            &[
                MacCommand::DevStatusReq,
                MacCommand::LinkADRReq(LinkADRReq {
                    data_rate: 3,
                    tx_power: 1,
                    ch_mask: 0b111,
                    ch_mask_cntl: 0,
                    nb_trans: 1,
                }),
            ],
        );
        server
            .pull_resp(txpk(
                &frame,
                Some(rxpk.tmst.wrapping_add(1_000_000)),
                freq_mhz(&rxpk),
                "SF7BW125",
            ))
            .await;
        let (mut sim, result) = up.await.unwrap();
        let (window, downlink) = result.downlink.expect("a downlink");
        assert_eq!(window, Window::Rx1);
        assert_eq!(downlink.payload, vec![0xCA, 0xFE]);
        assert!(result.acked);
        assert_eq!(sim.mac.state.data_rate, 3);
        let log: Vec<String> = sim.take_log().iter().map(ToString::to_string).collect();
        assert!(
            log[0].starts_with("uplink sent: FCnt 0, FPort 2, confirmed"),
            "{log:?}"
        );
        assert!(log[1].starts_with("downlink received in RX1"), "{log:?}");
        assert!(log[1].contains("payload CAFE, confirmed, ACK"), "{log:?}");
        assert!(
            log.iter()
                .any(|l| l.contains("DevStatusReq answered DevStatusAns")),
            "{log:?}"
        );
        assert!(
            log.contains(&"uplink FCnt 0 acknowledged".to_owned()),
            "{log:?}"
        );

        // The next uplink: DR3, ACK set, the answers in FOpts.
        let up = tokio::spawn(async move {
            let r = sim.uplink(&[3], 2, false).await.unwrap();
            (sim, r)
        });
        let rxpk = server.next_rxpk().await;
        assert_eq!(rxpk.datr, "SF9BW125");
        let phy = base64::engine::general_purpose::STANDARD
            .decode(&rxpk.data)
            .unwrap();
        let PhyPayload {
            payload: Payload::MacPayload(mac),
            ..
        } = PhyPayload::decode(&phy).unwrap()
        else {
            panic!("a data uplink")
        };
        assert!(mac.fhdr.f_ctrl.ack);
        let answers =
            MacCommand::decode_all(Direction::Uplink, mac.fhdr.f_opts.as_slice()).unwrap();
        assert_eq!(
            answers,
            vec![
                MacCommand::DevStatusAns(DevStatusAns {
                    battery: 255,
                    margin: 7
                }),
                MacCommand::LinkADRAns(lorawan::mac::LinkADRAns {
                    power_ack: true,
                    data_rate_ack: true,
                    channel_mask_ack: true
                }),
            ]
        );
        let (mut sim, result) = up.await.unwrap();
        assert!(result.downlink.is_none());
        assert!(sim.take_log().iter().any(|s| matches!(s, Step::NoDownlink)));
    }

    /// RX2 (tmst + 2 s on 869.525 MHz SF12) is received; a downlink in RX2 with RX1's
    /// parameters, or one outside the windows, is not.
    #[tokio::test]
    async fn rx2_and_wrong_window_handling() {
        let mut server = Server::new().await;
        let mut sim = abp_device(&mut server, DeviceClass::A).await;
        let up = tokio::spawn(async move {
            let r = sim.uplink(&[1], 2, false).await.unwrap();
            (sim, r)
        });
        let rxpk = server.next_rxpk().await;
        // Wrong: 1.5 s after the uplink, then RX2 timing on RX1's parameters, then right.
        server
            .pull_resp(txpk(
                &downlink_frame(0, false, false, &[]),
                Some(rxpk.tmst.wrapping_add(1_500_000)),
                869.525,
                "SF12BW125",
            ))
            .await;
        server
            .pull_resp(txpk(
                &downlink_frame(1, false, false, &[]),
                Some(rxpk.tmst.wrapping_add(2_000_000)),
                freq_mhz(&rxpk),
                "SF7BW125",
            ))
            .await;
        server
            .pull_resp(txpk(
                &downlink_frame(2, false, false, &[]),
                Some(rxpk.tmst.wrapping_add(2_000_000)),
                869.525,
                "SF12BW125",
            ))
            .await;
        let (mut sim, result) = up.await.unwrap();
        let (window, downlink) = result.downlink.expect("the RX2 downlink");
        assert_eq!((window, downlink.f_cnt), (Window::Rx2, 2));
        let log: Vec<String> = sim.take_log().iter().map(ToString::to_string).collect();
        assert!(log[1].contains("outside RX1 and RX2"), "{log:?}");
        assert!(
            log[2].contains("RX2 on 868.") && log[2].contains("listens on 869.525 MHz DR0"),
            "{log:?}"
        );
        assert!(log[3].starts_with("downlink received in RX2"), "{log:?}");

        // A class A device does not hear an immediate downlink.
        server
            .pull_resp(txpk(
                &downlink_frame(3, false, false, &[]),
                None,
                869.525,
                "SF12BW125",
            ))
            .await;
        assert!(sim.listen(Duration::from_millis(500)).await.is_empty());
        assert!(
            sim.take_log()[0]
                .to_string()
                .contains("while the class A device sleeps")
        );
    }

    /// Class C: an immediate downlink on RX2's parameters arrives at any time; one on other
    /// parameters does not.
    #[tokio::test]
    async fn class_c_receives_on_rx2_parameters_any_time() {
        let mut server = Server::new().await;
        let mut sim = abp_device(&mut server, DeviceClass::C).await;
        server
            .pull_resp(txpk(
                &downlink_frame(0, false, false, &[]),
                None,
                868.1,
                "SF7BW125",
            ))
            .await;
        server
            .pull_resp(txpk(
                &downlink_frame(1, true, false, &[]),
                None,
                869.525,
                "SF12BW125",
            ))
            .await;
        let got = sim.listen(Duration::from_millis(800)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].f_cnt, 1);
        let log: Vec<String> = sim.take_log().iter().map(ToString::to_string).collect();
        assert!(log[0].contains("not on the RX2 parameters"), "{log:?}");
        assert!(
            log[1].starts_with("downlink received in class C"),
            "{log:?}"
        );
        // The confirmed class C downlink is acknowledged by the next uplink.
        let up = tokio::spawn(async move { sim.uplink(&[9], 2, false).await.unwrap() });
        let rxpk = server.next_rxpk().await;
        let phy = base64::engine::general_purpose::STANDARD
            .decode(&rxpk.data)
            .unwrap();
        assert_eq!(phy[5] & 0x20, 0x20, "FCtrl.ACK");
        up.await.unwrap();
    }

    /// NbTrans 2: an unconfirmed uplink without answer goes out twice, same frame.
    #[tokio::test]
    async fn nb_trans_repeats_unanswered_uplinks() {
        let mut server = Server::new().await;
        let mut sim = abp_device(&mut server, DeviceClass::A).await;
        sim.mac.state.nb_trans = 2;
        let up = tokio::spawn(async move {
            let r = sim.uplink(&[1], 2, false).await.unwrap();
            (sim, r)
        });
        let first = server.next_rxpk().await;
        let second = server.next_rxpk().await;
        assert_eq!(first.data, second.data);
        assert!(second.tmst.wrapping_sub(first.tmst) >= 2_000_000);
        let (mut sim, result) = up.await.unwrap();
        assert!(result.downlink.is_none());
        let sent = sim
            .take_log()
            .iter()
            .filter(|s| matches!(s, Step::UplinkSent { f_cnt: 0, .. }))
            .count();
        assert_eq!(sent, 2);
    }

    #[tokio::test]
    async fn saved_device_round_trips() {
        let mut server = Server::new().await;
        let mut sim = abp_device(&mut server, DeviceClass::C).await;
        sim.mac.state.rx1_delay = 3;
        sim.device.set_f_cnt_up(41).unwrap();
        let json = serde_json::to_string(&sim.save()).unwrap();
        assert!(json.contains(r#""version":"1.0""#), "{json}");
        let back: SavedDevice = serde_json::from_str(&json).unwrap();
        let config = DeviceConfig::otaa(
            back.dev_eui,
            back.join_eui,
            Version::V1_0,
            Aes128Key([0; 16]),
        );
        let gateways = std::mem::take(&mut sim.gateways);
        let restored = SimulatedDevice::restore(&back, config.clone(), gateways).unwrap();
        assert_eq!(restored.class(), DeviceClass::C);
        assert_eq!(restored.mac.state.rx1_delay, 3);
        let session = restored.device().session().unwrap();
        assert_eq!(session.f_cnt_up, 41);
        assert_eq!(
            session.keys,
            Keys::V1_0(SessionKeys10 {
                nwk_s_key: Aes128Key(NWK_S_KEY),
                app_s_key: Aes128Key(APP_S_KEY),
            })
        );
        assert!(SimulatedDevice::restore(&back, config, Vec::new()).is_err());
    }
}
