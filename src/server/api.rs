//! The REST API under `/api/v1` (described by `openapi.json`, served at
//! `/api/v1/openapi.json`), `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::jobs::{JobHandle, JobState, Jobs, SubmitError};
use super::metrics;
use crate::runtime::SplitStats;

/// What every handler sees.
pub struct AppState {
    /// The server's jobs.
    pub jobs: Arc<Jobs>,
    /// The bearer token every API call must carry, when set.
    pub token: Option<String>,
    /// Set once every job that was running has been started again.
    pub ready: AtomicBool,
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// An error answer: `{"error": "..."}`, plus `diagnostics` for an invalid job.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    diagnostics: Option<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            diagnostics: None,
        }
    }

    fn not_found(id: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    id: String,
    name: String,
    state: JobState,
    submitted_at: String,
    started_at: String,
    ended_at: Option<String>,
    runs: u32,
    error: Option<String>,
    spans: u64,
    records: u64,
    spans_per_second: f64,
    open_traces: u64,
    buffered_spans: u64,
    traces_closed: u64,
    dead_letters: u64,
    watermark: Option<String>,
    splits: Vec<SplitView>,
    last_checkpoint: Option<CheckpointView>,
    /// A job run as a group member: the instance, the partitions it owns now, its
    /// rebalances.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<crate::runtime::GroupSummary>,
    summary: Option<serde_json::Value>,
}

/// One split's event time.
#[derive(Debug, Serialize)]
struct SplitView {
    source: String,
    split: u32,
    watermark: Option<String>,
    watermark_lag_seconds: Option<f64>,
    paused_seconds: f64,
}

/// The newest checkpoint of the job's current run.
#[derive(Debug, Serialize)]
struct CheckpointView {
    completed: u64,
    path: Option<String>,
    bytes: u64,
    duration_ms: f64,
    completed_at: String,
}

fn rfc3339_ms(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

impl JobView {
    /// Spans per second now (0 unless running).
    pub fn spans_per_second(&self) -> f64 {
        self.spans_per_second
    }

    /// Start of the current run, RFC 3339.
    pub fn started_at(&self) -> String {
        self.started_at.clone()
    }

    /// Records and spans in dead letters.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters
    }

    /// The event-time watermark, RFC 3339.
    pub fn watermark(&self) -> Option<&str> {
        self.watermark.as_deref()
    }

    /// When the newest checkpoint completed, RFC 3339.
    pub fn last_checkpoint_at(&self) -> Option<String> {
        self.last_checkpoint
            .as_ref()
            .map(|c| c.completed_at.clone())
    }

    /// The view of `h` now.
    pub fn of(h: &JobHandle) -> JobView {
        let r = h.record();
        let live = &h.live;
        let ck = live.checkpoints();
        let decode = live.decode();
        let wm = live.watermark.load(Ordering::Relaxed);
        let split = |s: SplitStats| SplitView {
            source: s.source,
            split: s.split,
            watermark: s.watermark_ms.map(rfc3339_ms),
            watermark_lag_seconds: s.watermark_lag_s,
            paused_seconds: s.paused_s,
        };
        JobView {
            id: r.id,
            name: r.name,
            state: r.state,
            submitted_at: rfc3339_ms(r.submitted_at_ms),
            started_at: rfc3339_ms(r.started_at_ms),
            ended_at: r.ended_at_ms.map(rfc3339_ms),
            runs: r.runs,
            error: r.error,
            spans: live.spans.load(Ordering::Relaxed),
            records: live.records.load(Ordering::Relaxed),
            spans_per_second: if r.state == JobState::Running {
                h.rate.lock().map_or(0.0, |r| r.per_second)
            } else {
                0.0
            },
            open_traces: live.open_traces.load(Ordering::Relaxed),
            buffered_spans: live.buffered_spans.load(Ordering::Relaxed),
            traces_closed: live.traces_closed.load(Ordering::Relaxed),
            dead_letters: decode.dead_letters() + live.far_future.load(Ordering::Relaxed),
            watermark: (wm > 0).then(|| rfc3339_ms(wm / 1_000_000)),
            splits: live.splits().into_iter().map(split).collect(),
            last_checkpoint: (ck.completed > 0).then(|| CheckpointView {
                completed: ck.completed,
                path: ck.last.map(|p| p.display().to_string()),
                bytes: ck.last_bytes,
                duration_ms: ck.last_duration_ms,
                completed_at: rfc3339_ms(ck.last_completed_unix_ms),
            }),
            group: live.group.lock().ok().and_then(|g| g.clone()),
            summary: r.summary,
        }
    }
}

/// Refuses API calls without the server's bearer token (when it has one). The
/// rejection is logged with the caller's address, never with what it sent.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let matches = |s: &str| constant_time_eq(s.as_bytes(), token.as_bytes());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // The web pages (and their scripts' API calls) carry it in a cookie, set once by
    // opening any page with `?token=`.
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE).map(str::to_owned));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("token=")))
        .map(str::to_owned);
    let sent = bearer.map(str::to_owned).or(cookie);
    if sent.as_deref().is_some_and(matches) {
        return next.run(req).await;
    }
    if let Some(q) = query.as_deref().filter(|q| matches(q)) {
        let mut resp = axum::response::Redirect::to(req.uri().path()).into_response();
        if let Ok(v) = header::HeaderValue::from_str(&format!(
            "{COOKIE}{q}; Path=/; HttpOnly; SameSite=Strict"
        )) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        return resp;
    }
    tracing::warn!(
        %peer,
        method = %req.method(),
        path = %req.uri().path(),
        "refused: {} bearer token",
        if sent.is_some() || query.is_some() {
            "wrong"
        } else {
            "no"
        }
    );
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "this server needs `Authorization: Bearer <token>`",
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// The cookie that carries the token for the web pages.
const COOKIE: &str = "spanflow_token=";

/// Compares without stopping at the first difference, so timing does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `POST /api/v1/jobs`: validate and start a job definition (YAML body).
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Query(params): Query<SubmitParams>,
    body: String,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let jobs = state.jobs.clone();
    let submitted =
        tokio::task::spawn_blocking(move || jobs.submit(&body, params.instance.as_deref()))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match submitted {
        Ok(h) => {
            let r = h.record();
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({ "id": r.id, "name": r.name })),
            ))
        }
        Err(SubmitError::Invalid(d)) => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            error: format!("invalid job ({} problems)", d.items.len()),
            diagnostics: Some(d.to_json()),
        }),
        Err(SubmitError::Refused(e)) => Err(ApiError::new(StatusCode::BAD_REQUEST, e)),
        Err(SubmitError::Io(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// Query parameters of `POST /api/v1/jobs`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct SubmitParams {
    /// Run the job as this member of its consumer group (`spanflow run --instance`).
    instance: Option<String>,
}

/// `GET /api/v1/jobs`.
pub async fn list(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let jobs: Vec<JobView> = state.jobs.list().iter().map(|h| JobView::of(h)).collect();
    Json(serde_json::json!({ "jobs": jobs }))
}

/// `GET /api/v1/jobs/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let h = state
        .jobs
        .get(&id)
        .ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(JobView::of(&h)))
}

/// `POST /api/v1/jobs/{id}/stop`: stop with a last checkpoint.
pub async fn stop(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    end(&state, &id, JobHandle::stop).await
}

/// `DELETE /api/v1/jobs/{id}`: cancel (stop and drop the state).
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    end(&state, &id, JobHandle::cancel).await
}

/// Asks a running job to end and waits until it has (a stop writes its last
/// checkpoint first); answers with the job as it ended.
async fn end(
    state: &AppState,
    id: &str,
    how: fn(&JobHandle) -> bool,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let h = state.jobs.get(id).ok_or_else(|| ApiError::not_found(id))?;
    if !how(&h) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job `{id}` is {}, not running", h.record().state.as_str()),
        ));
    }
    let waiting = h.clone();
    tokio::task::spawn_blocking(move || waiting.join())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::OK, Json(JobView::of(&h))))
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let format =
        metrics::Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = metrics::render(&state.jobs, format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// `GET /healthz`: the server answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: every job that was running when the server last stopped has been
/// started again.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "resuming jobs\n")
    }
}
