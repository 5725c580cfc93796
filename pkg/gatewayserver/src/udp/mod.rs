//! The Semtech UDP packet forwarder frontend.

pub mod packet;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tern_api::{Timestamp, v3};
use tokio::net::UdpSocket;

use crate::state::{GatewayConn, Link, Protocol, Shared, now_us};
use crate::uplink::{UplinkContext, rxpk_to_uplink};
use packet::{DropReason, Stat, TxAckOutcome, Upstream};

/// Largest datagram a forwarder sends (its buffer is 4 KiB; some send a bit more).
const MAX_DATAGRAM: usize = 65_535;

/// Receives datagrams until the GS stops.
pub(crate) async fn serve(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = tokio::select! {
            _ = shared.stop.wait() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP port unreachable from an earlier send shows up here; keep going.
                    tracing::debug!("gs: UDP receive: {e}");
                    continue;
                }
            },
        };
        handle_datagram(&shared, &socket, &buf[..n], from).await;
    }
}

/// Handles one datagram: header, rate limit and acknowledgment here; the rest in a task so
/// a slow registry or NS answer for one gateway does not hold up the others.
async fn handle_datagram(
    shared: &Arc<Shared>,
    socket: &Arc<UdpSocket>,
    b: &[u8],
    from: SocketAddr,
) {
    let d = match packet::parse_datagram(b) {
        Ok(d) => d,
        Err(reason) => return shared.drop_udp(reason, from, None),
    };
    if !shared.rate.allow(d.eui, Instant::now()) {
        return shared.drop_udp(DropReason::RateLimited, from, Some(d.eui));
    }
    let (eui, token) = (d.eui, d.token);
    match d.kind {
        Upstream::PushData(json) => {
            let _ = socket.send_to(&packet::push_ack(token), from).await;
            let json = json.to_vec();
            let shared = shared.clone();
            tokio::spawn(async move { push_data(&shared, eui, &json, from).await });
        }
        Upstream::PullData => {
            let _ = socket.send_to(&packet::pull_ack(token), from).await;
            let shared = shared.clone();
            tokio::spawn(async move { pull_data(&shared, eui, from).await });
        }
        Upstream::TxAck(json) => {
            let outcome = packet::parse_tx_ack(json);
            let shared = shared.clone();
            tokio::spawn(async move { tx_ack(&shared, eui, token, outcome, from).await });
        }
    }
}

/// The connection of `eui`, created on its first datagram.
async fn connection(
    shared: &Shared,
    eui: [u8; 8],
    from: SocketAddr,
) -> Result<Arc<GatewayConn>, DropReason> {
    if let Some(conn) = shared.conn(&eui)
        && conn.protocol == Protocol::Udp
    {
        let mut st = conn.lock();
        st.last_seen = Instant::now();
        st.remote = from;
        drop(st);
        return Ok(conn);
    }
    let resolved = shared.resolve(eui).await?;
    let link = Link::Udp {
        pull_addr: None,
        last_pull: None,
        path_lost: false,
    };
    Ok(shared
        .connect(resolved, eui, Protocol::Udp, link, from)
        .await)
}

async fn push_data(shared: &Shared, eui: [u8; 8], json: &[u8], from: SocketAddr) {
    let push = match packet::parse_push_data(json) {
        Ok(p) => p,
        Err(reason) => return shared.drop_udp(reason, from, Some(eui)),
    };
    let conn = match connection(shared, eui, from).await {
        Ok(c) => c,
        Err(reason) => return shared.drop_udp(reason, from, Some(eui)),
    };
    let received_at_us = now_us();
    for rx in &push.rxpk {
        let ctx = UplinkContext {
            ids: &conn.ids,
            eui,
            plan: conn.plan,
            instance_id: &shared.instance_id,
            received_at_us,
            correlation_id: shared.uplink_correlation_id(),
        };
        match rxpk_to_uplink(rx, &ctx) {
            Ok(up) => {
                {
                    let mut st = conn.lock();
                    st.scheduler.sync_clock(crate::scheduler::ClockSync {
                        tmst: rx.tmst,
                        xtime: 0,
                        server_us: received_at_us,
                    });
                    if rx.tmms.is_some() {
                        st.gps = true;
                    }
                }
                shared.forward_uplink(&conn, up).await;
            }
            Err(reason) => {
                shared.drop_udp(reason, from, Some(eui));
                shared.drop_uplink(&conn, reason);
            }
        }
    }
    if let Some(stat) = &push.stat {
        shared.record_status(&conn, status_from_stat(stat));
    }
}

/// A Semtech `stat` as the API's gateway status.
pub fn status_from_stat(stat: &Stat) -> v3::GatewayStatus {
    let time = stat.time.as_deref().and_then(|t| {
        // "2014-01-12 08:59:28 GMT" (older forwarders) or RFC 3339.
        crate::uplink::parse_time(t).or_else(|| {
            let iso = t.strip_suffix(" GMT")?.replacen(' ', "T", 1) + "Z";
            crate::uplink::parse_time(&iso)
        })
    });
    let location = match (stat.lati, stat.long) {
        (Some(lat), Some(lon))
            if lat.is_finite() && lon.is_finite() && (lat != 0.0 || lon != 0.0) =>
        {
            vec![v3::Location {
                latitude: lat,
                longitude: lon,
                altitude: stat.alti.map_or(0, |a| a as i32),
                accuracy: 0,
                source: v3::LocationSource::SourceGps as i32,
            }]
        }
        _ => Vec::new(),
    };
    let mut versions = std::collections::HashMap::new();
    if let Some(desc) = &stat.desc {
        versions.insert("description".to_owned(), desc.clone());
    }
    v3::GatewayStatus {
        time: time.or(Some(Timestamp::now())),
        antenna_locations: location,
        metrics: stat
            .metrics()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v as f32))
            .collect(),
        versions,
    }
}

async fn pull_data(shared: &Shared, eui: [u8; 8], from: SocketAddr) {
    let conn = match connection(shared, eui, from).await {
        Ok(c) => c,
        Err(reason) => return shared.drop_udp(reason, from, Some(eui)),
    };
    let regained = {
        let mut st = conn.lock();
        match &mut st.link {
            Link::Udp {
                pull_addr,
                last_pull,
                path_lost,
            } => {
                *pull_addr = Some(from);
                *last_pull = Some(Instant::now());
                std::mem::replace(path_lost, false)
            }
            Link::Ws(_) => false,
        }
    };
    if regained {
        shared
            .announce(&conn, v3::gateway_connection_event::State::Connected, from)
            .await;
    }
}

async fn tx_ack(
    shared: &Shared,
    eui: [u8; 8],
    token: [u8; 2],
    outcome: Result<TxAckOutcome, DropReason>,
    from: SocketAddr,
) {
    let outcome = match outcome {
        Ok(o) => o,
        Err(reason) => return shared.drop_udp(reason, from, Some(eui)),
    };
    let Some(conn) = shared.conn(&eui) else {
        return shared.drop_udp(DropReason::UnknownEui, from, Some(eui));
    };
    let pending = {
        let mut st = conn.lock();
        st.last_seen = Instant::now();
        st.pending.remove(&u64::from(u16::from_be_bytes(token)))
    };
    let Some(pending) = pending else {
        // An acknowledgment of nothing we sent (or already expired): nothing to report.
        return shared.drop_udp(DropReason::BadField, from, Some(eui));
    };
    use v3::tx_acknowledgment::Result as R;
    let (result, warning) = match outcome {
        TxAckOutcome::Ok { warning } => (R::Success, warning.unwrap_or_default()),
        TxAckOutcome::Error(e) => (
            match e.as_str() {
                "TOO_LATE" => R::TooLate,
                "TOO_EARLY" => R::TooEarly,
                "COLLISION_PACKET" => R::CollisionPacket,
                "COLLISION_BEACON" => R::CollisionBeacon,
                "TX_FREQ" => R::TxFreq,
                "TX_POWER" => R::TxPower,
                "GPS_UNLOCKED" => R::GpsUnlocked,
                _ => R::UnknownError,
            },
            String::new(),
        ),
    };
    shared.report_tx_ack(&conn, pending, result, warning).await;
    shared.record_rtt_metric(&conn);
}

/// Expires UDP connections and downlink paths; reports each change to the NS at once.
pub(crate) async fn janitor(shared: Arc<Shared>) {
    let tick = (shared.config.udp.pull_expiry / 4).min(std::time::Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shared.stop.wait() => break,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        shared.rate.prune(now);
        let conns: Vec<Arc<GatewayConn>> = shared
            .gateways
            .lock()
            .expect("gateways lock")
            .values()
            .filter(|c| c.protocol == Protocol::Udp)
            .cloned()
            .collect();
        for conn in conns {
            let (expired, lost, remote) = {
                let mut st = conn.lock();
                let expired = now.saturating_duration_since(st.last_seen)
                    > shared.config.udp.connection_expiry;
                let remote = st.remote;
                let lost = match &mut st.link {
                    Link::Udp {
                        last_pull,
                        path_lost,
                        ..
                    } if !*path_lost => {
                        let stale = last_pull.is_none_or(|t| {
                            now.saturating_duration_since(t) > shared.config.udp.pull_expiry
                        });
                        // A gateway that never pulled loses nothing until the expiry passed
                        // since it connected.
                        let waited = now.saturating_duration_since(conn.created)
                            > shared.config.udp.pull_expiry;
                        if stale && waited {
                            *path_lost = true;
                            true
                        } else {
                            false
                        }
                    }
                    _ => false,
                };
                (expired, lost, remote)
            };
            if expired {
                shared.disconnect(&conn).await;
            } else if lost {
                shared
                    .announce(
                        &conn,
                        v3::gateway_connection_event::State::DownlinkPathLost,
                        remote,
                    )
                    .await;
            }
        }
        // Forget unacknowledged downlinks after a minute.
        let conns: Vec<Arc<GatewayConn>> = shared
            .gateways
            .lock()
            .expect("gateways lock")
            .values()
            .cloned()
            .collect();
        for conn in conns {
            conn.lock()
                .pending
                .retain(|_, p| p.sent_at.elapsed() < std::time::Duration::from_secs(60));
        }
    }
}
