//! Shutdown: the process-wide trigger, and waiting for SIGTERM or SIGINT.

use tokio::signal::unix::{SignalKind, signal};

pub use tern_cluster::role::Shutdown;

/// Listens for the signals that ask the process to stop.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the SIGTERM and SIGINT handlers; from now on they no longer kill the process.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
