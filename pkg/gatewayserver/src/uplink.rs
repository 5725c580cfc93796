//! Turning what a gateway reports into `v3::UplinkMessage`s for the Network Server. Pure.

use band::{DataRate, Direction, FrequencyPlan};
use base64::Engine;
use tern_api::{Timestamp, v3};

use crate::bs::UpInfo;
use crate::scheduler::gps_to_unix_us;
use crate::token::UplinkToken;
use crate::udp::packet::{Datr, DropReason, Rxpk, parse_lora_datr};

/// What every uplink of one gateway shares.
#[derive(Debug, Clone)]
pub struct UplinkContext<'a> {
    /// The gateway.
    pub ids: &'a v3::GatewayIdentifiers,
    /// Its EUI.
    pub eui: [u8; 8],
    /// Its frequency plan (for data rate indices).
    pub plan: &'a FrequencyPlan,
    /// This GS instance.
    pub instance_id: &'a str,
    /// When the GS received the message, µs since the Unix epoch.
    pub received_at_us: i64,
    /// A correlation ID for the frame.
    pub correlation_id: String,
}

/// µs since the Unix epoch → Timestamp.
pub fn timestamp_us(us: i64) -> Timestamp {
    Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A band data rate as the API's.
pub fn api_data_rate(dr: &DataRate, coding_rate: Option<&str>) -> v3::DataRate {
    use v3::data_rate::Modulation;
    let modulation = match *dr {
        DataRate::Lora { sf, bw_hz } => Modulation::Lora(v3::LoRaDataRate {
            bandwidth: bw_hz,
            spreading_factor: u32::from(sf),
            coding_rate: coding_rate.unwrap_or("4/5").to_owned(),
        }),
        DataRate::Fsk { bitrate } => Modulation::Fsk(v3::FskDataRate { bit_rate: bitrate }),
        DataRate::LrFhss {
            coding_rate,
            ocw_hz,
        } => Modulation::Lrfhss(v3::LrFhssDataRate {
            modulation_type: 0,
            operating_channel_width: ocw_hz,
            coding_rate: match coding_rate {
                band::LrFhssCodingRate::Cr1_3 => "1/3".into(),
                band::LrFhssCodingRate::Cr2_3 => "2/3".into(),
            },
        }),
    };
    v3::DataRate {
        modulation: Some(modulation),
    }
}

/// The API's data rate as a band data rate.
pub fn band_data_rate(dr: &v3::DataRate) -> Option<DataRate> {
    use v3::data_rate::Modulation;
    match dr.modulation.as_ref()? {
        Modulation::Lora(l) => Some(DataRate::Lora {
            sf: u8::try_from(l.spreading_factor).ok()?,
            bw_hz: l.bandwidth,
        }),
        Modulation::Fsk(f) => Some(DataRate::Fsk {
            bitrate: f.bit_rate,
        }),
        Modulation::Lrfhss(_) => None,
    }
}

fn build(
    ctx: &UplinkContext<'_>,
    raw: Vec<u8>,
    dr: DataRate,
    coding_rate: Option<&str>,
    frequency: u64,
    md: v3::RxMetadata,
) -> v3::UplinkMessage {
    v3::UplinkMessage {
        raw_payload: raw,
        settings: Some(v3::TxSettings {
            data_rate: Some(api_data_rate(&dr, coding_rate)),
            data_rate_index: ctx
                .plan
                .params()
                .dr_index_for(&dr, Direction::Uplink)
                .map(u32::from),
            frequency,
            timestamp: md.timestamp,
            enable_crc: true,
            ..Default::default()
        }),
        rx_metadata: vec![md],
        received_at: Some(timestamp_us(ctx.received_at_us)),
        correlation_ids: vec![ctx.correlation_id.clone()],
    }
}

/// One Semtech `rxpk` as an uplink; CRC-failed and CRC-less frames are dropped.
pub fn rxpk_to_uplink(rx: &Rxpk, ctx: &UplinkContext<'_>) -> Result<v3::UplinkMessage, DropReason> {
    match rx.stat {
        1 => {}
        0 => return Err(DropReason::NoCrc),
        _ => return Err(DropReason::CrcFailed),
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rx.data.as_bytes())
        .map_err(|_| DropReason::BadBase64)?;
    if raw.len() != usize::from(rx.size) || raw.is_empty() {
        return Err(DropReason::BadField);
    }
    let dr = match (rx.modu.as_str(), &rx.datr) {
        ("LORA", Datr::Lora(s)) => {
            let (sf, bw_hz) = parse_lora_datr(s).ok_or(DropReason::BadField)?;
            DataRate::Lora { sf, bw_hz }
        }
        ("FSK", Datr::Fsk(bitrate)) if *bitrate > 0 => DataRate::Fsk { bitrate: *bitrate },
        _ => return Err(DropReason::BadField),
    };
    if !(rx.freq.is_finite() && rx.freq > 0.0 && rx.freq < 10_000.0) {
        return Err(DropReason::BadField);
    }
    let frequency = (rx.freq * 1e6).round() as u64;
    let gps_us = rx.tmms.map(|ms| (ms as i64).saturating_mul(1000));
    let antenna = u8::try_from(rx.rfch).map_err(|_| DropReason::BadField)?;
    let token = UplinkToken {
        eui: ctx.eui,
        antenna,
        tmst: rx.tmst,
        xtime: 0,
        rctx: 0,
        server_time_us: ctx.received_at_us,
        gps_time_us: gps_us,
        instance_id: ctx.instance_id.to_owned(),
    };
    let md = v3::RxMetadata {
        gateway_ids: Some(ctx.ids.clone()),
        antenna_index: rx.rfch,
        channel_index: rx.chan,
        timestamp: rx.tmst,
        gps_time: gps_us.map(|g| timestamp_us(gps_to_unix_us(g))),
        time: rx.time.as_deref().and_then(parse_time),
        received_at: Some(timestamp_us(ctx.received_at_us)),
        // sx1302 forwarders report the signal RSSI separately from the channel RSSI.
        rssi: rx.rssis.or(rx.rssi).unwrap_or_default(),
        channel_rssi: rx.rssic.or(rx.rssi).unwrap_or_default(),
        snr: rx.lsnr.unwrap_or_default(),
        frequency_offset: rx.foff.unwrap_or_default(),
        fine_timestamp: rx.ftime.unwrap_or_default(),
        location: None,
        uplink_token: token.encode(),
        // A Network Server in a cluster sends the downlink back through this instance.
        gateway_server_id: ctx.instance_id.to_owned(),
    };
    Ok(build(ctx, raw, dr, rx.codr.as_deref(), frequency, md))
}

/// An RFC 3339 time as the forwarder writes it.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

/// A Basics Station frame (already rebuilt) as an uplink.
pub fn station_uplink(
    raw: Vec<u8>,
    dr_index: u8,
    freq: u64,
    up: &UpInfo,
    ctx: &UplinkContext<'_>,
) -> Result<v3::UplinkMessage, DropReason> {
    let dr = ctx
        .plan
        .params()
        .data_rate(dr_index)
        .ok_or(DropReason::BadField)?;
    let xtime = up.xtime as u64;
    let gps_us = (up.gpstime > 0).then_some(up.gpstime);
    let token = UplinkToken {
        eui: ctx.eui,
        antenna: (up.rctx & 0xFF) as u8,
        tmst: xtime as u32,
        xtime,
        rctx: up.rctx as u64,
        server_time_us: ctx.received_at_us,
        gps_time_us: gps_us,
        instance_id: ctx.instance_id.to_owned(),
    };
    let md = v3::RxMetadata {
        gateway_ids: Some(ctx.ids.clone()),
        antenna_index: (up.rctx & 0xFF) as u32,
        channel_index: 0,
        timestamp: xtime as u32,
        gps_time: gps_us.map(|g| timestamp_us(gps_to_unix_us(g))),
        time: up
            .rxtime
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(|t| timestamp_us((t * 1e6) as i64)),
        received_at: Some(timestamp_us(ctx.received_at_us)),
        rssi: up.rssi,
        channel_rssi: up.rssi,
        snr: up.snr,
        frequency_offset: 0,
        fine_timestamp: up.fts.filter(|f| *f >= 0).map_or(0, |f| f as u64),
        location: None,
        uplink_token: token.encode(),
        // A Network Server in a cluster sends the downlink back through this instance.
        gateway_server_id: ctx.instance_id.to_owned(),
    };
    Ok(build(ctx, raw, dr, None, freq, md))
}
