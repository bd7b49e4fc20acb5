//! The job server (`spanflow server`): submit, watch, stop and cancel jobs over a REST
//! API, scrape their telemetry at `/metrics`.
//!
//! Each job runs in a thread of its own with periodic checkpoints under the state
//! directory (`<state-dir>/jobs/<id>/`: `job.yaml`, `status.json`, `checkpoints/`,
//! relative Parquet outputs). Stopping the server (Ctrl-C, SIGTERM) stops every job
//! with a last checkpoint and leaves it `running`; the next server started on the same
//! directory resumes it from there, as it does after a crash from the newest periodic
//! checkpoint.

mod api;
pub mod client;
mod jaeger;
mod jobs;
mod metrics;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::{get, post};

pub use api::{JobView, OPENAPI};
pub use jobs::{JobState, Record};

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where jobs and their checkpoints are kept.
    pub state_dir: PathBuf,
    /// The bearer token API calls must carry.
    pub token: Option<String>,
    /// Checkpoint interval of jobs whose definition sets none.
    pub checkpoint_interval: Duration,
    /// Serve Jaeger's remote-storage API v2 (gRPC) on this address, over the kept
    /// traces of every job.
    pub jaeger: Option<SocketAddr>,
}

/// The routes under `/api/v1`, as `(method, path)`: the OpenAPI document must
/// describe exactly these (a test checks it).
pub const API_ROUTES: [(&str, &str); 6] = [
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{id}"),
    ("delete", "/api/v1/jobs/{id}"),
    ("post", "/api/v1/jobs/{id}/stop"),
    ("get", "/api/v1/openapi.json"),
];

fn router(state: Arc<api::AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/jobs", post(api::submit).get(api::list))
        .route("/api/v1/jobs/{id}", get(api::get).delete(api::cancel))
        .route("/api/v1/jobs/{id}/stop", post(api::stop))
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/", get(web::index))
        .route("/jobs/{id}", get(web::job))
        .route("/jobs/{id}/traces/{trace_id}", get(web::trace))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::require_token,
        ));
    Router::new()
        .merge(api)
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        // Job definitions are small; this bounds what one request can make us hold.
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
        .with_state(state)
}

/// Runs a server until Ctrl-C or SIGTERM; then stops every running job with a last
/// checkpoint (the next server on the same state directory resumes them).
pub fn serve(cfg: ServerConfig) -> Result<()> {
    if !cfg.listen.ip().is_loopback() && cfg.token.is_none() {
        anyhow::bail!(
            "refusing to listen on {} without --token: anyone who can reach it could \
             submit jobs (listen on 127.0.0.1, or set a token)",
            cfg.listen
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("spanflow-server")
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let local = listener.local_addr()?;
        let state_dir = cfg.state_dir.clone();
        let interval = cfg.checkpoint_interval;
        let opened = tokio::task::spawn_blocking(move || jobs::Jobs::open(&state_dir, interval))
            .await
            .context("opening the state directory")?;
        let jobs = opened.map_err(|e| anyhow::anyhow!("{e}"))?;
        let state = Arc::new(api::AppState {
            jobs: jobs.clone(),
            token: cfg.token.clone(),
            ready: AtomicBool::new(false),
        });
        let mut jaeger_stop = None;
        if let Some(addr) = cfg.jaeger {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the Jaeger API"))?;
            let bound = listener.local_addr()?;
            let store = Arc::new(crate::jaeger::Union(jaeger::JobStores::new(
                jobs.clone(),
                cfg.state_dir.clone(),
            )));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            jaeger_stop = Some(stop);
            let token = cfg.token.clone();
            tokio::spawn(async move {
                let until = async {
                    let _ = stopped.await;
                };
                if let Err(e) = crate::jaeger::serve(store, listener, token, until).await {
                    tracing::error!(error = %e.message, "the Jaeger API failed");
                }
            });
            eprintln!("spanflow server: Jaeger remote-storage API v2 (gRPC) on {bound}");
        }
        let sampler = jobs.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sampler.sample_rates();
            }
        });
        // Tests and scripts wait for this line (and read the port when it was 0).
        eprintln!(
            "spanflow server listening on http://{local} (state in {})",
            cfg.state_dir.display()
        );
        state.ready.store(true, Ordering::Relaxed);
        axum::serve(
            listener,
            router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
        if let Some(stop) = jaeger_stop {
            let _ = stop.send(());
        }
        eprintln!("stopping: every running job takes a last checkpoint");
        tokio::task::spawn_blocking(move || jobs.shutdown())
            .await
            .context("stopping the jobs")?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests;
