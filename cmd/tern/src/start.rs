//! `tern start`: bind the servers, start the roles, serve, and shut down gracefully.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::config::{Config, Origin};
use crate::grpc;
use crate::http::{self, HttpState};
use crate::lifecycle::{RoleContext, RoleService};
use crate::metrics::Metrics;
use crate::readiness::ReadinessTracker;
use crate::rest::RestGateway;
use crate::roles::Role;
use crate::shutdown::{Shutdown, Signals};
use crate::wiring;

/// Runs the process until a signal, then shuts down within `shutdown.timeout`.
///
/// Returns an error for a failed start or a failed shutdown; exits the process with status 1
/// itself when the graceful shutdown overruns its deadline or a second signal arrives.
pub async fn run(config: Config, origin: Origin, roles: Vec<Role>) -> anyhow::Result<()> {
    // Installed first, so that a signal during start-up also leads to a clean stop.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data directory {}", config.data_dir.display()))?;

    let http_listener = bind("http.listen", config.http.listen).await?;
    let grpc_listener = bind("grpc.listen", config.grpc.listen).await?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;

    let process = wiring::assemble(&config, &roles, grpc_addr).await?;
    let services: Vec<Arc<dyn RoleService>> = process.roles.clone();
    let readiness = ReadinessTracker::new(services.clone(), process.backing.clone());
    let metrics = Metrics::new();
    metrics.register_collector(Box::new(readiness.clone()));
    let shutdown = Shutdown::new();
    // Set when a server fails on its own, so the process stops instead of limping on.
    let server_failed = Shutdown::new();

    let (routes, health) = grpc::routes(&services, &process.events, &process.auth);
    let http_task = tokio::spawn({
        let mut router = http::router(HttpState {
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            rest: RestGateway::new(routes.clone()),
        });
        // Routes of a role that are not gRPC methods (e.g. webhook downlinks).
        for role in &services {
            if let Some(routes) = role.http_routes() {
                router = router.merge(routes);
            }
        }
        let (shutdown, failed) = (shutdown.clone(), server_failed.clone());
        async move {
            let result = http::serve(http_listener, router, shutdown).await;
            if result.is_err() {
                failed.trigger();
            }
            result.map_err(|e| anyhow!("HTTP server on {http_addr}: {e}"))
        }
    });
    let grpc_task = tokio::spawn({
        let (readiness, shutdown, failed) =
            (readiness.clone(), shutdown.clone(), server_failed.clone());
        async move {
            let result = grpc::serve(grpc_listener, routes, health, readiness, shutdown).await;
            if result.is_err() {
                failed.trigger();
            }
            result.map_err(|e| anyhow!("gRPC server on {grpc_addr}: {e}"))
        }
    });

    let ctx = RoleContext {
        data_dir: config.data_dir.clone(),
        metrics: metrics.registry(),
        shutdown: shutdown.clone(),
        readiness: readiness.signal(),
    };
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let mut failure = None;
    tokio::select! {
        result = start_roles(&services, &ctx) => match result {
            Ok(()) => {
                info!(
                    roles = %names.join(","), http = %http_addr, grpc = %grpc_addr,
                    instance = %process.instance_id,
                    data_dir = %config.data_dir.display(), config = %origin, "tern started",
                );
                tokio::select! {
                    signal = signals.recv() => info!(signal, "received signal"),
                    _ = server_failed.wait() => failure = Some(anyhow!("a server stopped unexpectedly")),
                }
            }
            Err(e) => failure = Some(e),
        },
        signal = signals.recv() => info!(signal, "received signal during start-up"),
        _ = server_failed.wait() => failure = Some(anyhow!("a server stopped unexpectedly")),
    }

    let timeout = config.shutdown.timeout;
    info!(timeout = %humantime::format_duration(timeout), "shutting down");
    // Readiness flips first: from here on, any health check still answered says "not ready".
    readiness.begin_shutdown();
    shutdown.trigger();
    let graceful = async {
        let mut errors = Vec::new();
        for task in [http_task, grpc_task] {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(anyhow!("server task: {e}")),
            }
        }
        // Servers have drained: no request can reach a role any more.
        for service in services.iter().rev() {
            if let Err(e) = service.shutdown().await {
                errors.push(e.context(format!("stopping role {}", service.role())));
            }
        }
        // The roles are done: deregister, flush events, flush the store.
        if let Err(e) = process.close().await {
            errors.push(e);
        }
        errors
    };
    let errors = tokio::select! {
        errors = graceful => errors,
        _ = tokio::time::sleep(timeout) => {
            error!(
                timeout = %humantime::format_duration(timeout),
                "graceful shutdown did not finish within shutdown.timeout; exiting now"
            );
            std::process::exit(1);
        }
        signal = signals.recv() => {
            error!(signal, "second signal during shutdown; exiting now");
            std::process::exit(1);
        }
    };
    for e in &errors {
        warn!("{e:#}");
    }
    match (failure, errors.into_iter().next()) {
        (Some(e), _) | (None, Some(e)) => Err(e),
        (None, None) => {
            info!("tern stopped");
            Ok(())
        }
    }
}

/// Starts the roles in order; each is ready for the trackers once its start returns.
async fn start_roles(services: &[Arc<dyn RoleService>], ctx: &RoleContext) -> anyhow::Result<()> {
    for service in services {
        service
            .start(ctx)
            .await
            .with_context(|| format!("starting role {}", service.role()))?;
        ctx.readiness.notify();
    }
    Ok(())
}

/// Binds a listener, naming the configuration key when that fails.
async fn bind(key: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key} = \"{addr}\": cannot listen"))
}
