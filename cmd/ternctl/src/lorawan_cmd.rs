//! `ternctl lorawan`: decode, encode and derive keys for LoRaWAN frames, offline.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use lorawan::crypto::{self, Direction, FOptsCounterVariant};
use lorawan::phy::{FCtrl, FOpts, Fhdr, JoinRequest, MacPayload, Mhdr, Payload, RejoinRequest};
use lorawan::{
    Aes128Key, DevAddr, DevNonce, Eui64, JoinNonce, MType, MacCommand, NetId, PhyPayload,
};
use serde_json::{Map, Value, json};

/// The `ternctl lorawan` subcommands.
#[derive(Subcommand)]
pub enum LorawanCommand {
    /// Decode a PHYPayload (hex or base64) into JSON; decrypt and check the MIC when keys are given.
    Decode(Box<DecodeArgs>),
    /// Build a data frame or join-request from flags and print it as hex.
    Encode(Box<EncodeArgs>),
    /// Derive the session keys of a join from root keys and nonces.
    DeriveKeys(DeriveKeysArgs),
}

/// LoRaWAN MAC version family: it decides which keys and MIC scheme apply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Version {
    /// LoRaWAN 1.0.0 to 1.0.4.
    V1_0,
    /// LoRaWAN 1.1.
    V1_1,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.0" | "1.0.0" | "1.0.1" | "1.0.2" | "1.0.3" | "1.0.4" => Ok(Self::V1_0),
            "1.1" | "1.1.0" | "1.1.1" => Ok(Self::V1_1),
            _ => Err(format!("unknown LoRaWAN version {s:?}: use 1.0 or 1.1")),
        }
    }
}

/// Which 1.1 FOpts encryption counter block to use.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum FOptsEncryption {
    /// The LoRaWAN 1.1 errata (1.1.1): counter block byte 15 is 1.
    Errata,
    /// LoRaWAN 1.1.0 as first published: counter block byte 15 is 0.
    Original,
}

/// Keys and counters shared by decode and encode.
#[derive(Args)]
pub struct FrameKeys {
    /// AppKey (1.0 root key; in 1.1 the application root key).
    #[arg(long)]
    app_key: Option<Aes128Key>,
    /// NwkKey (1.1 root key: join-request MIC and join-accept encryption).
    #[arg(long)]
    nwk_key: Option<Aes128Key>,
    /// NwkSKey (1.0 network session key).
    #[arg(long)]
    nwk_s_key: Option<Aes128Key>,
    /// AppSKey (application session key).
    #[arg(long)]
    app_s_key: Option<Aes128Key>,
    /// FNwkSIntKey (1.1).
    #[arg(long)]
    f_nwk_s_int_key: Option<Aes128Key>,
    /// SNwkSIntKey (1.1).
    #[arg(long)]
    s_nwk_s_int_key: Option<Aes128Key>,
    /// NwkSEncKey (1.1).
    #[arg(long)]
    nwk_s_enc_key: Option<Aes128Key>,
    /// JSIntKey (1.1 join-accept and rejoin type 1 MIC); derived from --nwk-key and the DevEUI when absent.
    #[arg(long)]
    js_int_key: Option<Aes128Key>,
    /// Full 32-bit FCnt, or the last one known: the frame's 16-bit FCnt is extended from it.
    #[arg(long, value_parser = parse_u32)]
    f_cnt: Option<u32>,
    /// 1.1 ConfFCnt: FCnt of the confirmed frame this one acknowledges.
    #[arg(long, value_parser = parse_u16, default_value = "0")]
    conf_f_cnt: u16,
    /// 1.1 uplink MIC: data rate index of the transmission.
    #[arg(long, value_parser = parse_u8, default_value = "0")]
    tx_dr: u8,
    /// 1.1 uplink MIC: channel index of the transmission.
    #[arg(long, value_parser = parse_u8, default_value = "0")]
    tx_ch: u8,
    /// DevNonce of the join-request a join-accept answers (1.1 join-accept MIC).
    #[arg(long, value_parser = parse_u16)]
    dev_nonce: Option<u16>,
    /// JoinEUI (1.1 join-accept MIC).
    #[arg(long)]
    join_eui: Option<Eui64>,
    /// DevEUI (to derive JSIntKey from --nwk-key).
    #[arg(long)]
    dev_eui: Option<Eui64>,
    /// LoRaWAN version: 1.0 or 1.1 (default: 1.1 when a 1.1 session key is given).
    #[arg(long)]
    version: Option<Version>,
    /// 1.1 FOpts encryption variant.
    #[arg(long, value_enum, default_value = "errata")]
    f_opts_encryption: FOptsEncryption,
}

impl FrameKeys {
    fn version(&self) -> Version {
        self.version.unwrap_or(
            if self.f_nwk_s_int_key.is_some()
                || self.s_nwk_s_int_key.is_some()
                || self.nwk_s_enc_key.is_some()
            {
                Version::V1_1
            } else {
                Version::V1_0
            },
        )
    }

    fn full_f_cnt(&self, wire: u16) -> u32 {
        match self.f_cnt {
            Some(last) => lorawan::reconstruct_f_cnt(Some(last), wire),
            None => u32::from(wire),
        }
    }

    /// Key for FRMPayload: AppSKey for FPort > 0, the network encryption key for FPort 0.
    fn payload_key(&self, f_port: u8) -> Option<Aes128Key> {
        if f_port > 0 {
            self.app_s_key
        } else if self.version() == Version::V1_1 {
            self.nwk_s_enc_key
        } else {
            self.nwk_s_key
        }
    }

    fn f_opts_variant(&self, dir: Direction, f_port: Option<u8>) -> FOptsCounterVariant {
        match self.f_opts_encryption {
            FOptsEncryption::Original => FOptsCounterVariant::Original,
            FOptsEncryption::Errata => FOptsCounterVariant::errata_for(dir, f_port),
        }
    }

    /// The data-frame MIC over `msg`, if the keys it needs were given.
    fn data_mic(&self, uplink: bool, dev_addr: DevAddr, f_cnt: u32, msg: &[u8]) -> Option<[u8; 4]> {
        match (self.version(), uplink) {
            (Version::V1_0, true) => self
                .nwk_s_key
                .map(|k| crypto::uplink_mic_1_0(&k, dev_addr, f_cnt, msg)),
            (Version::V1_0, false) => self
                .nwk_s_key
                .map(|k| crypto::downlink_mic(&k, 0, dev_addr, f_cnt, msg)),
            (Version::V1_1, true) => match (self.f_nwk_s_int_key, self.s_nwk_s_int_key) {
                (Some(f), Some(s)) => Some(crypto::uplink_mic_1_1(
                    &f,
                    &s,
                    self.conf_f_cnt,
                    self.tx_dr,
                    self.tx_ch,
                    dev_addr,
                    f_cnt,
                    msg,
                )),
                _ => None,
            },
            (Version::V1_1, false) => self
                .s_nwk_s_int_key
                .map(|k| crypto::downlink_mic(&k, self.conf_f_cnt, dev_addr, f_cnt, msg)),
        }
    }

    /// JSIntKey: given, or derived from NwkKey and DevEUI.
    fn js_int_key(&self, dev_eui: Option<Eui64>) -> Option<Aes128Key> {
        self.js_int_key.or_else(|| {
            let nwk_key = self.nwk_key?;
            Some(crypto::derive_js_int_key(
                &nwk_key,
                dev_eui.or(self.dev_eui)?,
            ))
        })
    }
}

/// Arguments of `ternctl lorawan decode`.
#[derive(Args)]
pub struct DecodeArgs {
    /// The PHYPayload, as hex or base64.
    payload: String,
    #[command(flatten)]
    keys: FrameKeys,
}

/// Arguments of `ternctl lorawan encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// Message type: UNCONFIRMED_UP, CONFIRMED_UP, UNCONFIRMED_DOWN, CONFIRMED_DOWN or JOIN_REQUEST.
    #[arg(long)]
    m_type: String,
    /// DevAddr of a data frame.
    #[arg(long)]
    dev_addr: Option<DevAddr>,
    /// FPort (required with --frm-payload).
    #[arg(long)]
    f_port: Option<u8>,
    /// Plain FRMPayload as hex; encrypted with the session key of its FPort.
    #[arg(long, default_value = "")]
    frm_payload: String,
    /// Plain FOpts (MAC commands) as hex; encrypted with NwkSEncKey in 1.1.
    #[arg(long, default_value = "")]
    f_opts: String,
    /// FCtrl ADR bit.
    #[arg(long)]
    adr: bool,
    /// FCtrl ADRACKReq bit (uplink).
    #[arg(long)]
    adr_ack_req: bool,
    /// FCtrl ACK bit.
    #[arg(long)]
    ack: bool,
    /// FCtrl FPending bit (downlink).
    #[arg(long)]
    f_pending: bool,
    /// FCtrl ClassB bit (uplink).
    #[arg(long)]
    class_b: bool,
    #[command(flatten)]
    keys: FrameKeys,
}

/// Arguments of `ternctl lorawan derive-keys`.
#[derive(Args)]
pub struct DeriveKeysArgs {
    /// LoRaWAN version: 1.0 or 1.1 (default: 1.1 when --nwk-key is given).
    #[arg(long)]
    version: Option<Version>,
    /// AppKey.
    #[arg(long)]
    app_key: Option<Aes128Key>,
    /// NwkKey (1.1).
    #[arg(long)]
    nwk_key: Option<Aes128Key>,
    /// JoinNonce (AppNonce in 1.0), as a number (decimal or 0x-prefixed hex).
    #[arg(long, value_parser = parse_u32)]
    join_nonce: u32,
    /// DevNonce, as a number (decimal or 0x-prefixed hex).
    #[arg(long, value_parser = parse_u16)]
    dev_nonce: u16,
    /// NetID (1.0 derivation).
    #[arg(long)]
    net_id: Option<NetId>,
    /// JoinEUI (1.1 derivation).
    #[arg(long)]
    join_eui: Option<Eui64>,
    /// DevEUI (1.1: also print JSIntKey and JSEncKey).
    #[arg(long)]
    dev_eui: Option<Eui64>,
}

/// Runs one `ternctl lorawan` subcommand and returns what to print.
pub fn run(cmd: LorawanCommand) -> Result<String> {
    match cmd {
        LorawanCommand::Decode(a) => Ok(decode(&a)?.to_string()),
        LorawanCommand::Encode(a) => Ok(hex::encode(encode(&a)?)),
        LorawanCommand::DeriveKeys(a) => Ok(derive_keys(&a)?.to_string()),
    }
}

fn parse_number(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number (decimal or 0x-prefixed hex): {e}"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let v = parse_number(s)?;
    u32::try_from(v).map_err(|_| format!("{v} does not fit in 32 bits"))
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let v = parse_number(s)?;
    u16::try_from(v).map_err(|_| format!("{v} does not fit in 16 bits"))
}

fn parse_u8(s: &str) -> Result<u8, String> {
    let v = parse_number(s)?;
    u8::try_from(v).map_err(|_| format!("{v} does not fit in 8 bits"))
}

/// Reads a frame given as hex (spaces allowed) or, failing that, base64.
fn parse_frame_bytes(s: &str) -> Result<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(b) = hex::decode(&compact) {
        return Ok(b);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64_nopad = base64::engine::general_purpose::STANDARD_NO_PAD;
    b64.decode(&compact)
        .or_else(|_| b64_nopad.decode(compact.trim_end_matches('=')))
        .map_err(|_| anyhow!("payload is neither hex nor base64: {s:?}"))
}

fn hex_field(name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    hex::decode(bytes).with_context(|| format!("--{name} is not hex"))
}

/// Adds `mac_commands`, or `mac_commands_error` when the bytes are not valid MAC commands.
fn insert_mac_commands(out: &mut Map<String, Value>, dir: Direction, bytes: &[u8]) {
    match MacCommand::decode_all(dir, bytes) {
        Ok(cmds) => out.insert("mac_commands".into(), json!(cmds)),
        Err(e) => out.insert("mac_commands_error".into(), json!(e.to_string())),
    };
}

fn decode(a: &DecodeArgs) -> Result<Value> {
    let raw = parse_frame_bytes(&a.payload)?;
    let phy = PhyPayload::decode(&raw).context("invalid PHYPayload")?;
    let k = &a.keys;
    let mut out = Map::new();
    out.insert("m_type".into(), json!(phy.m_type().as_str()));
    out.insert("major".into(), json!(phy.mhdr.major));
    let mic_input = PhyPayload::mic_input(&raw);

    match &phy.payload {
        Payload::MacPayload(mac) => {
            decode_data(&phy, mac, mic_input, k, &mut out);
        }
        Payload::JoinRequest(jr) => {
            out.insert("join_eui".into(), json!(jr.join_eui));
            out.insert("dev_eui".into(), json!(jr.dev_eui));
            out.insert("dev_nonce".into(), json!(jr.dev_nonce.0));
            insert_mic(
                &mut out,
                &phy,
                k.nwk_key
                    .or(k.app_key)
                    .map(|key| crypto::join_request_mic(&key, mic_input)),
            );
        }
        Payload::JoinAccept(_) => return decode_join_accept(&raw, k, out),
        Payload::RejoinRequest(rj) => {
            out.insert("rejoin_type".into(), json!(rj.rejoin_type()));
            let key = match rj {
                RejoinRequest::Type0Or2 {
                    net_id, rj_count0, ..
                } => {
                    out.insert("net_id".into(), json!(net_id));
                    out.insert("rj_count0".into(), json!(rj_count0));
                    k.s_nwk_s_int_key
                }
                RejoinRequest::Type1 {
                    join_eui,
                    rj_count1,
                    ..
                } => {
                    out.insert("join_eui".into(), json!(join_eui));
                    out.insert("rj_count1".into(), json!(rj_count1));
                    k.js_int_key(Some(rj.dev_eui()))
                }
            };
            out.insert("dev_eui".into(), json!(rj.dev_eui()));
            insert_mic(
                &mut out,
                &phy,
                key.map(|key| crypto::rejoin_request_mic(&key, mic_input)),
            );
        }
        Payload::Proprietary(p) => {
            out.insert("payload".into(), json!(hex::encode(p)));
        }
    }
    Ok(Value::Object(out))
}

fn insert_mic(out: &mut Map<String, Value>, phy: &PhyPayload, computed: Option<[u8; 4]>) {
    if let Some(mic) = phy.mic {
        out.insert("mic".into(), json!(hex::encode(mic)));
        if let Some(c) = computed {
            out.insert("mic_valid".into(), json!(crypto::mic_matches(&c, &mic)));
        }
    }
}

fn decode_data(
    phy: &PhyPayload,
    mac: &MacPayload,
    mic_input: &[u8],
    k: &FrameKeys,
    out: &mut Map<String, Value>,
) {
    let uplink = phy.is_uplink();
    let dir = if uplink {
        Direction::Uplink
    } else {
        Direction::Downlink
    };
    let fhdr = &mac.fhdr;
    let f_cnt = k.full_f_cnt(fhdr.f_cnt);
    out.insert("dev_addr".into(), json!(fhdr.dev_addr));
    out.insert(
        "f_ctrl".into(),
        json!({
            "adr": fhdr.f_ctrl.adr,
            "adr_ack_req": fhdr.f_ctrl.adr_ack_req,
            "ack": fhdr.f_ctrl.ack,
            "f_pending": fhdr.f_ctrl.f_pending,
            "class_b": fhdr.f_ctrl.class_b,
            "f_opts_len": fhdr.f_opts.len(),
        }),
    );
    out.insert("f_cnt".into(), json!(fhdr.f_cnt));

    // FOpts are in clear in 1.0; in 1.1 they are encrypted with NwkSEncKey.
    let mut f_opts = fhdr.f_opts.as_slice().to_vec();
    let mut mac_bytes: Option<Vec<u8>> = None;
    if !f_opts.is_empty() {
        let clear = match k.version() {
            Version::V1_0 => true,
            Version::V1_1 => match k.nwk_s_enc_key {
                Some(key) => {
                    let variant = k.f_opts_variant(dir, mac.f_port);
                    crypto::encrypt_f_opts(&key, dir, fhdr.dev_addr, f_cnt, &mut f_opts, variant)
                        .is_ok()
                }
                None => false,
            },
        };
        out.insert("f_opts".into(), json!(hex::encode(&f_opts)));
        if clear {
            mac_bytes = Some(f_opts);
        }
    }
    if let Some(port) = mac.f_port {
        out.insert("f_port".into(), json!(port));
        let mut payload = mac.frm_payload.clone();
        let decrypted = k.payload_key(port).map(|key| {
            crypto::decrypt_frm_payload(&key, dir, fhdr.dev_addr, f_cnt, &mut payload);
        });
        out.insert("frm_payload".into(), json!(hex::encode(&payload)));
        out.insert("frm_payload_decrypted".into(), json!(decrypted.is_some()));
        if port == 0 && decrypted.is_some() {
            mac_bytes = Some(payload);
        }
    }
    if let Some(bytes) = mac_bytes {
        insert_mac_commands(out, dir, &bytes);
    }
    insert_mic(
        out,
        phy,
        k.data_mic(uplink, fhdr.dev_addr, f_cnt, mic_input),
    );
}

fn decode_join_accept(raw: &[u8], k: &FrameKeys, mut out: Map<String, Value>) -> Result<Value> {
    // 1.1 devices get the join-accept encrypted with NwkKey, 1.0 devices with AppKey.
    let Some(key) = k.nwk_key.or(k.app_key) else {
        out.insert("encrypted".into(), json!(true));
        out.insert("payload".into(), json!(hex::encode(&raw[1..])));
        return Ok(Value::Object(out));
    };
    let plain = crypto::decrypt_join_accept(&key, raw).context("join-accept")?;
    let phy = PhyPayload::decode(&plain).context("invalid join-accept")?;
    let Payload::JoinAccept(ja) = &phy.payload else {
        bail!("decrypted join-accept is not a join-accept");
    };
    out.insert("encrypted".into(), json!(false));
    out.insert("join_nonce".into(), json!(ja.join_nonce.get()));
    out.insert("net_id".into(), json!(ja.home_net_id));
    out.insert("dev_addr".into(), json!(ja.dev_addr));
    out.insert("dl_settings".into(), json!(ja.dl_settings));
    out.insert("rx_delay".into(), json!(ja.rx_delay));
    out.insert("cf_list".into(), json!(ja.cf_list));
    let mic_input = PhyPayload::mic_input(&plain);
    let computed = if ja.dl_settings.opt_neg {
        // 1.1 (OptNeg): MIC with JSIntKey over JoinReqType | JoinEUI | DevNonce | message.
        match (k.js_int_key(None), k.join_eui, k.dev_nonce) {
            (Some(js), Some(join_eui), Some(dn)) => Some(crypto::join_accept_mic_1_1(
                &js,
                crypto::JOIN_REQ_TYPE_JOIN_REQUEST,
                join_eui,
                DevNonce(dn),
                mic_input,
            )),
            _ => None,
        }
    } else {
        Some(crypto::join_accept_mic_1_0(&key, mic_input))
    };
    insert_mic(&mut out, &phy, computed);
    Ok(Value::Object(out))
}

fn encode(a: &EncodeArgs) -> Result<Vec<u8>> {
    let m_type = MType::ALL
        .into_iter()
        .find(|t| t.as_str() == a.m_type.to_ascii_uppercase())
        .ok_or_else(|| anyhow!("unknown --m-type {:?}", a.m_type))?;
    let k = &a.keys;
    match m_type {
        MType::JoinRequest => encode_join_request(a),
        t if t.is_data() => {
            let dev_addr = a
                .dev_addr
                .context("--dev-addr is required for data frames")?;
            let dir = if t.is_uplink() {
                Direction::Uplink
            } else {
                Direction::Downlink
            };
            let wire_f_cnt = k.f_cnt.unwrap_or(0);
            let f_cnt16 = wire_f_cnt as u16;
            let mut f_opts = hex_field("f-opts", a.f_opts.as_bytes())?;
            if !f_opts.is_empty() && k.version() == Version::V1_1 {
                let key = k
                    .nwk_s_enc_key
                    .context("--nwk-s-enc-key is required to encrypt 1.1 FOpts")?;
                let variant = k.f_opts_variant(dir, a.f_port);
                crypto::encrypt_f_opts(&key, dir, dev_addr, wire_f_cnt, &mut f_opts, variant)?;
            }
            let mut frm_payload = hex_field("frm-payload", a.frm_payload.as_bytes())?;
            if let Some(port) = a.f_port
                && !frm_payload.is_empty()
            {
                let key = k
                    .payload_key(port)
                    .with_context(|| match (port, k.version()) {
                        (0, Version::V1_0) => {
                            "--nwk-s-key is required to encrypt an FPort 0 payload"
                        }
                        (0, Version::V1_1) => {
                            "--nwk-s-enc-key is required to encrypt an FPort 0 payload"
                        }
                        _ => "--app-s-key is required to encrypt the FRMPayload",
                    })?;
                crypto::encrypt_frm_payload(&key, dir, dev_addr, wire_f_cnt, &mut frm_payload);
            }
            let mut phy = PhyPayload {
                mhdr: Mhdr::new(t),
                payload: Payload::MacPayload(MacPayload {
                    fhdr: Fhdr {
                        dev_addr,
                        f_ctrl: FCtrl {
                            adr: a.adr,
                            adr_ack_req: a.adr_ack_req,
                            ack: a.ack,
                            f_pending: a.f_pending,
                            class_b: a.class_b,
                        },
                        f_cnt: f_cnt16,
                        f_opts: FOpts::new(&f_opts)?,
                    },
                    f_port: a.f_port,
                    frm_payload,
                }),
                mic: Some([0; 4]),
            };
            let msg = phy.encode_mic_input()?;
            let mic = k
                .data_mic(t.is_uplink(), dev_addr, wire_f_cnt, &msg)
                .with_context(|| match (k.version(), t.is_uplink()) {
                    (Version::V1_0, _) => "--nwk-s-key is required for the MIC",
                    (Version::V1_1, true) => {
                        "--f-nwk-s-int-key and --s-nwk-s-int-key are required for the 1.1 uplink MIC"
                    }
                    (Version::V1_1, false) => "--s-nwk-s-int-key is required for the 1.1 downlink MIC",
                })?;
            phy.mic = Some(mic);
            Ok(phy.encode()?)
        }
        other => bail!(
            "encode builds data frames and join-requests, not {}",
            other.as_str()
        ),
    }
}

fn encode_join_request(a: &EncodeArgs) -> Result<Vec<u8>> {
    let k = &a.keys;
    let mut phy = PhyPayload {
        mhdr: Mhdr::new(MType::JoinRequest),
        payload: Payload::JoinRequest(JoinRequest {
            join_eui: k
                .join_eui
                .context("--join-eui is required for a join-request")?,
            dev_eui: k
                .dev_eui
                .context("--dev-eui is required for a join-request")?,
            dev_nonce: DevNonce(
                k.dev_nonce
                    .context("--dev-nonce is required for a join-request")?,
            ),
        }),
        mic: Some([0; 4]),
    };
    let key = k
        .nwk_key
        .or(k.app_key)
        .context("--app-key (1.0) or --nwk-key (1.1) is required for the join-request MIC")?;
    phy.mic = Some(crypto::join_request_mic(&key, &phy.encode_mic_input()?));
    Ok(phy.encode()?)
}

fn derive_keys(a: &DeriveKeysArgs) -> Result<Value> {
    let join_nonce = JoinNonce::new(a.join_nonce)
        .with_context(|| format!("--join-nonce {} does not fit in 24 bits", a.join_nonce))?;
    let dev_nonce = DevNonce(a.dev_nonce);
    let version = a.version.unwrap_or(if a.nwk_key.is_some() {
        Version::V1_1
    } else {
        Version::V1_0
    });
    match version {
        Version::V1_0 => {
            let app_key = a
                .app_key
                .context("--app-key is required for 1.0 key derivation")?;
            let net_id = a
                .net_id
                .context("--net-id is required for 1.0 key derivation")?;
            let keys = crypto::derive_session_keys_1_0(&app_key, join_nonce, net_id, dev_nonce);
            Ok(json!({ "nwk_s_key": keys.nwk_s_key, "app_s_key": keys.app_s_key }))
        }
        Version::V1_1 => {
            let nwk_key = a
                .nwk_key
                .context("--nwk-key is required for 1.1 key derivation")?;
            let app_key = a
                .app_key
                .context("--app-key is required for 1.1 key derivation")?;
            let join_eui = a
                .join_eui
                .context("--join-eui is required for 1.1 key derivation")?;
            let keys = crypto::derive_session_keys_1_1(
                &nwk_key, &app_key, join_nonce, join_eui, dev_nonce,
            );
            let mut out = json!({
                "app_s_key": keys.app_s_key,
                "f_nwk_s_int_key": keys.f_nwk_s_int_key,
                "s_nwk_s_int_key": keys.s_nwk_s_int_key,
                "nwk_s_enc_key": keys.nwk_s_enc_key,
            });
            if let Some(dev_eui) = a.dev_eui {
                out["js_int_key"] = json!(crypto::derive_js_int_key(&nwk_key, dev_eui));
                out["js_enc_key"] = json!(crypto::derive_js_enc_key(&nwk_key, dev_eui));
            }
            Ok(out)
        }
    }
}
