//! The MQTT server the AS hosts for applications (MQTT 3.1.1, QoS 0 and 1, no retain).
//!
//! Username = application ID, password = an API key: `application:traffic:read` lets the
//! client subscribe, `application:traffic:down:write` lets it publish downlinks. A client
//! only ever receives its own application's messages, whatever filter it subscribes to.
//! Every client has a bounded queue; one that does not keep up is disconnected, so a slow
//! subscriber never slows the others or the pipeline.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::BytesMut;
use mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use mqttbytes::{Protocol, QoS};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tern_api::v3;
use tern_cluster::auth::{ApiKeyError, ApiKeyVerifier, Entity, grants};
use tern_cluster::role::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::MqttConfig;
use crate::core::{AsCore, QueueOp};
use crate::fanout::{AppMessage, Sink};
use crate::render::parse_downlinks;

/// The right to receive an application's traffic.
pub const RIGHT_TRAFFIC_READ: &str = "application:traffic:read";
/// The right to queue an application's downlinks.
pub const RIGHT_TRAFFIC_DOWN_WRITE: &str = "application:traffic:down:write";

/// The metrics of the MQTT server.
#[derive(Debug, Clone, Default)]
pub struct MqttMetrics {
    /// Connected clients.
    pub clients: Gauge,
    /// Messages sent to clients.
    pub published: Counter,
    /// Refused connections, subscriptions and publications, by reason.
    pub rejected: Family<Vec<(&'static str, String)>, Counter>,
}

impl MqttMetrics {
    fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Registers the metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mqtt_clients",
            "Connected MQTT clients",
            self.clients.clone(),
        );
        registry.register(
            "mqtt_published",
            "Messages sent to MQTT clients",
            self.published.clone(),
        );
        registry.register(
            "mqtt_rejected",
            "Refused MQTT connections, subscriptions and publications, by reason",
            self.rejected.clone(),
        );
    }
}

struct Client {
    application_id: String,
    can_read: bool,
    filters: Arc<RwLock<Vec<(String, QoS)>>>,
    tx: mpsc::Sender<(Arc<AppMessage>, QoS)>,
    kick: watch::Sender<bool>,
}

/// The MQTT server.
pub struct MqttServer {
    core: Arc<AsCore>,
    verifier: Arc<dyn ApiKeyVerifier>,
    config: MqttConfig,
    clients: RwLock<HashMap<u64, Client>>,
    next_id: AtomicU64,
    metrics: MqttMetrics,
}

impl std::fmt::Debug for MqttServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttServer").finish_non_exhaustive()
    }
}

enum Auth {
    Ok { can_read: bool, can_write: bool },
    Refused(ConnectReturnCode, &'static str),
}

impl MqttServer {
    /// A server delivering `core`'s messages and checking keys with `verifier`.
    pub fn new(core: Arc<AsCore>, verifier: Arc<dyn ApiKeyVerifier>, config: MqttConfig) -> Self {
        Self {
            core,
            verifier,
            config,
            clients: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics: MqttMetrics::default(),
        }
    }

    /// How many subscription filters the connected clients hold.
    pub fn subscriptions(&self) -> usize {
        self.clients
            .read()
            .expect("clients lock")
            .values()
            .map(|c| c.filters.read().expect("filters lock").len())
            .sum()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &MqttMetrics {
        &self.metrics
    }

    /// Accepts plain TCP clients until shutdown.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let this = self.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move { this.connection(stream, peer, shutdown).await });
                    }
                    Err(e) => {
                        warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                () = shutdown.wait() => return,
            }
        }
    }

    /// Accepts TLS clients until shutdown.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        shutdown: Shutdown,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let this = self.clone();
                        let shutdown = shutdown.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let handshake = tokio::time::timeout(this.config.connect_timeout, acceptor.accept(stream)).await;
                            match handshake {
                                Ok(Ok(tls)) => this.connection(tls, peer, shutdown).await,
                                Ok(Err(e)) => {
                                    this.metrics.reject("tls_handshake");
                                    debug!(%peer, error = %e, "MQTT TLS handshake failed");
                                }
                                Err(_) => this.metrics.reject("tls_handshake"),
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                () = shutdown.wait() => return,
            }
        }
    }

    async fn authenticate(&self, application_id: &str, api_key: &str) -> Auth {
        let info = match self.verifier.verify(api_key).await {
            Ok(info) => info,
            Err(ApiKeyError::Unknown) => {
                return Auth::Refused(ConnectReturnCode::BadUserNamePassword, "unknown_api_key");
            }
            Err(ApiKeyError::Expired) => {
                return Auth::Refused(ConnectReturnCode::BadUserNamePassword, "expired_api_key");
            }
            Err(ApiKeyError::Unavailable(_)) => {
                return Auth::Refused(
                    ConnectReturnCode::ServiceUnavailable,
                    "verifier_unavailable",
                );
            }
        };
        let entity = Entity::Application(application_id.to_owned());
        let rights: BTreeSet<String> = if info.is_admin {
            ["all".to_owned()].into()
        } else if info.entity == entity {
            info.rights.clone()
        } else {
            match self.verifier.rights_on(&info, &entity).await {
                Ok(r) => r,
                Err(_) => {
                    return Auth::Refused(
                        ConnectReturnCode::ServiceUnavailable,
                        "verifier_unavailable",
                    );
                }
            }
        };
        let can_read = grants(&rights, RIGHT_TRAFFIC_READ);
        let can_write = grants(&rights, RIGHT_TRAFFIC_DOWN_WRITE);
        if !can_read && !can_write {
            return Auth::Refused(ConnectReturnCode::NotAuthorized, "no_traffic_rights");
        }
        Auth::Ok {
            can_read,
            can_write,
        }
    }

    async fn connection<S>(self: Arc<Self>, stream: S, peer: SocketAddr, shutdown: Shutdown)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(4096);
        let max = self.config.max_packet_size;
        let first = tokio::time::timeout(
            self.config.connect_timeout,
            read_packet(&mut rd, &mut buf, max),
        )
        .await;
        let connect = match first {
            Ok(Ok(Packet::Connect(c))) => c,
            Ok(Err(ReadError::Codec(mqttbytes::Error::InvalidProtocolLevel(_))))
            | Ok(Err(ReadError::Codec(mqttbytes::Error::InvalidProtocol))) => {
                self.metrics.reject("protocol_version");
                let _ = write_packet(&mut wr, |b| {
                    ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false).write(b)
                })
                .await;
                return;
            }
            _ => {
                self.metrics.reject("no_connect");
                return;
            }
        };
        if connect.protocol != Protocol::V4 {
            self.metrics.reject("protocol_version");
            let _ = write_packet(&mut wr, |b| {
                ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false).write(b)
            })
            .await;
            return;
        }
        let Some(login) = connect.login else {
            self.metrics.reject("no_credentials");
            let _ = write_packet(&mut wr, |b| {
                ConnAck::new(ConnectReturnCode::NotAuthorized, false).write(b)
            })
            .await;
            return;
        };
        let application_id = login.username.clone();
        let (can_read, can_write) = match self.authenticate(&application_id, &login.password).await
        {
            Auth::Ok {
                can_read,
                can_write,
            } => (can_read, can_write),
            Auth::Refused(code, reason) => {
                self.metrics.reject(reason);
                info!(%peer, application = %application_id, reason, "MQTT connection refused");
                let _ = write_packet(&mut wr, |b| ConnAck::new(code, false).write(b)).await;
                return;
            }
        };
        if write_packet(&mut wr, |b| {
            ConnAck::new(ConnectReturnCode::Success, false).write(b)
        })
        .await
        .is_err()
        {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(self.config.max_queued_messages_per_client.max(1));
        let (kick, mut kicked) = watch::channel(false);
        let filters = Arc::new(RwLock::new(Vec::new()));
        self.clients.write().expect("clients lock").insert(
            id,
            Client {
                application_id: application_id.clone(),
                can_read,
                filters: filters.clone(),
                tx,
                kick,
            },
        );
        self.metrics.clients.inc();
        debug!(%peer, application = %application_id, client_id = %connect.client_id, "MQTT client connected");

        // Control packets go through the writer too, so that one task owns the socket's
        // write half; it is aborted when the client is kicked, even mid-write.
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Packet>();
        let metrics = self.metrics.clone();
        let mut writer = tokio::spawn(async move {
            let mut pkid: u16 = 0;
            loop {
                let packet = tokio::select! {
                    biased;
                    ctl = ctl_rx.recv() => match ctl { Some(p) => p, None => return },
                    msg = rx.recv() => match msg {
                        Some((message, qos)) => {
                            let mut publish = Publish::from_bytes(message.topic(), qos, message.json.clone());
                            if qos == QoS::AtLeastOnce {
                                pkid = pkid.checked_add(1).unwrap_or(1);
                                publish.pkid = pkid;
                            }
                            metrics.published.inc();
                            Packet::Publish(publish)
                        }
                        None => return,
                    },
                };
                if write_any(&mut wr, &packet).await.is_err() {
                    return;
                }
            }
        });

        let keep_alive = match connect.keep_alive {
            0 => None,
            // The spec allows one and a half keep-alive periods of silence.
            k => Some(std::time::Duration::from_millis(u64::from(k) * 1500)),
        };
        let mut writer_done = false;
        loop {
            let read = async {
                match keep_alive {
                    Some(limit) => tokio::time::timeout(limit, read_packet(&mut rd, &mut buf, max))
                        .await
                        .unwrap_or(Err(ReadError::KeepAlive)),
                    None => read_packet(&mut rd, &mut buf, max).await,
                }
            };
            let packet = tokio::select! {
                p = read => p,
                _ = kicked.changed() => {
                    info!(%peer, application = %application_id, "MQTT client disconnected: its queue is full (too slow)");
                    break;
                }
                _ = &mut writer => {
                    writer_done = true;
                    break;
                }
                () = shutdown.wait() => break,
            };
            let packet = match packet {
                Ok(p) => p,
                Err(e) => {
                    debug!(%peer, error = ?e, "MQTT connection closed");
                    break;
                }
            };
            match packet {
                Packet::PingReq => {
                    let _ = ctl_tx.send(Packet::PingResp);
                }
                Packet::Disconnect => break,
                Packet::Subscribe(sub) => {
                    let mut codes = Vec::with_capacity(sub.filters.len());
                    for f in &sub.filters {
                        if !can_read {
                            self.metrics.reject("subscribe_without_read_right");
                            codes.push(SubscribeReasonCode::Failure);
                        } else if !mqttbytes::valid_filter(&f.path) {
                            self.metrics.reject("invalid_filter");
                            codes.push(SubscribeReasonCode::Failure);
                        } else {
                            let qos = if f.qos == QoS::AtMostOnce {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            };
                            let mut filters = filters.write().expect("filters lock");
                            filters.retain(|(p, _)| p != &f.path);
                            filters.push((f.path.clone(), qos));
                            codes.push(SubscribeReasonCode::Success(qos));
                        }
                    }
                    let _ = ctl_tx.send(Packet::SubAck(SubAck::new(sub.pkid, codes)));
                }
                Packet::Unsubscribe(unsub) => {
                    filters
                        .write()
                        .expect("filters lock")
                        .retain(|(p, _)| !unsub.topics.contains(p));
                    let _ = ctl_tx.send(Packet::UnsubAck(UnsubAck::new(unsub.pkid)));
                }
                Packet::Publish(publish) => {
                    let qos = publish.qos;
                    let pkid = publish.pkid;
                    if qos == QoS::ExactlyOnce {
                        self.metrics.reject("qos2");
                        info!(%peer, "MQTT client published with QoS 2, which this server does not support; disconnecting");
                        break;
                    }
                    match self.downlink(&application_id, can_write, &publish).await {
                        Ok(()) => {}
                        Err(Refusal::Disconnect(reason)) => {
                            info!(%peer, application = %application_id, topic = %publish.topic, %reason, "MQTT publication refused; disconnecting");
                            break;
                        }
                        Err(Refusal::Dropped(reason)) => {
                            warn!(%peer, application = %application_id, topic = %publish.topic, %reason, "MQTT downlink refused");
                        }
                    }
                    if qos == QoS::AtLeastOnce {
                        let _ = ctl_tx.send(Packet::PubAck(PubAck::new(pkid)));
                    }
                }
                Packet::PubAck(_) => {}
                _ => {
                    self.metrics.reject("unexpected_packet");
                    break;
                }
            }
        }
        self.clients.write().expect("clients lock").remove(&id);
        self.metrics.clients.dec();
        drop(ctl_tx);
        // Let the writer flush control packets (e.g. a last PUBACK) briefly, then stop it.
        if !writer_done
            && tokio::time::timeout(std::time::Duration::from_millis(200), &mut writer)
                .await
                .is_err()
        {
            writer.abort();
        }
    }

    async fn downlink(
        &self,
        application_id: &str,
        can_write: bool,
        publish: &Publish,
    ) -> Result<(), Refusal> {
        let parts: Vec<&str> = publish.topic.split('/').collect();
        let (app, dev, op) = match parts.as_slice() {
            ["v3", app, "devices", dev, "down", "push"] => (*app, *dev, QueueOp::Push),
            ["v3", app, "devices", dev, "down", "replace"] => (*app, *dev, QueueOp::Replace),
            _ => {
                self.metrics.reject("publish_topic");
                return Err(Refusal::Disconnect(format!(
                    "clients may only publish to v3/{{application}}/devices/{{device}}/down/push or /down/replace, not {:?}",
                    publish.topic
                )));
            }
        };
        if app != application_id {
            self.metrics.reject("publish_other_application");
            return Err(Refusal::Disconnect(format!(
                "the client is connected for application {application_id:?}, not {app:?}"
            )));
        }
        if !can_write {
            self.metrics.reject("publish_without_write_right");
            return Err(Refusal::Disconnect(format!(
                "the API key lacks {RIGHT_TRAFFIC_DOWN_WRITE} on application {app:?}"
            )));
        }
        let downlinks = parse_downlinks(&publish.payload).map_err(|e| {
            self.metrics.reject("invalid_downlink");
            Refusal::Dropped(e)
        })?;
        let ids = v3::EndDeviceIdentifiers {
            application_ids: Some(v3::ApplicationIdentifiers {
                application_id: app.to_owned(),
            }),
            device_id: dev.to_owned(),
            ..Default::default()
        };
        self.core.queue(&ids, op, downlinks).await.map_err(|s| {
            self.metrics.reject("downlink_refused");
            Refusal::Dropped(s.message().to_owned())
        })
    }
}

enum Refusal {
    Disconnect(String),
    Dropped(String),
}

#[async_trait]
impl Sink for MqttServer {
    async fn deliver(&self, message: Arc<AppMessage>) -> anyhow::Result<()> {
        let topic = message.topic();
        let clients = self.clients.read().expect("clients lock");
        for client in clients.values() {
            // The ACL: a client sees its own application only, whatever its filters.
            if !client.can_read || client.application_id != message.application_id {
                continue;
            }
            let qos = client
                .filters
                .read()
                .expect("filters lock")
                .iter()
                .filter(|(f, _)| mqttbytes::matches(&topic, f))
                .map(|(_, q)| *q)
                .max_by_key(|q| *q as u8);
            let Some(qos) = qos else { continue };
            if client.tx.try_send((message.clone(), qos)).is_err() {
                self.metrics.reject("slow_client");
                client.kick.send_replace(true);
            }
        }
        // Best effort: MQTT clients that are not connected miss the message.
        Ok(())
    }
}

#[derive(Debug)]
enum ReadError {
    Io,
    Closed,
    KeepAlive,
    Codec(mqttbytes::Error),
}

async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Packet, ReadError> {
    loop {
        match mqttbytes::v4::read(buf, max) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(ReadError::Codec(e)),
        }
        buf.reserve(4096);
        match rd.read_buf(buf).await {
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) => {}
            Err(_) => return Err(ReadError::Io),
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(
    wr: &mut W,
    encode: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    encode(&mut out).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    wr.write_all(&out).await?;
    wr.flush().await
}

async fn write_any<W: AsyncWrite + Unpin>(wr: &mut W, packet: &Packet) -> std::io::Result<()> {
    write_packet(wr, |b| match packet {
        Packet::Publish(p) => p.write(b),
        Packet::PubAck(p) => p.write(b),
        Packet::SubAck(p) => p.write(b),
        Packet::UnsubAck(p) => p.write(b),
        Packet::PingResp => mqttbytes::v4::PingResp.write(b),
        Packet::ConnAck(p) => p.write(b),
        _ => Ok(0),
    })
    .await
}

/// Loads a TLS acceptor from PEM files.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("application-server.mqtt.cert {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("application-server.mqtt.cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("application-server.mqtt.key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "application-server.mqtt: certificate and key do not form a TLS identity: {e}"
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
