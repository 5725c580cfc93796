//! The role lifecycle as `tern start` drives it, and the frame of a role without logic yet.
//!
//! The lifecycle itself ([`RoleService`], [`RoleContext`], [`Readiness`]) lives in
//! `tern-cluster`, where the role crates implement it.

use tern_cluster::role::RunState;
pub use tern_cluster::role::{Readiness, RoleContext, RoleService};

use crate::roles::Role;

/// A role whose logic has not arrived yet: it owns nothing and is ready once started.
pub struct FrameRole {
    role: Role,
    state: RunState,
}

impl FrameRole {
    /// A not yet started frame for `role`.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            state: RunState::new(),
        }
    }
}

#[async_trait::async_trait]
impl RoleService for FrameRole {
    fn role(&self) -> Role {
        self.role
    }

    async fn start(&self, _ctx: &RoleContext) -> anyhow::Result<()> {
        self.state.started();
        Ok(())
    }

    fn readiness(&self) -> Readiness {
        self.state.readiness()
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.state.stopped();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::ReadinessTracker;
    use std::path::PathBuf;
    use std::sync::Arc;
    use tern_cluster::role::{MetricsRegistry, ReadinessSignal, Shutdown};

    #[tokio::test]
    async fn frame_role_is_ready_between_start_and_shutdown() {
        let role = Arc::new(FrameRole::new(Role::Gs));
        let tracker = ReadinessTracker::new(vec![role.clone()], Vec::new());
        let ctx = RoleContext {
            data_dir: PathBuf::from("unused"),
            metrics: MetricsRegistry::new(),
            shutdown: Shutdown::new(),
            readiness: ReadinessSignal::new(),
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
