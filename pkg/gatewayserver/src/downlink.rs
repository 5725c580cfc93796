//! `ScheduleDownlink`: picks a path and window, and hands the frame to the gateway.

use std::time::{Duration, Instant};

use band::{DataRate, FrequencyPlan};
use base64::Engine;
use tern_api::{Timestamp, v3};
use tern_events::{Event, definitions};
use tonic::Status;

use crate::bs;
use crate::scheduler::{Reject, Rejection, Request, Scheduled, Timing, UplinkTiming, WindowParams};
use crate::state::{Link, PendingTx, Protocol, Shared, now_us};
use crate::token::UplinkToken;
use crate::udp::packet::{self, Datr, Txpk};
use crate::uplink::{api_data_rate, band_data_rate};

use v3::ScheduleError as E;

struct PathFailure {
    rx1: E,
    rx2: E,
    gateway_ids: Option<v3::GatewayIdentifiers>,
    message: String,
}

impl PathFailure {
    fn one(code: E, message: impl Into<String>) -> Self {
        Self {
            rx1: code,
            rx2: E::NotAttempted,
            gateway_ids: None,
            message: message.into(),
        }
    }
}

fn window(
    field: &'static str,
    dr: &Option<v3::DataRate>,
    freq: u64,
) -> Result<Option<WindowParams>, Status> {
    let Some(dr) = dr else { return Ok(None) };
    let data_rate = band_data_rate(dr).ok_or_else(|| {
        Status::invalid_argument(format!("request.{field}: not a LoRa or FSK data rate"))
    })?;
    if freq == 0 {
        return Err(Status::invalid_argument(format!(
            "request.{field}: set, but its frequency is 0"
        )));
    }
    Ok(Some(WindowParams {
        frequency: freq,
        data_rate,
    }))
}

/// Validates and schedules a downlink.
pub(crate) async fn schedule(
    shared: &Shared,
    msg: v3::DownlinkMessage,
) -> Result<v3::ScheduleDownlinkResponse, Status> {
    if msg.raw_payload.is_empty() || msg.raw_payload.len() > 255 {
        return Err(Status::invalid_argument(format!(
            "raw_payload: {} bytes, must be 1..=255",
            msg.raw_payload.len()
        )));
    }
    let req = msg
        .request
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("request: missing"))?;
    if req.downlink_paths.is_empty() {
        return Err(Status::invalid_argument("request.downlink_paths: empty"));
    }
    if req.rx1_delay > 15 {
        return Err(Status::invalid_argument(format!(
            "request.rx1_delay: {} s, must be 0..=15",
            req.rx1_delay
        )));
    }
    let rx1 = window("rx1_data_rate", &req.rx1_data_rate, req.rx1_frequency)?;
    let rx2 = window("rx2_data_rate", &req.rx2_data_rate, req.rx2_frequency)?;
    if rx1.is_none() && rx2.is_none() {
        return Err(Status::invalid_argument(
            "request: neither rx1_data_rate nor rx2_data_rate is set",
        ));
    }
    let plan_override = match req.frequency_plan_id.as_str() {
        "" => None,
        id => Some(
            FrequencyPlan::lookup(id)
                .map_err(|e| Status::invalid_argument(format!("request.frequency_plan_id: {e}")))?,
        ),
    };
    let now = now_us();
    let mut errors = Vec::new();
    for (i, path) in req.downlink_paths.iter().enumerate() {
        match try_path(shared, &msg, req, path, rx1, rx2, plan_override, now).await {
            Ok(mut scheduled) => {
                scheduled.path_index = i as u32;
                shared.events.publish_with(&definitions::GS_DOWN_SEND, |e| {
                    e.with_identifiers(scheduled.gateway_ids.iter())
                        .with_correlation_ids(msg.correlation_ids.iter().cloned())
                        .with_data(&msg)
                });
                return Ok(v3::ScheduleDownlinkResponse {
                    result: Some(v3::schedule_downlink_response::Result::Scheduled(scheduled)),
                });
            }
            Err(f) => errors.push(v3::PathError {
                path_index: i as u32,
                gateway_ids: f.gateway_ids,
                rx1: f.rx1 as i32,
                rx2: f.rx2 as i32,
                details: Some(v3::ErrorDetails {
                    code: 9,
                    name: f
                        .rx1
                        .as_str_name()
                        .trim_start_matches("SCHEDULE_ERROR_")
                        .to_lowercase(),
                    message: f.message,
                    correlation_ids: msg.correlation_ids.clone(),
                    ..Default::default()
                }),
            }),
        }
    }
    let reason = errors
        .first()
        .and_then(|e| e.details.as_ref())
        .map_or_else(String::new, |d| d.name.clone());
    shared
        .metrics
        .downlink_failed
        .get_or_create(&vec![("reason", reason)])
        .inc();
    let failure = v3::ScheduleDownlinkFailure {
        path_errors: errors,
    };
    shared.events.publish(
        Event::new(&definitions::GS_DOWN_SCHEDULE_FAIL)
            .with_identifiers(msg.end_device_ids.iter())
            .with_correlation_ids(msg.correlation_ids.iter().cloned())
            .with_data(&failure),
    );
    Ok(v3::ScheduleDownlinkResponse {
        result: Some(v3::schedule_downlink_response::Result::Failed(failure)),
    })
}

#[allow(clippy::too_many_arguments)]
async fn try_path(
    shared: &Shared,
    msg: &v3::DownlinkMessage,
    req: &v3::TxRequest,
    path: &v3::DownlinkPath,
    rx1: Option<WindowParams>,
    rx2: Option<WindowParams>,
    plan_override: Option<&'static FrequencyPlan>,
    now: i64,
) -> Result<v3::ScheduledDownlink, PathFailure> {
    use v3::downlink_path::Path;
    let (conn, antenna, token) = match &path.path {
        Some(Path::UplinkToken(b)) => {
            let t = UplinkToken::decode(b)
                .map_err(|e| PathFailure::one(E::InvalidUplinkToken, e.to_string()))?;
            if t.instance_id != shared.instance_id {
                return Err(PathFailure::one(
                    E::InvalidUplinkToken,
                    format!(
                        "the uplink token is from GS instance {:?}, this is {:?}",
                        t.instance_id, shared.instance_id
                    ),
                ));
            }
            let conn = shared.conn(&t.eui).ok_or_else(|| {
                PathFailure::one(
                    E::GatewayNotConnected,
                    format!("gateway {} is not connected", hex::encode_upper(t.eui)),
                )
            })?;
            (conn, t.antenna, Some(t))
        }
        Some(Path::Fixed(a)) => {
            let ids = a.gateway_ids.clone().unwrap_or_default();
            let conn = if !ids.gateway_id.is_empty() {
                shared.conn_by_id(&ids.gateway_id)
            } else {
                <[u8; 8]>::try_from(ids.eui.as_slice())
                    .ok()
                    .and_then(|e| shared.conn(&e))
            };
            let conn = conn.ok_or_else(|| {
                PathFailure::one(
                    E::GatewayNotConnected,
                    format!("gateway {:?} is not connected", ids.gateway_id),
                )
            })?;
            (conn, a.antenna_index as u8, None)
        }
        None => return Err(PathFailure::one(E::InvalidUplinkToken, "the path is empty")),
    };
    let fail = |code: E, message: String| PathFailure {
        rx1: code,
        rx2: E::NotAttempted,
        gateway_ids: Some(conn.ids.clone()),
        message,
    };
    let class = req.class();
    let timing = match class {
        v3::DeviceClass::ClassA => {
            let t = token.as_ref().ok_or_else(|| {
                fail(
                    E::InvalidUplinkToken,
                    "class A needs an uplink token path".into(),
                )
            })?;
            Timing::ClassA {
                uplink: UplinkTiming {
                    tmst: t.tmst,
                    server_time_us: t.server_time_us,
                },
                rx1_delay: Duration::from_secs(u64::from(req.rx1_delay.max(1))),
            }
        }
        _ => match req.absolute_time {
            Some(t) => Timing::Absolute {
                time_us: t.seconds * 1_000_000 + i64::from(t.nanos) / 1000,
            },
            None if class == v3::DeviceClass::ClassB => {
                return Err(fail(E::NoTimeSync, "class B needs an absolute time".into()));
            }
            None => Timing::Immediate,
        },
    };
    let plan = plan_override.unwrap_or(conn.plan);
    let antenna_gain_db = conn
        .gateway
        .as_ref()
        // RF chains outnumber registered antennas on most gateways: fall back to the first.
        .and_then(|g| g.antennas.get(usize::from(antenna)).or(g.antennas.first()))
        .map_or(0.0, |a| a.gain);
    let enforce_duty_cycle = conn.gateway.as_ref().is_none_or(|g| g.enforce_duty_cycle);

    let (wire, scheduled, dest) = {
        let mut st = conn.lock();
        let dest = match &st.link {
            Link::Udp {
                pull_addr,
                last_pull,
                ..
            } => {
                let fresh = last_pull.is_some_and(|t| t.elapsed() <= shared.config.udp.pull_expiry);
                match pull_addr {
                    Some(a) if fresh => Some(*a),
                    _ => {
                        return Err(fail(
                            E::NoDownlinkPath,
                            format!(
                                "no PULL_DATA from the gateway within {}",
                                secs(shared.config.udp.pull_expiry)
                            ),
                        ));
                    }
                }
            }
            Link::Ws(_) => None,
        };
        let request = Request {
            now_us: now,
            timing,
            rx1: if class == v3::DeviceClass::ClassA {
                rx1
            } else {
                None
            },
            rx2,
            payload_len: msg.raw_payload.len(),
            plan,
            antenna_gain_db,
            enforce_duty_cycle,
            gps_available: st.gps,
        };
        let scheduled = st
            .scheduler
            .schedule(&request)
            .map_err(|r| rejection(&conn.ids, r))?;
        let id = shared.next_id();
        let wire = match conn.protocol {
            Protocol::Udp => {
                let token = (id as u16).to_be_bytes();
                st.pending
                    .insert(u64::from(u16::from_be_bytes(token)), pending(msg));
                packet::pull_resp(token, &txpk(&scheduled, &msg.raw_payload))
            }
            Protocol::BasicStation => {
                st.pending.insert(id, pending(msg));
                let clock = st.scheduler.clock();
                let dn = dnmsg(
                    msg,
                    req,
                    plan,
                    &scheduled,
                    token.as_ref(),
                    clock,
                    st.last_rctx,
                    id as i64,
                    now,
                );
                serde_json::to_vec(&dn).expect("dnmsg serializes")
            }
        };
        if let Link::Ws(tx) = &st.link
            && tx
                .send(String::from_utf8(wire.clone()).expect("JSON is UTF-8"))
                .is_err()
        {
            return Err(fail(E::GatewayNotConnected, "the connection closed".into()));
        }
        st.stats.downlink_count += 1;
        st.stats.last_downlink = Some(Timestamp::now());
        (wire, scheduled, dest)
    };
    if let Some(dest) = dest {
        let socket = shared.udp_socket.lock().expect("socket lock").clone();
        match socket {
            Some(s) => {
                if let Err(e) = s.send_to(&wire, dest).await {
                    return Err(fail(
                        E::GatewayNotConnected,
                        format!("UDP send to {dest}: {e}"),
                    ));
                }
            }
            None => {
                return Err(fail(
                    E::GatewayNotConnected,
                    "the UDP listener is closed".into(),
                ));
            }
        }
    }
    shared
        .metrics
        .downlink_scheduled
        .get_or_create(&vec![
            ("protocol", conn.protocol.as_str().to_owned()),
            ("window", scheduled.rx_window.to_string()),
        ])
        .inc();
    let delay = Duration::from_micros((scheduled.start_us - now).max(0) as u64);
    Ok(v3::ScheduledDownlink {
        delay: Some(pbjson_types::Duration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
        path_index: 0,
        gateway_ids: Some(conn.ids.clone()),
        rx_window: scheduled.rx_window,
        settings: Some(tx_settings(&scheduled)),
    })
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn pending(msg: &v3::DownlinkMessage) -> PendingTx {
    PendingTx {
        downlink_id: msg.downlink_id.clone(),
        correlation_ids: msg.correlation_ids.clone(),
        sent_at: Instant::now(),
    }
}

fn rejection(ids: &v3::GatewayIdentifiers, r: Rejection) -> PathFailure {
    let message = match (&r.rx1, &r.rx2) {
        (a, Reject::NotRequested) => a.message(),
        (Reject::NotRequested, b) => format!("RX2: {}", b.message()),
        (a, b) => format!("RX1: {}; RX2: {}", a.message(), b.message()),
    };
    PathFailure {
        rx1: r.rx1.code(),
        rx2: r.rx2.code(),
        gateway_ids: Some(ids.clone()),
        message,
    }
}

/// The settings the gateway was given.
pub(crate) fn tx_settings(s: &Scheduled) -> v3::TxSettings {
    v3::TxSettings {
        data_rate: Some(api_data_rate(&s.data_rate, None)),
        data_rate_index: Some(u32::from(s.dr_index)),
        frequency: s.frequency,
        timestamp: s.tmst.unwrap_or(0),
        tx_power: s.eirp_dbm,
        invert_polarization: s.data_rate.is_lora(),
        time: s
            .gps_time_us
            .map(|g| crate::uplink::timestamp_us(crate::scheduler::gps_to_unix_us(g))),
        enable_crc: false,
    }
}

/// The Semtech `txpk` of a scheduled downlink.
pub fn txpk(s: &Scheduled, payload: &[u8]) -> Txpk {
    let (modu, datr, codr, fdev) = match s.data_rate {
        DataRate::Lora { sf, bw_hz } => (
            "LORA",
            Datr::Lora(packet::lora_datr(sf, bw_hz)),
            Some("4/5".to_owned()),
            None,
        ),
        DataRate::Fsk { bitrate } => ("FSK", Datr::Fsk(bitrate), None, Some(bitrate / 2)),
        DataRate::LrFhss { .. } => ("LORA", Datr::Lora(String::new()), None, None),
    };
    Txpk {
        imme: s.tmst.is_none() && s.gps_time_us.is_none(),
        tmst: s.tmst,
        tmms: s.gps_time_us.map(|g| (g / 1000) as u64),
        freq: s.frequency as f64 / 1e6,
        // Gateways transmit on RF chain 0.
        rfch: 0,
        powe: s.tx_power_dbm.floor() as i32,
        modu: modu.to_owned(),
        datr,
        codr,
        fdev,
        ipol: s.data_rate.is_lora(),
        prea: None,
        size: payload.len() as u16,
        data: base64::engine::general_purpose::STANDARD.encode(payload),
        ncrc: true,
    }
}

#[allow(clippy::too_many_arguments)]
fn dnmsg(
    msg: &v3::DownlinkMessage,
    req: &v3::TxRequest,
    plan: &FrequencyPlan,
    s: &Scheduled,
    token: Option<&UplinkToken>,
    clock: Option<crate::scheduler::ClockSync>,
    last_rctx: u64,
    diid: i64,
    now: i64,
) -> bs::Dnmsg {
    let dev_eui = msg
        .end_device_ids
        .as_ref()
        .and_then(|d| <[u8; 8]>::try_from(d.dev_eui.as_slice()).ok())
        .unwrap_or_default();
    let rx2_dr = req
        .rx2_data_rate
        .as_ref()
        .and_then(band_data_rate)
        .and_then(|d| plan.params().dr_index_for(&d, band::Direction::Downlink));
    let mut dn = bs::Dnmsg {
        msgtype: "dnmsg",
        dev_eui: bs::format_eui(dev_eui),
        device_class: 0,
        diid,
        pdu: hex::encode_upper(&msg.raw_payload),
        rx_delay: None,
        rx1_dr: None,
        rx1_freq: None,
        rx2_dr: None,
        rx2_freq: None,
        priority: req.priority as u32,
        xtime: None,
        rctx: None,
        gpstime: None,
        mux_time: now as f64 / 1e6,
    };
    match (s.rx_window, token) {
        (1 | 2, Some(t)) => {
            dn.rx_delay = Some(req.rx1_delay.max(1));
            dn.xtime = Some(t.xtime as i64);
            dn.rctx = Some(t.rctx as i64);
            if s.rx_window == 1 {
                dn.rx1_dr = Some(s.dr_index);
                dn.rx1_freq = Some(s.frequency);
                dn.rx2_dr = rx2_dr;
                dn.rx2_freq = rx2_dr.map(|_| req.rx2_frequency);
            } else {
                dn.rx2_dr = Some(s.dr_index);
                dn.rx2_freq = Some(s.frequency);
            }
        }
        _ => {
            dn.rx2_dr = Some(s.dr_index);
            dn.rx2_freq = Some(s.frequency);
            dn.rctx = Some(token.map_or(last_rctx, |t| t.rctx) as i64);
            match s.gps_time_us {
                Some(g) => {
                    dn.device_class = 1;
                    dn.gpstime = Some(g);
                }
                None => {
                    dn.device_class = 2;
                    dn.xtime = clock.map(|c| c.xtime_at(s.start_us) as i64);
                }
            }
        }
    }
    dn
}
