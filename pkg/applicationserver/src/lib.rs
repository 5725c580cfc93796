//! Tern's Application Server role.
//!
//! What is here: the role frame and the AS end of the AS↔NS link ([`link::Linker`]).
//! Payload crypto, formatters, the MQTT server, webhooks and pub/sub arrive with the
//! Application Server issue, on these foundations.

#![warn(missing_docs)]

pub mod link;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tern_cluster::links::AsNs;
use tern_cluster::role::{Readiness, Role, RoleContext, RoleService};
use tokio::task::JoinHandle;

use crate::link::{LinkConfig, LinkState, Linker};

/// The Application Server role.
pub struct ApplicationServer {
    linker: Arc<Linker>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ApplicationServer {
    /// An AS linking to `ns` (in-process or gRPC) as configured, naming itself `instance_id`.
    pub fn new(ns: Arc<dyn AsNs>, link: LinkConfig, instance_id: String) -> Self {
        Self {
            linker: Arc::new(Linker::new(ns, link, instance_id)),
            task: Mutex::new(None),
        }
    }

    /// The state of the link to the Network Server.
    pub fn link_state(&self) -> LinkState {
        self.linker.state()
    }
}

#[async_trait]
impl RoleService for ApplicationServer {
    fn role(&self) -> Role {
        Role::As
    }

    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()> {
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
