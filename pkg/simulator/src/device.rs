//! A simulated end device: builds the frames a real device sends (join-requests, 1.1
//! rejoin-requests, data uplinks) and checks and decrypts the frames it receives (join- and
//! rejoin-accepts, data downlinks), as LoRaWAN L2 1.0.x and 1.1 require.

use lorawan::crypto::{self, Direction, FOptsCounterVariant, SessionKeys10, SessionKeys11};
use lorawan::phy::{DlSettings, FCtrl, FOpts, Fhdr, MacPayload, Mhdr, Payload};
use lorawan::{
    Aes128Key, DevAddr, DevNonce, Eui64, MType, MacCommand, NetId, PhyPayload, reconstruct_f_cnt,
};

use crate::SimError;

/// The LoRaWAN version a simulated device implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// LoRaWAN 1.0.x (one FCntDown, NwkSKey/AppSKey).
    V1_0,
    /// LoRaWAN 1.1 (NFCntDown/AFCntDown, four session keys, RekeyInd after a join).
    V1_1,
}

/// The session keys of a device, by version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// A 1.0.x session (also a 1.1 device joined by a 1.0 network).
    V1_0(SessionKeys10),
    /// A 1.1 session.
    V1_1(SessionKeys11),
}

impl Keys {
    /// The AppSKey.
    pub fn app_s_key(&self) -> Aes128Key {
        match self {
            Keys::V1_0(k) => k.app_s_key,
            Keys::V1_1(k) => k.app_s_key,
        }
    }

    /// The key that encrypts FPort 0 payloads (and 1.1 FOpts).
    fn nwk_enc(&self) -> Aes128Key {
        match self {
            Keys::V1_0(k) => k.nwk_s_key,
            Keys::V1_1(k) => k.nwk_s_enc_key,
        }
    }
}

/// An active session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The DevAddr.
    pub dev_addr: DevAddr,
    /// The session keys.
    pub keys: Keys,
    /// The next uplink frame counter.
    pub f_cnt_up: u32,
    /// The last network (1.0.x: the only) downlink counter received.
    pub last_n_f_cnt_down: Option<u32>,
    /// The last application downlink counter received (1.1).
    pub last_a_f_cnt_down: Option<u32>,
    /// RX1 delay in seconds from the join-accept (1 for ABP unless set).
    pub rx1_delay: u8,
    /// DLSettings from the join-accept.
    pub dl_settings: DlSettings,
}

/// What a simulated device is.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// DevEUI.
    pub dev_eui: Eui64,
    /// JoinEUI.
    pub join_eui: Eui64,
    /// The version the device implements.
    pub version: Version,
    /// AppKey (OTAA).
    pub app_key: Aes128Key,
    /// NwkKey (OTAA, 1.1 only).
    pub nwk_key: Option<Aes128Key>,
    /// The first DevNonce to use; each join-request uses the next.
    pub first_dev_nonce: u16,
    /// The FOpts encryption block layout of a 1.1 session.
    pub f_opts_variant: FOptsCounterVariant,
}

impl DeviceConfig {
    /// An OTAA device of `version` with `app_key` (and, for 1.1, `nwk_key`).
    pub fn otaa(dev_eui: Eui64, join_eui: Eui64, version: Version, app_key: Aes128Key) -> Self {
        Self {
            dev_eui,
            join_eui,
            version,
            app_key,
            nwk_key: None,
            first_dev_nonce: 1,
            f_opts_variant: FOptsCounterVariant::Original,
        }
    }
}

/// One data uplink to send.
#[derive(Debug, Clone, Default)]
pub struct Uplink {
    /// FPort; `None` for a frame with only FOpts.
    pub f_port: Option<u8>,
    /// Clear application payload (or MAC commands for FPort 0).
    pub payload: Vec<u8>,
    /// Confirmed uplink.
    pub confirmed: bool,
    /// MAC commands to put in FOpts.
    pub f_opts: Vec<MacCommand>,
    /// The ADR bit.
    pub adr: bool,
    /// The ADRACKReq bit.
    pub adr_ack_req: bool,
    /// Data rate index of the transmission (for the 1.1 MIC).
    pub tx_dr: u8,
    /// Channel index of the transmission (for the 1.1 MIC).
    pub tx_ch: u8,
}

/// A data downlink the device accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downlink {
    /// The 32-bit frame counter.
    pub f_cnt: u32,
    /// FPort, if any.
    pub f_port: Option<u8>,
    /// Decrypted FRMPayload (application data, or MAC commands for FPort 0).
    pub payload: Vec<u8>,
    /// Confirmed downlink: the next uplink acknowledges it.
    pub confirmed: bool,
    /// The ACK bit: acknowledges the last confirmed uplink.
    pub ack: bool,
    /// FPending: the network has more to send.
    pub f_pending: bool,
    /// MAC commands from FOpts or an FPort 0 payload.
    pub commands: Vec<MacCommand>,
}

/// A simulated end device.
#[derive(Debug, Clone)]
pub struct Device {
    config: DeviceConfig,
    next_dev_nonce: u16,
    last_dev_nonce: Option<DevNonce>,
    session: Option<Session>,
    /// Set by a confirmed downlink: the next uplink carries ACK (1.1: with its FCnt).
    ack_pending: Option<u32>,
    /// The FCnt of the last confirmed uplink, for the 1.1 downlink MIC of its ACK.
    last_confirmed_up: Option<u32>,
    /// 1.1 after a join: RekeyInd goes in every uplink until RekeyConf arrives.
    rekey_pending: bool,
    /// The NetID of the network that accepted the last join (for rejoin types 0 and 2).
    net_id: Option<NetId>,
    /// RJcount0: type 0 and 2 rejoin-requests sent in this session (reset by a new one).
    rj_count0: u16,
    /// RJcount1: type 1 rejoin-requests sent (never reset: the JSIntKey does not change).
    rj_count1: u16,
    /// The last rejoin-request sent: its type and RJcount, awaiting its rejoin-accept.
    last_rejoin: Option<(u8, u16)>,
    /// The JoinNonce of the last accepted join- or rejoin-accept (1.1: must increase).
    last_join_nonce: Option<u32>,
}

impl Device {
    /// An OTAA device, not joined yet.
    pub fn new(config: DeviceConfig) -> Self {
        Self {
            next_dev_nonce: config.first_dev_nonce,
            config,
            last_dev_nonce: None,
            session: None,
            ack_pending: None,
            last_confirmed_up: None,
            rekey_pending: false,
            net_id: None,
            rj_count0: 0,
            rj_count1: 0,
            last_rejoin: None,
            last_join_nonce: None,
        }
    }

    /// An ABP device with a ready session.
    pub fn abp(config: DeviceConfig, dev_addr: DevAddr, keys: Keys) -> Self {
        let mut device = Self::new(config);
        device.session = Some(Session {
            dev_addr,
            keys,
            f_cnt_up: 0,
            last_n_f_cnt_down: None,
            last_a_f_cnt_down: None,
            rx1_delay: 1,
            dl_settings: DlSettings::default(),
        });
        device
    }

    /// The device's configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The active session, once joined (or from the start for ABP).
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Sets the next uplink frame counter (e.g. to test a counter past 65535).
    pub fn set_f_cnt_up(&mut self, f_cnt: u32) -> Result<(), SimError> {
        self.session.as_mut().ok_or(SimError::NotJoined)?.f_cnt_up = f_cnt;
        Ok(())
    }

    /// The key that signs and encrypts join-requests and join-accepts.
    fn root_key(&self) -> Result<Aes128Key, SimError> {
        match self.config.version {
            Version::V1_0 => Ok(self.config.app_key),
            Version::V1_1 => self.config.nwk_key.ok_or(SimError::MissingKey("nwk_key")),
        }
    }

    /// A join-request with the next DevNonce.
    pub fn join_request(&mut self) -> Result<Vec<u8>, SimError> {
        let dev_nonce = DevNonce(self.next_dev_nonce);
        self.next_dev_nonce = self.next_dev_nonce.wrapping_add(1);
        self.last_dev_nonce = Some(dev_nonce);
        let phy = PhyPayload {
            mhdr: Mhdr::new(MType::JoinRequest),
            payload: Payload::JoinRequest(lorawan::phy::JoinRequest {
                join_eui: self.config.join_eui,
                dev_eui: self.config.dev_eui,
                dev_nonce,
            }),
            mic: Some([0; 4]),
        };
        let mut bytes = phy.encode_mic_input()?;
        let mic = crypto::join_request_mic(&self.root_key()?, &bytes);
        bytes.extend_from_slice(&mic);
        Ok(bytes)
    }

    /// Accepts a join-accept answering the last join-request: decrypts it, checks its MIC,
    /// derives the session keys and starts the session.
    pub fn accept_join(&mut self, raw: &[u8]) -> Result<&Session, SimError> {
        let dev_nonce = self.last_dev_nonce.ok_or(SimError::NoJoinRequest)?;
        let key = self.root_key()?;
        let plain = crypto::decrypt_join_accept(&key, raw)?;
        let phy = PhyPayload::decode(&plain)?;
        let Payload::JoinAccept(accept) = phy.payload else {
            return Err(SimError::Unexpected("not a join-accept"));
        };
        let opt_neg = accept.dl_settings.opt_neg && self.config.version == Version::V1_1;
        let msg = PhyPayload::mic_input(&plain);
        let mic = if opt_neg {
            let js_int_key = crypto::derive_js_int_key(&key, self.config.dev_eui);
            crypto::join_accept_mic_1_1(
                &js_int_key,
                crypto::JOIN_REQ_TYPE_JOIN_REQUEST,
                self.config.join_eui,
                dev_nonce,
                msg,
            )
        } else {
            crypto::join_accept_mic_1_0(&key, msg)
        };
        if !crypto::mic_matches(&mic, &plain[plain.len() - 4..]) {
            return Err(SimError::MicMismatch("join-accept"));
        }
        let keys = if opt_neg {
            Keys::V1_1(crypto::derive_session_keys_1_1(
                &key,
                &self.config.app_key,
                accept.join_nonce,
                self.config.join_eui,
                dev_nonce,
            ))
        } else {
            // A 1.0 device, or a 1.1 device joined by a 1.0 network (NwkKey as AppKey).
            Keys::V1_0(crypto::derive_session_keys_1_0(
                &key,
                accept.join_nonce,
                accept.home_net_id,
                dev_nonce,
            ))
        };
        self.rekey_pending = matches!(keys, Keys::V1_1(_));
        self.ack_pending = None;
        self.last_confirmed_up = None;
        self.net_id = Some(accept.home_net_id);
        self.rj_count0 = 0;
        self.last_rejoin = None;
        self.last_join_nonce = Some(accept.join_nonce.get());
        self.session = Some(Session {
            dev_addr: accept.dev_addr,
            keys,
            f_cnt_up: 0,
            last_n_f_cnt_down: None,
            last_a_f_cnt_down: None,
            rx1_delay: accept.rx1_delay_secs(),
            dl_settings: accept.dl_settings,
        });
        Ok(self.session.as_ref().expect("session just set"))
    }

    /// The next RJcount0 (type 0 and 2 rejoin-requests) and RJcount1 (type 1).
    pub fn rj_counts(&self) -> (u16, u16) {
        (self.rj_count0, self.rj_count1)
    }

    /// A LoRaWAN 1.1 rejoin-request of `rejoin_type` (0, 1 or 2, L2 1.1 §6.2.4): types 0
    /// and 2 carry the NetID and DevEUI and are signed with the session's SNwkSIntKey; type 1
    /// carries the JoinEUI and DevEUI and is signed with the JSIntKey. Uses and advances
    /// RJcount0 (types 0, 2) or RJcount1 (type 1).
    pub fn rejoin_request(&mut self, rejoin_type: u8) -> Result<Vec<u8>, SimError> {
        if self.config.version != Version::V1_1 {
            return Err(SimError::Unexpected(
                "rejoin-requests exist only in LoRaWAN 1.1",
            ));
        }
        let (payload, key) = match rejoin_type {
            0 | 2 => {
                let Some(Session {
                    keys: Keys::V1_1(k),
                    ..
                }) = &self.session
                else {
                    return Err(SimError::Unexpected(
                        "rejoin types 0 and 2 need a LoRaWAN 1.1 session",
                    ));
                };
                let net_id = self.net_id.ok_or(SimError::Unexpected(
                    "rejoin types 0 and 2 need the NetID of an over-the-air join",
                ))?;
                let rj = self.rj_count0;
                self.rj_count0 = self.rj_count0.wrapping_add(1);
                self.last_rejoin = Some((rejoin_type, rj));
                (
                    lorawan::phy::RejoinRequest::Type0Or2 {
                        rejoin_type,
                        net_id,
                        dev_eui: self.config.dev_eui,
                        rj_count0: rj,
                    },
                    k.s_nwk_s_int_key,
                )
            }
            1 => {
                let key = crypto::derive_js_int_key(&self.root_key()?, self.config.dev_eui);
                let rj = self.rj_count1;
                self.rj_count1 = self.rj_count1.wrapping_add(1);
                self.last_rejoin = Some((1, rj));
                (
                    lorawan::phy::RejoinRequest::Type1 {
                        join_eui: self.config.join_eui,
                        dev_eui: self.config.dev_eui,
                        rj_count1: rj,
                    },
                    key,
                )
            }
            _ => return Err(SimError::Unexpected("RejoinType must be 0, 1 or 2")),
        };
        let phy = PhyPayload {
            mhdr: Mhdr::new(MType::RejoinRequest),
            payload: Payload::RejoinRequest(payload),
            mic: Some([0; 4]),
        };
        let mut bytes = phy.encode_mic_input()?;
        let mic = crypto::rejoin_request_mic(&key, &bytes);
        bytes.extend_from_slice(&mic);
        Ok(bytes)
    }

    /// Accepts the join-accept answering the last rejoin-request (L2 1.1 §6.2.3): decrypted
    /// with the JSEncKey, MIC with the JSIntKey over the RejoinType and RJcount, JoinNonce
    /// above the last one; starts the new session (RekeyInd until RekeyConf). Type 0 and 1
    /// take the accept's radio settings; type 2 keeps the current RX1 delay and DLSettings.
    pub fn accept_rejoin(&mut self, raw: &[u8]) -> Result<&Session, SimError> {
        let (rejoin_type, rj) = self.last_rejoin.ok_or(SimError::NoJoinRequest)?;
        let nwk_key = self.root_key()?;
        let dev_eui = self.config.dev_eui;
        let plain =
            crypto::decrypt_join_accept(&crypto::derive_js_enc_key(&nwk_key, dev_eui), raw)?;
        let phy = PhyPayload::decode(&plain)?;
        let Payload::JoinAccept(accept) = phy.payload else {
            return Err(SimError::Unexpected("not a join-accept"));
        };
        if !accept.dl_settings.opt_neg {
            return Err(SimError::Unexpected("a rejoin-accept without OptNeg"));
        }
        let mic = crypto::join_accept_mic_1_1(
            &crypto::derive_js_int_key(&nwk_key, dev_eui),
            rejoin_type,
            self.config.join_eui,
            DevNonce(rj),
            PhyPayload::mic_input(&plain),
        );
        if !crypto::mic_matches(&mic, &plain[plain.len() - 4..]) {
            return Err(SimError::MicMismatch("rejoin-accept"));
        }
        if self
            .last_join_nonce
            .is_some_and(|last| accept.join_nonce.get() <= last)
        {
            return Err(SimError::Unexpected(
                "rejoin-accept JoinNonce not above the last one",
            ));
        }
        let keys = Keys::V1_1(crypto::derive_session_keys_1_1(
            &nwk_key,
            &self.config.app_key,
            accept.join_nonce,
            self.config.join_eui,
            DevNonce(rj),
        ));
        let (rx1_delay, dl_settings) = match (&self.session, rejoin_type) {
            (Some(s), 2) => (s.rx1_delay, s.dl_settings),
            _ => (accept.rx1_delay_secs(), accept.dl_settings),
        };
        self.last_rejoin = None;
        self.last_join_nonce = Some(accept.join_nonce.get());
        self.net_id = Some(accept.home_net_id);
        self.rj_count0 = 0;
        self.rekey_pending = true;
        self.ack_pending = None;
        self.last_confirmed_up = None;
        self.session = Some(Session {
            dev_addr: accept.dev_addr,
            keys,
            f_cnt_up: 0,
            last_n_f_cnt_down: None,
            last_a_f_cnt_down: None,
            rx1_delay,
            dl_settings,
        });
        Ok(self.session.as_ref().expect("session just set"))
    }

    /// The NetID a join-accept announced is not kept; this is the NetID of a raw join-accept,
    /// for tests that check it.
    pub fn join_accept_net_id(&self, raw: &[u8]) -> Result<NetId, SimError> {
        let plain = crypto::decrypt_join_accept(&self.root_key()?, raw)?;
        match PhyPayload::decode(&plain)?.payload {
            Payload::JoinAccept(a) => Ok(a.home_net_id),
            _ => Err(SimError::Unexpected("not a join-accept")),
        }
    }

    /// Builds the next data uplink and advances FCntUp.
    pub fn uplink(&mut self, up: &Uplink) -> Result<Vec<u8>, SimError> {
        let ack = self.ack_pending.take();
        let rekey = self.rekey_pending;
        let session = self.session.as_mut().ok_or(SimError::NotJoined)?;
        let f_cnt = session.f_cnt_up;
        let mut commands = up.f_opts.clone();
        if rekey {
            commands.push(MacCommand::RekeyInd(lorawan::mac::RekeyInd {
                minor_version: 1,
            }));
        }
        let mut f_opts = Vec::new();
        MacCommand::encode_all(&commands, &mut f_opts)?;
        if f_opts.len() > FOpts::MAX_LEN {
            return Err(SimError::Unexpected("FOpts longer than 15 bytes"));
        }
        if let Keys::V1_1(k) = &session.keys {
            let variant = match self.config.f_opts_variant {
                FOptsCounterVariant::Original => FOptsCounterVariant::Original,
                _ => FOptsCounterVariant::ErrataNFCnt,
            };
            crypto::encrypt_f_opts(
                &k.nwk_s_enc_key,
                Direction::Uplink,
                session.dev_addr,
                f_cnt,
                &mut f_opts,
                variant,
            )?;
        }
        let mut frm_payload = up.payload.clone();
        if up.f_port.is_some() && !frm_payload.is_empty() {
            let key = if up.f_port == Some(0) {
                session.keys.nwk_enc()
            } else {
                session.keys.app_s_key()
            };
            crypto::encrypt_frm_payload(
                &key,
                Direction::Uplink,
                session.dev_addr,
                f_cnt,
                &mut frm_payload,
            );
        }
        let m_type = if up.confirmed {
            MType::ConfirmedDataUp
        } else {
            MType::UnconfirmedDataUp
        };
        let phy = PhyPayload {
            mhdr: Mhdr::new(m_type),
            payload: Payload::MacPayload(MacPayload {
                fhdr: Fhdr {
                    dev_addr: session.dev_addr,
                    f_ctrl: FCtrl {
                        adr: up.adr,
                        adr_ack_req: up.adr_ack_req,
                        ack: ack.is_some(),
                        f_pending: false,
                        class_b: false,
                    },
                    f_cnt: f_cnt as u16,
                    f_opts: FOpts::new(&f_opts)?,
                },
                f_port: up.f_port,
                frm_payload,
            }),
            mic: Some([0; 4]),
        };
        let mut bytes = phy.encode_mic_input()?;
        let mic = match &session.keys {
            Keys::V1_0(k) => crypto::uplink_mic_1_0(&k.nwk_s_key, session.dev_addr, f_cnt, &bytes),
            Keys::V1_1(k) => crypto::uplink_mic_1_1(
                &k.f_nwk_s_int_key,
                &k.s_nwk_s_int_key,
                ack.map_or(0, |c| c as u16),
                up.tx_dr,
                up.tx_ch,
                session.dev_addr,
                f_cnt,
                &bytes,
            ),
        };
        bytes.extend_from_slice(&mic);
        session.f_cnt_up = f_cnt.wrapping_add(1);
        if up.confirmed {
            self.last_confirmed_up = Some(f_cnt);
        }
        Ok(bytes)
    }

    /// Checks and decrypts a data downlink for this device: DevAddr, frame counter (no
    /// replay), MIC, payload and FOpts.
    pub fn downlink(&mut self, raw: &[u8]) -> Result<Downlink, SimError> {
        let phy = PhyPayload::decode(raw)?;
        let confirmed = match phy.m_type() {
            MType::UnconfirmedDataDown => false,
            MType::ConfirmedDataDown => true,
            _ => return Err(SimError::Unexpected("not a data downlink")),
        };
        let Payload::MacPayload(mac) = phy.payload else {
            return Err(SimError::Unexpected("not a data downlink"));
        };
        let session = self.session.as_mut().ok_or(SimError::NotJoined)?;
        if mac.fhdr.dev_addr != session.dev_addr {
            return Err(SimError::OtherDevice(mac.fhdr.dev_addr));
        }
        let application = matches!(mac.f_port, Some(p) if p > 0);
        let uses_a_cnt = application && matches!(session.keys, Keys::V1_1(_));
        let last = if uses_a_cnt {
            session.last_a_f_cnt_down
        } else {
            session.last_n_f_cnt_down
        };
        let f_cnt = reconstruct_f_cnt(last, mac.fhdr.f_cnt);
        if last.is_some_and(|l| f_cnt <= l) {
            return Err(SimError::Replay { f_cnt });
        }
        let msg = PhyPayload::mic_input(raw);
        let mic = match &session.keys {
            Keys::V1_0(k) => crypto::downlink_mic(&k.nwk_s_key, 0, session.dev_addr, f_cnt, msg),
            Keys::V1_1(k) => {
                let conf = if mac.fhdr.f_ctrl.ack {
                    self.last_confirmed_up.map_or(0, |c| c as u16)
                } else {
                    0
                };
                crypto::downlink_mic(&k.s_nwk_s_int_key, conf, session.dev_addr, f_cnt, msg)
            }
        };
        if !crypto::mic_matches(&mic, &raw[raw.len() - 4..]) {
            return Err(SimError::MicMismatch("data downlink"));
        }
        let mut f_opts = mac.fhdr.f_opts.as_slice().to_vec();
        if let Keys::V1_1(k) = &session.keys {
            let variant = match self.config.f_opts_variant {
                FOptsCounterVariant::Original => FOptsCounterVariant::Original,
                _ => FOptsCounterVariant::errata_for(Direction::Downlink, mac.f_port),
            };
            crypto::encrypt_f_opts(
                &k.nwk_s_enc_key,
                Direction::Downlink,
                session.dev_addr,
                f_cnt,
                &mut f_opts,
                variant,
            )?;
        }
        let mut payload = mac.frm_payload;
        if mac.f_port.is_some() {
            let key = if application {
                session.keys.app_s_key()
            } else {
                session.keys.nwk_enc()
            };
            crypto::decrypt_frm_payload(
                &key,
                Direction::Downlink,
                session.dev_addr,
                f_cnt,
                &mut payload,
            );
        }
        let mut commands = MacCommand::decode_all(Direction::Downlink, &f_opts)?;
        if mac.f_port == Some(0) {
            commands.extend(MacCommand::decode_all(Direction::Downlink, &payload)?);
        }
        if uses_a_cnt {
            session.last_a_f_cnt_down = Some(f_cnt);
        } else {
            session.last_n_f_cnt_down = Some(f_cnt);
        }
        if commands
            .iter()
            .any(|c| matches!(c, MacCommand::RekeyConf(_)))
        {
            self.rekey_pending = false;
        }
        if confirmed {
            self.ack_pending = Some(f_cnt);
        }
        Ok(Downlink {
            f_cnt,
            f_port: mac.f_port,
            payload,
            confirmed,
            ack: mac.fhdr.f_ctrl.ack,
            f_pending: mac.fhdr.f_ctrl.f_pending,
            commands,
        })
    }
}
