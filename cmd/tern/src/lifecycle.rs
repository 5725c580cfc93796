//! The lifecycle every role implements: start, report readiness, shut down.
//!
//! The trait lives here until the cluster crate exists; the role crates will implement it
//! there, and `tern start` only wires them.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::readiness::ReadinessTracker;
use crate::roles::Role;
use crate::shutdown::Shutdown;

/// A boxed, sendable future, so the trait stays usable as `dyn RoleService`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a role can serve traffic now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The role serves traffic.
    Ready,
    /// The role does not serve traffic; the reason is shown on `/readyz`.
    NotReady(String),
}

/// What the process hands each role when it starts.
#[derive(Clone)]
pub struct RoleContext {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The data directory, already created.
    pub data_dir: PathBuf,
    /// The process's metrics; register with [`Metrics::register_role`].
    pub metrics: Metrics,
    /// Fires when the process begins to shut down; long-lived work (streams) ends then.
    pub shutdown: Shutdown,
    /// Lets a role say its readiness changed, so health reports update at once.
    pub readiness: ReadinessTracker,
}

/// A role's lifecycle, driven by `tern start`.
pub trait RoleService: Send + Sync {
    /// Which role this is.
    fn role(&self) -> Role;

    /// Starts the role; returns once it can serve, or with the reason it cannot.
    fn start<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Reports whether the role serves traffic; called often, so it must be cheap.
    fn readiness(&self) -> Readiness;

    /// Finishes in-flight work and flushes state; called after the servers have drained.
    /// Also called, in reverse start order, for a role whose start was cut short.
    fn shutdown(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// A role whose logic has not arrived yet: it owns nothing and is ready once started.
pub struct FrameRole {
    role: Role,
    state: AtomicU8,
}

const CREATED: u8 = 0;
const STARTED: u8 = 1;
const STOPPED: u8 = 2;

impl FrameRole {
    /// A not yet started frame for `role`.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            state: AtomicU8::new(CREATED),
        }
    }
}

impl RoleService for FrameRole {
    fn role(&self) -> Role {
        self.role
    }

    fn start<'a>(&'a self, _ctx: &'a RoleContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.state.store(STARTED, Ordering::SeqCst);
            Ok(())
        })
    }

    fn readiness(&self) -> Readiness {
        match self.state.load(Ordering::SeqCst) {
            STARTED => Readiness::Ready,
            CREATED => Readiness::NotReady("starting".to_owned()),
            _ => Readiness::NotReady("stopped".to_owned()),
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.state.store(STOPPED, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_role_is_ready_between_start_and_shutdown() {
        let role = Arc::new(FrameRole::new(Role::Gs));
        let tracker = ReadinessTracker::new(vec![role.clone()]);
        let ctx = RoleContext {
            config: Arc::new(Config::default()),
            data_dir: PathBuf::from("unused"),
            metrics: Metrics::new(),
            shutdown: Shutdown::new(),
            readiness: tracker.clone(),
        };
        assert_eq!(role.readiness(), Readiness::NotReady("starting".to_owned()));
        role.start(&ctx).await.unwrap();
        assert_eq!(role.readiness(), Readiness::Ready);
        assert!(tracker.report().ready);
        role.shutdown().await.unwrap();
        assert_eq!(role.readiness(), Readiness::NotReady("stopped".to_owned()));
        assert!(!tracker.report().ready);
    }
}
