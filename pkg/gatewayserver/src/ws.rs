//! The LoRa Basics Station LNS frontend: `/router-info` discovery and `/traffic/{eui}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tern_api::v3;
use tern_cluster::auth::{Entity, grants};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::bs::{self, Filters, Upstream};
use crate::scheduler::{ClockSync, unix_to_gps_us};
use crate::state::{GatewayConn, Link, Protocol, Shared, now_us};
use crate::uplink::{UplinkContext, station_uplink};

/// The right a gateway API key needs to connect.
pub const RIGHT_GATEWAY_LINK: &str = "gateway:link";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the GS stops.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, remote) = tokio::select! {
            _ = shared.stop.wait() => break,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("gs: Basics Station accept: {e}");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => handle(shared, s, remote, true).await,
                        _ => shared.drop_bs("tls_handshake", [0; 8], &remote.to_string()),
                    }
                }
                None => handle(shared, stream, remote, false).await,
            }
        });
    }
}

#[derive(Default)]
struct Upgrade {
    path: String,
    authorization: Option<String>,
    host: Option<String>,
}

// The callback's error type is tungstenite's; its size is not ours to choose.
#[allow(clippy::result_large_err)]
async fn handle<S>(shared: Arc<Shared>, stream: S, remote: SocketAddr, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut up = Upgrade::default();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        if path != "/router-info" && !path.starts_with("/traffic/") {
            let mut e = ErrorResponse::new(Some(format!("no such endpoint: {path}")));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            return Err(e);
        }
        up.path = path.to_owned();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        up.authorization = header("authorization");
        up.host = header("host");
        Ok(resp)
    };
    let ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async(stream, callback),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => return shared.drop_bs("handshake", [0; 8], &remote.to_string()),
    };
    if up.path == "/router-info" {
        router_info(&shared, ws, &up, tls).await;
    } else {
        let eui = up.path.trim_start_matches("/traffic/").to_owned();
        traffic(shared, ws, &eui, up.authorization.as_deref(), remote).await;
    }
}

async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: CloseCode,
    why: &str,
) {
    let _ = ws
        .close(Some(CloseFrame {
            code,
            reason: why.chars().take(120).collect::<String>().into(),
        }))
        .await;
}

async fn router_info<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut ws: WebSocketStream<S>,
    up: &Upgrade,
    tls: bool,
) {
    let text = match tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        _ => {
            shared.drop_bs("router_info", [0; 8], "no discovery request");
            return close(&mut ws, CloseCode::Policy, "expected a discovery request").await;
        }
    };
    let req: bs::RouterInfoRequest = match serde_json::from_str(text.as_str()) {
        Ok(r) => r,
        Err(e) => {
            shared.drop_bs("bad_json", [0; 8], &e.to_string());
            let answer = json!({"error": format!("router-info: {e}")});
            let _ = ws.send(Message::text(answer.to_string())).await;
            return close(&mut ws, CloseCode::Policy, "bad discovery request").await;
        }
    };
    let eui = req.router.0;
    let answer = match shared.resolve(eui).await {
        Ok(_) => {
            let scheme = if tls { "wss" } else { "ws" };
            let host = up
                .host
                .clone()
                .unwrap_or_else(|| shared.config.basic_station.listen.to_string());
            json!({
                "router": bs::format_id6(eui),
                "muxs": "::0",
                "uri": format!("{scheme}://{host}/traffic/eui-{}", hex::encode_upper(eui)),
            })
        }
        Err(reason) => {
            shared.drop_bs(reason.as_str(), eui, "router-info");
            json!({
                "router": bs::format_id6(eui),
                "error": format!("gateway {} is not registered", bs::format_id6(eui)),
            })
        }
    };
    let _ = ws.send(Message::text(answer.to_string())).await;
    close(&mut ws, CloseCode::Normal, "").await;
}

/// Checks the `Authorization` header: a gateway API key with `gateway:link`.
async fn authorize(
    shared: &Shared,
    header: Option<&str>,
    gateway: Option<&v3::Gateway>,
    gateway_id: &str,
) -> Result<(), String> {
    let Some(header) = header else {
        return if gateway.is_some_and(|g| g.require_authenticated_connection) {
            Err("the gateway requires an authenticated connection".into())
        } else {
            Ok(())
        };
    };
    let key = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .unwrap_or(header)
        .trim();
    let info = shared
        .api_keys
        .verify(key)
        .await
        .map_err(|e| format!("API key: {e}"))?;
    let entity = Entity::Gateway(gateway_id.to_owned());
    if info.is_admin || (info.entity == entity && grants(&info.rights, RIGHT_GATEWAY_LINK)) {
        return Ok(());
    }
    let rights = shared
        .api_keys
        .rights_on(&info, &entity)
        .await
        .map_err(|e| format!("API key: {e}"))?;
    if grants(&rights, RIGHT_GATEWAY_LINK) {
        Ok(())
    } else {
        Err(format!(
            "the API key lacks {RIGHT_GATEWAY_LINK} on {entity}"
        ))
    }
}

fn filters(shared: &Shared) -> Filters {
    let c = &shared.config.basic_station;
    Filters {
        net_ids: c
            .net_ids
            .iter()
            .filter_map(|n| u32::from_str_radix(n, 16).ok())
            .collect(),
        join_eui_ranges: c
            .join_eui_ranges
            .iter()
            .filter_map(|r| bs::parse_eui_range(r).ok())
            .collect(),
    }
}

async fn traffic<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut ws: WebSocketStream<S>,
    eui: &str,
    authorization: Option<&str>,
    remote: SocketAddr,
) {
    let eui = match bs::parse_eui(eui.trim_start_matches("eui-")) {
        Ok(e) => e,
        Err(e) => {
            shared.drop_bs("bad_eui", [0; 8], &e);
            return close(&mut ws, CloseCode::Policy, &e).await;
        }
    };
    let resolved = match shared.resolve(eui).await {
        Ok(r) => r,
        Err(reason) => {
            shared.drop_bs(reason.as_str(), eui, "traffic");
            return close(&mut ws, CloseCode::Policy, "gateway not registered").await;
        }
    };
    if let Err(why) = authorize(
        &shared,
        authorization,
        resolved.gateway.as_deref(),
        &resolved.ids.gateway_id,
    )
    .await
    {
        shared.drop_bs("unauthorized", eui, &why);
        return close(&mut ws, CloseCode::Policy, &why).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let conn = shared
        .connect(resolved, eui, Protocol::BasicStation, Link::Ws(tx), remote)
        .await;
    let cfg = &shared.config.basic_station;
    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.tick().await;
    let mut last_activity = Instant::now();
    let mut ping_sent: Option<(u64, Instant)> = None;
    // Wake often enough to notice a silent station within the timeout.
    let mut watchdog = tokio::time::interval(cfg.ping_timeout / 4);
    loop {
        tokio::select! {
            _ = shared.stop.wait() => {
                close(&mut ws, CloseCode::Away, "server shutting down").await;
                break;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    last_activity = Instant::now();
                    // The same per-gateway budget as UDP: a flooding station only loses
                    // its own messages.
                    if !shared.rate.allow(eui, last_activity) {
                        shared.drop_bs("rate_limited", eui, "over the per-gateway rate limit");
                        continue;
                    }
                    for reply in handle_text(&shared, &conn, t.as_str()).await {
                        if ws.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Pong(p))) => {
                    last_activity = Instant::now();
                    if let Some((n, at)) = ping_sent
                        && p.as_ref() == n.to_be_bytes()
                    {
                        conn.lock().scheduler.record_rtt(at.elapsed());
                        shared.record_rtt_metric(&conn);
                        ping_sent = None;
                    }
                }
                Some(Ok(Message::Ping(_))) => last_activity = Instant::now(),
                Some(Ok(Message::Binary(_))) => {
                    last_activity = Instant::now();
                    shared.drop_bs("binary", eui, "binary messages are not part of the protocol");
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(Message::Frame(_))) => {}
            },
            out = rx.recv() => match out {
                Some(text) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = ping.tick() => {
                let n = shared.next_id();
                ping_sent = Some((n, Instant::now()));
                if ws.send(Message::Ping(n.to_be_bytes().to_vec().into())).await.is_err() {
                    break;
                }
            }
            _ = watchdog.tick() => {
                if last_activity.elapsed() > cfg.ping_timeout {
                    shared.drop_bs("ping_timeout", eui, "no answer within the ping timeout");
                    close(&mut ws, CloseCode::Policy, "ping timeout").await;
                    break;
                }
                // Replaced by a newer connection of the same gateway.
                if !shared.conn(&eui).is_some_and(|c| Arc::ptr_eq(&c, &conn)) {
                    close(&mut ws, CloseCode::Policy, "replaced by a newer connection").await;
                    break;
                }
            }
        }
    }
    shared.disconnect(&conn).await;
}

/// Handles one text message; returns the replies.
async fn handle_text(shared: &Shared, conn: &GatewayConn, text: &str) -> Vec<String> {
    let msg = match bs::parse_upstream(text) {
        Ok(m) => m,
        Err(e) => {
            shared.drop_bs(e.label(), conn.eui, &e.to_string());
            return Vec::new();
        }
    };
    let received_at_us = now_us();
    let frame = match msg {
        Upstream::Version(v) => {
            let mut versions = std::collections::HashMap::new();
            versions.insert("station".to_owned(), v.station.clone());
            versions.insert("model".to_owned(), v.model.clone());
            versions.insert("protocol".to_owned(), v.protocol.to_string());
            for (k, val) in [
                ("firmware", &v.firmware),
                ("package", &v.package),
                ("features", &v.features),
            ] {
                if let Some(val) = val {
                    versions.insert(k.to_owned(), val.clone());
                }
            }
            shared.record_status(
                conn,
                v3::GatewayStatus {
                    time: Some(tern_api::Timestamp::now()),
                    versions,
                    ..Default::default()
                },
            );
            return match bs::router_config(conn.plan, &filters(shared), received_at_us as f64 / 1e6)
            {
                Ok(c) => vec![c.to_string()],
                Err(e) => {
                    shared.drop_bs("router_config", conn.eui, &e);
                    Vec::new()
                }
            };
        }
        Upstream::Timesync(t) => {
            conn.lock().gps = true;
            return vec![
                json!({
                    "msgtype": "timesync",
                    "txtime": t.txtime,
                    "gpstime": unix_to_gps_us(received_at_us),
                })
                .to_string(),
            ];
        }
        Upstream::Dntxed(d) => {
            let pending = conn.lock().pending.remove(&(d.diid as u64));
            match pending {
                Some(p) => {
                    shared
                        .report_tx_ack(
                            conn,
                            p,
                            v3::tx_acknowledgment::Result::Success,
                            String::new(),
                        )
                        .await
                }
                None => shared.drop_bs("unknown_diid", conn.eui, &d.diid.to_string()),
            }
            return Vec::new();
        }
        Upstream::Updf(u) => bs::updf_phy_payload(&u).map(|raw| (raw, u.dr, u.freq, u.upinfo)),
        Upstream::Jreq(j) | Upstream::Rejoin(j) => {
            bs::jreq_phy_payload(&j).map(|raw| (raw, j.dr, j.freq, j.upinfo))
        }
        Upstream::Propdf(p) => hex::decode(&p.frm_payload)
            .map_err(|_| bs::BsError::BadField {
                field: "FRMPayload",
                why: "not hex".into(),
            })
            .map(|raw| (raw, p.dr, p.freq, p.upinfo)),
    };
    let (raw, dr, freq, upinfo) = match frame {
        Ok(f) => f,
        Err(e) => {
            shared.drop_bs(e.label(), conn.eui, &e.to_string());
            return Vec::new();
        }
    };
    let ctx = UplinkContext {
        ids: &conn.ids,
        eui: conn.eui,
        plan: conn.plan,
        instance_id: &shared.instance_id,
        received_at_us,
        correlation_id: shared.uplink_correlation_id(),
    };
    match station_uplink(raw, dr, freq, &upinfo, &ctx) {
        Ok(up) => {
            {
                let mut st = conn.lock();
                st.scheduler.sync_clock(ClockSync {
                    tmst: upinfo.xtime as u32,
                    xtime: upinfo.xtime as u64,
                    server_us: received_at_us,
                });
                st.last_rctx = upinfo.rctx as u64;
            }
            shared.forward_uplink(conn, up).await;
        }
        Err(reason) => {
            shared.drop_bs(reason.as_str(), conn.eui, "uplink");
            shared.drop_uplink(conn, reason);
        }
    }
    Vec::new()
}
