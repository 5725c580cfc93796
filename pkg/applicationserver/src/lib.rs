//! Tern's Application Server role.
//!
//! - [`link`]: the AS end of the AS↔NS link (reconnects with backoff, acknowledges what was
//!   durably handed on, carries downlink queue operations).
//! - [`core`]: the pipeline. Uplinks are decrypted with the AppSKey (unwrapped with the AS's
//!   own KEK, or fetched from the Join Server), decoded by the payload formatter and rendered
//!   as The Things Stack v3 JSON; downlinks are encoded, encrypted with the counter the NS
//!   reports, and re-encrypted when the NS invalidates them.
//! - [`fanout`]: where rendered messages go: the MQTT server and any [`fanout::Sink`]
//!   (webhooks, pub/sub), plus a broadcast for best-effort listeners.
//! - [`mqtt`]: the MQTT server for applications; [`grpc`]: the public gRPC API.
//! - [`cluster`]: with a NATS event bus, every AS of the cluster relays its MQTT messages
//!   to the others, so that a client sees all of its application's traffic on any AS.

#![warn(missing_docs)]

pub mod cache;
pub mod cluster;
pub mod config;
pub mod core;
pub mod fanout;
pub mod grpc;
mod integrations;
pub mod keys;
pub mod link;
pub mod mqtt;
pub mod render;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::{ApiKeyVerifier, Authenticator};
use tern_cluster::links::{AsJs, AsNs};
use tern_cluster::role::{Readiness, Role, RoleContext, RoleService};
use tern_events::EventBus;
use tern_store::Store;
use tokio::task::JoinHandle;

pub use crate::cache::CacheConfig;
pub use crate::config::{AsConfig, MqttConfig, Secret};
pub use crate::core::{AsCore, QueueOp};
pub use crate::fanout::{AppMessage, Sink, TopicKind};
use crate::keys::KeyVault;
use crate::link::{LinkConfig, LinkState, Linker, UpHandler};

/// What the full Application Server is built from.
pub struct AsDeps {
    /// The `[application-server]` configuration.
    pub config: AsConfig,
    /// The store (AS devices and application settings).
    pub store: Store,
    /// The event bus.
    pub events: EventBus,
    /// Authenticates calls of the gRPC API.
    pub auth: Authenticator,
    /// The link to the Network Server (in-process or gRPC).
    pub ns: Arc<dyn AsNs>,
    /// The Join Server, for AppSKeys the AS does not have yet.
    pub js: Option<Arc<dyn AsJs>>,
    /// Verifies the API keys of MQTT clients.
    pub api_keys: Arc<dyn ApiKeyVerifier>,
    /// The name of this AS instance, shown to a second AS refused the same link; also tags
    /// the MQTT messages it relays to the cluster's other ASes (unique per AS).
    pub instance_id: String,
}

struct Full {
    core: Arc<AsCore>,
    config: AsConfig,
    auth: Authenticator,
    api: grpc::AsApi,
    mqtt: Arc<mqtt::MqttServer>,
    started: Arc<AtomicBool>,
    mqtt_addrs: Mutex<Vec<SocketAddr>>,
    integrations: tern_integrations::Integrations,
    relay: Option<Arc<cluster::MqttRelay>>,
}

/// The Application Server role.
pub struct ApplicationServer {
    linker: Arc<Linker>,
    task: Mutex<Option<JoinHandle<()>>>,
    full: Option<Full>,
}

impl ApplicationServer {
    /// An AS that only links to `ns` as configured, naming itself `instance_id` (no
    /// pipeline: what the NS sends is acknowledged and dropped).
    pub fn new(ns: Arc<dyn AsNs>, link: LinkConfig, instance_id: String) -> Self {
        Self {
            linker: Arc::new(Linker::new(ns, link, instance_id)),
            task: Mutex::new(None),
            full: None,
        }
    }

    /// The full AS: link, pipeline, MQTT server and gRPC API. Fails on an invalid KEK or
    /// MQTT address, naming the configuration field.
    pub fn with_deps(deps: AsDeps) -> anyhow::Result<Self> {
        let vault = KeyVault::from_config(&deps.config).map_err(anyhow::Error::msg)?;
        deps.config.mqtt.listen_addr().map_err(anyhow::Error::msg)?;
        deps.config
            .mqtt
            .tls_listen_addr()
            .map_err(anyhow::Error::msg)?;
        let kek = deps
            .config
            .keks
            .get(&deps.config.kek_label)
            .map(|hex| -> anyhow::Result<_> {
                let key = hex.expose().parse().map_err(|e| {
                    anyhow::anyhow!("application-server.keks.{:?}: {e}", deps.config.kek_label)
                })?;
                Ok((deps.config.kek_label.clone(), key))
            })
            .transpose()?;
        let formatters = Arc::new(tern_formatters::Formatters::new(
            deps.config.formatters.clone(),
        ));
        let fanout = Arc::new(fanout::Fanout::new(1024));
        let core_store = deps.store.clone();
        let api_keys = deps.api_keys.clone();
        let events = deps.events.clone();
        let core = Arc::new(
            AsCore::new(
                deps.store,
                deps.events,
                vault,
                deps.js,
                deps.ns.clone(),
                formatters,
                fanout.clone(),
            )
            .with_cache(&deps.config.cache),
        );
        let linker = Arc::new(Linker::with_handler(
            deps.ns,
            deps.config.link.clone(),
            deps.instance_id.clone(),
            Some(core.clone() as Arc<dyn UpHandler>),
        ));
        core.attach(&linker);
        let mqtt = Arc::new(mqtt::MqttServer::new(
            core.clone(),
            api_keys.clone(),
            deps.config.mqtt.clone(),
        ));
        fanout.add_sink(mqtt.clone());
        // Messages of other ASes go to the MQTT server only: integrations run where the
        // message was produced.
        let relay = cluster::MqttRelay::new(&events, deps.instance_id, mqtt.clone());
        if let Some(relay) = &relay {
            fanout.add_sink(relay.clone());
        }
        let integrations =
            tern_integrations::Integrations::new(tern_integrations::IntegrationsDeps {
                config: deps.config.integrations.clone(),
                store: core_store,
                api_keys: api_keys.clone(),
                downlinks: Arc::new(integrations::CoreDownlinks(core.clone())),
                public_url: deps.config.public_url.clone(),
            })
            .map_err(|e| anyhow::anyhow!("application-server.integrations: {e}"))?;
        fanout.add_sink(Arc::new(integrations::IntegrationsSink(
            integrations.clone(),
        )));
        let started = Arc::new(AtomicBool::new(false));
        Ok(Self {
            linker,
            task: Mutex::new(None),
            full: Some(Full {
                api: grpc::AsApi::new(core.clone(), started.clone(), kek),
                core,
                config: deps.config,
                auth: deps.auth,
                mqtt,
                started,
                mqtt_addrs: Mutex::new(Vec::new()),
                integrations,
                relay,
            }),
        })
    }

    /// The state of the link to the Network Server.
    pub fn link_state(&self) -> LinkState {
        self.linker.state()
    }

    /// The pipeline (full AS only).
    pub fn core(&self) -> Option<&Arc<AsCore>> {
        self.full.as_ref().map(|f| &f.core)
    }

    /// Adds a durable consumer of rendered messages (webhooks, pub/sub); call before start.
    pub fn add_sink(&self, sink: Arc<dyn Sink>) {
        if let Some(full) = &self.full {
            full.core.fanout.add_sink(sink);
        }
    }

    /// A best-effort receiver of every rendered message (full AS only).
    pub fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<AppMessage>>> {
        self.full.as_ref().map(|f| f.core.fanout.subscribe())
    }

    /// Pushes downlinks (clear `frm_payload` or `decoded_payload`) to a device's queue.
    pub async fn push(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        downlinks: Vec<v3::ApplicationDownlink>,
    ) -> Result<(), tonic::Status> {
        self.queue(ids, QueueOp::Push, downlinks).await
    }

    /// Replaces a device's queue with these downlinks.
    pub async fn replace(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        downlinks: Vec<v3::ApplicationDownlink>,
    ) -> Result<(), tonic::Status> {
        self.queue(ids, QueueOp::Replace, downlinks).await
    }

    async fn queue(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        op: QueueOp,
        downlinks: Vec<v3::ApplicationDownlink>,
    ) -> Result<(), tonic::Status> {
        match &self.full {
            Some(full) => full.core.queue(ids, op, downlinks).await,
            None => Err(tonic::Status::unimplemented(
                "this Application Server has no downlink pipeline",
            )),
        }
    }

    /// The MQTT server (full AS only).
    pub fn mqtt(&self) -> Option<&Arc<mqtt::MqttServer>> {
        self.full.as_ref().map(|f| &f.mqtt)
    }

    /// The relay of MQTT messages to the cluster's other ASes (full AS on a NATS bus only).
    pub fn relay(&self) -> Option<&Arc<cluster::MqttRelay>> {
        self.full.as_ref().and_then(|f| f.relay.as_ref())
    }

    /// The addresses the MQTT server listens on (plain first), once started.
    pub fn mqtt_addrs(&self) -> Vec<SocketAddr> {
        self.full
            .as_ref()
            .map(|f| f.mqtt_addrs.lock().expect("addrs lock").clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl RoleService for ApplicationServer {
    fn role(&self) -> Role {
        Role::As
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        if let Some(full) = &self.full {
            full.api.add_to(&full.auth, routes);
            full.integrations.grpc_services(routes, &full.auth);
        }
    }

    fn http_routes(&self) -> Option<axum::Router> {
        self.full.as_ref().map(|f| f.integrations.router())
    }

    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()> {
        if let Some(full) = &self.full {
            ctx.metrics.register_role(Role::As, |registry| {
                full.core.metrics.register(registry);
                full.mqtt.metrics().register(registry);
                full.core.formatters.register_metrics(registry);
                full.integrations.register_metrics(registry);
                if let Some(relay) = &full.relay {
                    relay.metrics().register(registry);
                }
            });
            // Before the link too: other ASes' messages reach clients as soon as they connect.
            if let Some(relay) = &full.relay {
                relay.start(ctx.shutdown.clone()).await?;
            }
            // Before the link: messages from the NS reach webhooks only once they run.
            full.integrations
                .start(ctx.shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!("starting the integrations: {e}"))?;
            let mut addrs = Vec::new();
            if let Some(addr) = full.config.mqtt.listen_addr().map_err(anyhow::Error::msg)? {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("application-server.mqtt.listen: cannot listen on {addr}: {e}")
                })?;
                addrs.push(listener.local_addr()?);
                tokio::spawn(full.mqtt.clone().serve_tcp(listener, ctx.shutdown.clone()));
            }
            if let Some(addr) = full
                .config
                .mqtt
                .tls_listen_addr()
                .map_err(anyhow::Error::msg)?
            {
                let (cert, key) = (
                    full.config
                        .mqtt
                        .cert
                        .as_deref()
                        .unwrap_or_else(|| std::path::Path::new("")),
                    full.config
                        .mqtt
                        .key
                        .as_deref()
                        .unwrap_or_else(|| std::path::Path::new("")),
                );
                let acceptor = mqtt::tls_acceptor(cert, key)?;
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!(
                        "application-server.mqtt.tls-listen: cannot listen on {addr}: {e}"
                    )
                })?;
                addrs.push(listener.local_addr()?);
                tokio::spawn(
                    full.mqtt
                        .clone()
                        .serve_tls(listener, acceptor, ctx.shutdown.clone()),
                );
            }
            for addr in &addrs {
                tracing::info!(%addr, "MQTT server listening");
            }
            *full.mqtt_addrs.lock().expect("addrs lock") = addrs;
            full.started.store(true, Ordering::Release);
        }
        // The link comes up in the background: a Network Server that is not reachable yet
        // makes the AS not ready, not failed.
        let task = tokio::spawn(
            self.linker
                .clone()
                .run(ctx.shutdown.clone(), ctx.readiness.clone()),
        );
        *self.task.lock().expect("task lock") = Some(task);
        Ok(())
    }

    fn readiness(&self) -> Readiness {
        match self.linker.state() {
            LinkState::Linked(_) => Readiness::Ready,
            LinkState::Starting => Readiness::NotReady("linking to the Network Server".to_owned()),
            LinkState::Down(reason) => {
                Readiness::NotReady(format!("not linked to the Network Server: {reason}"))
            }
        }
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        let task = self.task.lock().expect("task lock").take();
        if let Some(task) = task {
            // The linker returns at shutdown; wait so that the link closes cleanly.
            let _ = task.await;
        }
        Ok(())
    }
}
