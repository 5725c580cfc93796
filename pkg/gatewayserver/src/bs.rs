//! The LoRa Basics Station LNS protocol: JSON messages, EUI forms, frame reconstruction and
//! `router_config`. Pure: no I/O.

use band::{DataRate, FrequencyPlan, Region};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Why a Basics Station message was dropped; the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BsError {
    /// Not JSON, or a field has the wrong type.
    #[error("bad JSON: {0}")]
    BadJson(String),
    /// A `msgtype` the LNS does not handle.
    #[error("unknown msgtype {0:?}")]
    UnknownMsgtype(String),
    /// A field has a bad value.
    #[error("{field}: {why}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Why.
        why: String,
    },
}

impl BsError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadJson(_) => "bad_json",
            Self::UnknownMsgtype(_) => "unknown_msgtype",
            Self::BadField { .. } => "bad_field",
        }
    }

    fn field(field: &'static str, why: impl Into<String>) -> Self {
        Self::BadField {
            field,
            why: why.into(),
        }
    }
}

/// Parses an EUI in any form stations use: ID6 (`b827:ebff:fe61:1234`, `::1`), 16 hex digits,
/// hyphen- or colon-separated bytes.
pub fn parse_eui(s: &str) -> Result<[u8; 8], String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not an EUI (hex, EUI-64 with - or :, or ID6)");
    let groups: Vec<&str> = s.split(':').collect();
    if s.contains(':') && (groups.len() <= 4 || s.contains("::")) {
        // ID6: up to four 16-bit groups, `::` standing for the zero groups left out.
        let (head, tail) = match s.split_once("::") {
            Some((h, t)) => (h, Some(t)),
            None => (s, None),
        };
        let parse = |part: &str| -> Result<Vec<u16>, String> {
            if part.is_empty() {
                return Ok(Vec::new());
            }
            part.split(':')
                .map(|g| {
                    if g.is_empty() || g.len() > 4 {
                        return Err(bad());
                    }
                    u16::from_str_radix(g, 16).map_err(|_| bad())
                })
                .collect()
        };
        let h = parse(head)?;
        let t = match tail {
            Some(t) => parse(t)?,
            None => Vec::new(),
        };
        if h.len() + t.len() > 4
            || (tail.is_none() && h.len() != 4)
            || (tail.is_some() && h.len() + t.len() == 4)
        {
            return Err(bad());
        }
        let mut g = h;
        g.resize(4 - t.len(), 0);
        g.extend(t);
        let mut out = [0u8; 8];
        for (i, v) in g.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        return Ok(out);
    }
    let hex_digits: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
    if hex_digits.len() != 16 {
        return Err(bad());
    }
    let v = hex::decode(&hex_digits).map_err(|_| bad())?;
    Ok(v.try_into().expect("16 hex digits"))
}

/// An EUI in ID6 form, as the LNS answers in `/router-info`.
pub fn format_id6(eui: [u8; 8]) -> String {
    let g: Vec<u16> = eui
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    // Compress the longest run (≥ 2) of zero groups, or a lone leading run, as `::`.
    let mut best = (0usize, 0usize);
    let mut i = 0;
    while i < 4 {
        if g[i] == 0 {
            let start = i;
            while i < 4 && g[i] == 0 {
                i += 1;
            }
            if i - start > best.1 - best.0 {
                best = (start, i);
            }
        } else {
            i += 1;
        }
    }
    let hex = |s: &[u16]| {
        s.iter()
            .map(|v| format!("{v:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if best.1 - best.0 >= 2 || (best.1 - best.0 == 1 && (best.0 == 0 || best.1 == 4)) {
        format!("{}::{}", hex(&g[..best.0]), hex(&g[best.1..]))
    } else {
        hex(&g)
    }
}

/// An EUI as hyphen-separated bytes, as stations print them.
pub fn format_eui(eui: [u8; 8]) -> String {
    eui.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// A JoinEUI range `lo-hi` (16 hex digits each).
pub fn parse_eui_range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s
        .split_once(['-', ','])
        .filter(|(a, b)| a.len() == 16 && b.len() == 16)
        .ok_or_else(|| format!("{s:?} is not `lo-hi` with two 16-digit hex EUIs"))?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("{lo:?} is not hex"))?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("{hi:?} is not hex"))?;
    if lo > hi {
        return Err(format!("{s:?}: the range is empty"));
    }
    Ok((lo, hi))
}

/// An EUI field: a string in any form of [`parse_eui`], or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eui(pub [u8; 8]);

impl<'de> Deserialize<'de> for Eui {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Num(u64),
            Str(String),
        }
        match Form::deserialize(d)? {
            Form::Num(n) => Ok(Eui(n.to_be_bytes())),
            Form::Str(s) => parse_eui(&s).map(Eui).map_err(de::Error::custom),
        }
    }
}

/// The discovery request on `/router-info`.
#[derive(Debug, Clone, Deserialize)]
pub struct RouterInfoRequest {
    /// The station's EUI.
    pub router: Eui,
}

/// Radio metadata of an uplink.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct UpInfo {
    /// Radio context (antenna / concentrator), echoed in downlinks.
    #[serde(default)]
    pub rctx: i64,
    /// Extended concentrator time of the end of reception.
    #[serde(default)]
    pub xtime: i64,
    /// GPS time of reception (µs), 0 when unknown.
    #[serde(default)]
    pub gpstime: i64,
    /// Fine timestamp (ns), -1 when none.
    #[serde(default)]
    pub fts: Option<i64>,
    /// UTC time of reception, seconds.
    #[serde(default)]
    pub rxtime: Option<f64>,
    /// RSSI in dBm.
    #[serde(default)]
    pub rssi: f32,
    /// SNR in dB.
    #[serde(default)]
    pub snr: f32,
}

/// A data frame (`updf`).
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct Updf {
    #[serde(rename = "MHdr")]
    pub mhdr: u8,
    #[serde(rename = "DevAddr")]
    pub dev_addr: i64,
    #[serde(rename = "FCtrl")]
    pub fctrl: u8,
    #[serde(rename = "FCnt")]
    pub fcnt: u32,
    #[serde(rename = "FOpts", default)]
    pub fopts: String,
    #[serde(rename = "FPort", default = "no_port")]
    pub fport: i32,
    #[serde(rename = "FRMPayload", default)]
    pub frm_payload: String,
    #[serde(rename = "MIC")]
    pub mic: i64,
    #[serde(rename = "DR")]
    pub dr: u8,
    #[serde(rename = "Freq")]
    pub freq: u64,
    #[serde(default)]
    pub upinfo: UpInfo,
}

fn no_port() -> i32 {
    -1
}

/// A join-request (`jreq`) or rejoin-request (`rejoin`, same fields).
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct Jreq {
    #[serde(rename = "MHdr")]
    pub mhdr: u8,
    #[serde(rename = "JoinEui", alias = "JoinEUI")]
    pub join_eui: Eui,
    #[serde(rename = "DevEui", alias = "DevEUI")]
    pub dev_eui: Eui,
    #[serde(rename = "DevNonce")]
    pub dev_nonce: u32,
    #[serde(rename = "MIC")]
    pub mic: i64,
    #[serde(rename = "DR")]
    pub dr: u8,
    #[serde(rename = "Freq")]
    pub freq: u64,
    #[serde(default)]
    pub upinfo: UpInfo,
}

/// A proprietary frame (`propdf`): the whole PHYPayload in hex.
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct Propdf {
    #[serde(rename = "FRMPayload")]
    pub frm_payload: String,
    #[serde(rename = "DR")]
    pub dr: u8,
    #[serde(rename = "Freq")]
    pub freq: u64,
    #[serde(default)]
    pub upinfo: UpInfo,
}

/// A transmission confirmation (`dntxed`).
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct Dntxed {
    pub diid: i64,
    #[serde(rename = "DevEui", alias = "DevEUI", default)]
    pub dev_eui: Option<Eui>,
    #[serde(default)]
    pub rctx: i64,
    #[serde(default)]
    pub xtime: i64,
    #[serde(default)]
    pub txtime: f64,
    #[serde(default)]
    pub gpstime: i64,
}

/// The station's `version` report.
#[derive(Debug, Clone, Default, Deserialize)]
#[allow(missing_docs)]
pub struct Version {
    #[serde(default)]
    pub station: String,
    #[serde(default)]
    pub firmware: Option<String>,
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub protocol: u32,
    #[serde(default)]
    pub features: Option<String>,
}

/// A `timesync` request.
#[derive(Debug, Clone, Deserialize)]
pub struct Timesync {
    /// The station's local time when it sent the request (echoed).
    pub txtime: f64,
}

/// An upstream (station → LNS) message.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// `version`.
    Version(Version),
    /// `updf`.
    Updf(Updf),
    /// `jreq`.
    Jreq(Jreq),
    /// `rejoin`.
    Rejoin(Jreq),
    /// `propdf`.
    Propdf(Propdf),
    /// `dntxed`.
    Dntxed(Dntxed),
    /// `timesync`.
    Timesync(Timesync),
}

#[derive(Deserialize)]
struct Tag {
    msgtype: String,
}

/// Parses one text message from a station.
pub fn parse_upstream(text: &str) -> Result<Upstream, BsError> {
    let bad = |e: serde_json::Error| BsError::BadJson(e.to_string());
    let tag: Tag = serde_json::from_str(text).map_err(bad)?;
    Ok(match tag.msgtype.as_str() {
        "version" => Upstream::Version(serde_json::from_str(text).map_err(bad)?),
        "updf" => Upstream::Updf(serde_json::from_str(text).map_err(bad)?),
        "jreq" => Upstream::Jreq(serde_json::from_str(text).map_err(bad)?),
        "rejoin" => Upstream::Rejoin(serde_json::from_str(text).map_err(bad)?),
        "propdf" => Upstream::Propdf(serde_json::from_str(text).map_err(bad)?),
        "dntxed" => Upstream::Dntxed(serde_json::from_str(text).map_err(bad)?),
        "timesync" => Upstream::Timesync(serde_json::from_str(text).map_err(bad)?),
        other => return Err(BsError::UnknownMsgtype(other.chars().take(32).collect())),
    })
}

fn hex_field(field: &'static str, s: &str) -> Result<Vec<u8>, BsError> {
    hex::decode(s).map_err(|_| BsError::field(field, format!("{s:?} is not hex")))
}

/// Rebuilds the PHYPayload of an `updf`, byte for byte.
pub fn updf_phy_payload(m: &Updf) -> Result<Vec<u8>, BsError> {
    let dev_addr = u32::try_from(m.dev_addr)
        .or_else(|_| i32::try_from(m.dev_addr).map(|v| v as u32))
        .map_err(|_| BsError::field("DevAddr", "out of 32-bit range"))?;
    let fcnt = u16::try_from(m.fcnt).map_err(|_| BsError::field("FCnt", "out of 16-bit range"))?;
    let fopts = hex_field("FOpts", &m.fopts)?;
    if fopts.len() != usize::from(m.fctrl & 0x0F) {
        return Err(BsError::field(
            "FOpts",
            format!(
                "{} bytes, FCtrl.FOptsLen says {}",
                fopts.len(),
                m.fctrl & 0x0F
            ),
        ));
    }
    let payload = hex_field("FRMPayload", &m.frm_payload)?;
    let mic = mic_bytes(m.mic)?;
    let mut b = Vec::with_capacity(12 + fopts.len() + 1 + payload.len() + 4);
    b.push(m.mhdr);
    b.extend_from_slice(&dev_addr.to_le_bytes());
    b.push(m.fctrl);
    b.extend_from_slice(&fcnt.to_le_bytes());
    b.extend_from_slice(&fopts);
    match m.fport {
        -1 if payload.is_empty() => {}
        -1 => return Err(BsError::field("FPort", "missing while FRMPayload is set")),
        0..=255 => {
            b.push(m.fport as u8);
            b.extend_from_slice(&payload);
        }
        _ => return Err(BsError::field("FPort", "out of range -1..255")),
    }
    b.extend_from_slice(&mic);
    Ok(b)
}

/// Rebuilds the PHYPayload of a `jreq` (or a 23-byte `rejoin`).
pub fn jreq_phy_payload(m: &Jreq) -> Result<Vec<u8>, BsError> {
    let nonce = u16::try_from(m.dev_nonce)
        .map_err(|_| BsError::field("DevNonce", "out of 16-bit range"))?;
    let mut b = Vec::with_capacity(23);
    b.push(m.mhdr);
    b.extend(m.join_eui.0.iter().rev());
    b.extend(m.dev_eui.0.iter().rev());
    b.extend_from_slice(&nonce.to_le_bytes());
    b.extend_from_slice(&mic_bytes(m.mic)?);
    Ok(b)
}

fn mic_bytes(mic: i64) -> Result<[u8; 4], BsError> {
    let v = i32::try_from(mic)
        .map(|v| v as u32)
        .or_else(|_| u32::try_from(mic))
        .map_err(|_| BsError::field("MIC", "out of 32-bit range"))?;
    Ok(v.to_le_bytes())
}

/// The station's name of a region.
pub fn station_region(region: Region) -> &'static str {
    match region {
        Region::Eu868 => "EU863",
        Region::Us915 => "US902",
        Region::Au915 => "AU915",
        Region::As923 => "AS923-1",
        Region::As923Group2 => "AS923-2",
        Region::As923Group3 => "AS923-3",
        Region::As923Group4 => "AS923-4",
        Region::Kr920 => "KR920",
        Region::In865 => "IN865",
        Region::Ru864 => "RU864",
        Region::Eu433 => "EU433",
        Region::Cn779 => "CN779",
        _ => "CN470",
    }
}

/// Filters a station applies before forwarding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// NetIDs whose data frames are forwarded (empty: all).
    pub net_ids: Vec<u32>,
    /// JoinEUI ranges whose join-requests are forwarded (empty: all).
    pub join_eui_ranges: Vec<(u64, u64)>,
}

/// `router_config` for a station on `plan`.
pub fn router_config(plan: &FrequencyPlan, filters: &Filters, now_s: f64) -> Result<Value, String> {
    let params = plan.params();
    let layout = plan.radio_layout().map_err(|e| e.to_string())?;
    let drs: Vec<Value> = (0..16u8)
        .map(|i| match params.data_rate_entry(i) {
            Some(e) => match e.data_rate {
                DataRate::Lora { sf, bw_hz } => json!([sf, bw_hz / 1000, u8::from(!e.uplink)]),
                DataRate::Fsk { .. } => json!([0, 0, 0]),
                DataRate::LrFhss { .. } => json!([-1, 0, 0]),
            },
            None => json!([-1, 0, 0]),
        })
        .collect();
    let mut upchannels: Vec<Value> = plan
        .uplink_channels
        .iter()
        .map(|c| json!([c.frequency, c.min_dr, c.max_dr]))
        .collect();
    for c in plan.lora_standard_channel.iter().chain(&plan.fsk_channel) {
        upchannels.push(json!([c.frequency, c.dr, c.dr]));
    }
    let mut conf = serde_json::Map::new();
    for (i, f) in layout.radio_centers.iter().enumerate() {
        conf.insert(format!("radio_{i}"), json!({"enable": true, "freq": f}));
    }
    for (i, c) in layout.multi_sf.iter().enumerate() {
        conf.insert(
            format!("chan_multiSF_{i}"),
            json!({"enable": true, "radio": c.radio, "if": c.if_offset_hz}),
        );
    }
    for i in layout.multi_sf.len()..8 {
        conf.insert(format!("chan_multiSF_{i}"), json!({"enable": false}));
    }
    match (layout.lora_standard, plan.lora_standard_channel) {
        (Some(c), Some(pc)) => {
            let sf = match params.data_rate(pc.dr) {
                Some(DataRate::Lora { sf, .. }) => sf,
                _ => 7,
            };
            conf.insert(
                "chan_Lora_std".into(),
                json!({"enable": true, "radio": c.radio, "if": c.if_offset_hz,
                       "bandwidth": c.bandwidth_hz, "spread_factor": sf}),
            );
        }
        _ => {
            conf.insert("chan_Lora_std".into(), json!({"enable": false}));
        }
    }
    match layout.fsk {
        Some(c) => conf.insert(
            "chan_FSK".into(),
            json!({"enable": true, "radio": c.radio, "if": c.if_offset_hz}),
        ),
        None => conf.insert("chan_FSK".into(), json!({"enable": false})),
    };
    let mut msg = json!({
        "msgtype": "router_config",
        "region": station_region(plan.region),
        "hwspec": "sx1301/1",
        "freq_range": [params.min_frequency, params.max_frequency],
        "DRs": drs,
        "upchannels": upchannels,
        "sx1301_conf": [Value::Object(conf)],
        "max_eirp": plan.max_eirp_dbm,
        "protocol": 1,
        // The GS enforces duty cycle and dwell time itself.
        "nocca": true,
        "nodc": true,
        "nodwell": true,
        "MuxTime": now_s,
    });
    if !filters.net_ids.is_empty() {
        msg["NetID"] = json!(filters.net_ids);
    }
    if !filters.join_eui_ranges.is_empty() {
        msg["JoinEui"] = json!(
            filters
                .join_eui_ranges
                .iter()
                .map(|(lo, hi)| json!([lo, hi]))
                .collect::<Vec<_>>()
        );
    }
    Ok(msg)
}

/// A downlink (`dnmsg`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct Dnmsg {
    pub msgtype: &'static str,
    #[serde(rename = "DevEui")]
    pub dev_eui: String,
    #[serde(rename = "dC")]
    pub device_class: u8,
    pub diid: i64,
    pub pdu: String,
    #[serde(rename = "RxDelay", skip_serializing_if = "Option::is_none")]
    pub rx_delay: Option<u32>,
    #[serde(rename = "RX1DR", skip_serializing_if = "Option::is_none")]
    pub rx1_dr: Option<u8>,
    #[serde(rename = "RX1Freq", skip_serializing_if = "Option::is_none")]
    pub rx1_freq: Option<u64>,
    #[serde(rename = "RX2DR", skip_serializing_if = "Option::is_none")]
    pub rx2_dr: Option<u8>,
    #[serde(rename = "RX2Freq", skip_serializing_if = "Option::is_none")]
    pub rx2_freq: Option<u64>,
    pub priority: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xtime: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rctx: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpstime: Option<i64>,
    #[serde(rename = "MuxTime")]
    pub mux_time: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui_forms() {
        let want = [0xb8, 0x27, 0xeb, 0xff, 0xfe, 0x61, 0x12, 0x34];
        assert_eq!(parse_eui("b827:ebff:fe61:1234").unwrap(), want);
        assert_eq!(parse_eui("B827EBFFFE611234").unwrap(), want);
        assert_eq!(parse_eui("B8-27-EB-FF-FE-61-12-34").unwrap(), want);
        assert_eq!(parse_eui("::1").unwrap(), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(parse_eui("1::").unwrap(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_eui("1::2").unwrap(), [0, 1, 0, 0, 0, 0, 0, 2]);
        assert!(parse_eui("1:2:3").is_err());
        assert!(parse_eui("12345").is_err());
        assert!(parse_eui("1:2:3:4:5").is_err());
        assert_eq!(format_id6(want), "b827:ebff:fe61:1234");
        assert_eq!(format_id6([0, 0, 0, 0, 0, 0, 0, 1]), "::1");
        assert_eq!(format_id6([0, 1, 0, 0, 0, 0, 0, 2]), "1::2");
        let n: Eui = serde_json::from_str("13269834311090475572").unwrap();
        assert_eq!(n.0, 13_269_834_311_090_475_572u64.to_be_bytes());
    }

    #[test]
    fn rebuild_frames() {
        let m = r#"{"msgtype":"updf","MHdr":64,"DevAddr":-1,"FCtrl":1,"FCnt":258,"FOpts":"02",
            "FPort":1,"FRMPayload":"AABB","MIC":-2,"DR":5,"Freq":868100000,
            "upinfo":{"rctx":0,"xtime":1,"gpstime":0,"rssi":-50,"snr":9}}"#;
        let Upstream::Updf(u) = parse_upstream(m).unwrap() else {
            panic!("updf")
        };
        assert_eq!(
            updf_phy_payload(&u).unwrap(),
            vec![
                0x40, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x02, 0x01, 0x02, 0x01, 0xAA, 0xBB, 0xFE, 0xFF,
                0xFF, 0xFF
            ]
        );
        let j = r#"{"msgtype":"jreq","MHdr":0,"JoinEUI":"01-02-03-04-05-06-07-08",
            "DevEui":"1112:1314:1516:1718","DevNonce":258,"MIC":16909060,"DR":0,"Freq":868100000}"#;
        let Upstream::Jreq(r) = parse_upstream(j).unwrap() else {
            panic!("jreq")
        };
        let b = jreq_phy_payload(&r).unwrap();
        assert_eq!(b.len(), 23);
        assert_eq!(&b[1..9], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[9..17], &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
        assert_eq!(&b[17..], &[2, 1, 4, 3, 2, 1]);
        assert!(matches!(
            parse_upstream(r#"{"msgtype":"nope"}"#),
            Err(BsError::UnknownMsgtype(_))
        ));
        assert!(matches!(parse_upstream("{"), Err(BsError::BadJson(_))));
    }

    #[test]
    fn router_config_eu868() {
        let plan = FrequencyPlan::by_id("EU_863_870").unwrap();
        let c = router_config(plan, &Filters::default(), 0.0).unwrap();
        assert_eq!(c["region"], "EU863");
        assert_eq!(c["DRs"][0], json!([12, 125, 0]));
        assert_eq!(c["DRs"][7], json!([0, 0, 0]));
        assert_eq!(c["DRs"].as_array().unwrap().len(), 16);
        assert_eq!(c["upchannels"][0], json!([868_100_000, 0, 5]));
        let conf = &c["sx1301_conf"][0];
        assert_eq!(conf["chan_multiSF_0"]["enable"], true);
        assert!(conf["radio_0"]["freq"].as_u64().unwrap() > 863_000_000);
    }
}
