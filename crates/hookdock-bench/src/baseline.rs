//! The two minimal receivers hookdock is compared with, on the same stack (tokio, axum, hyper
//! http1). Both read the whole body, verify `X-Hub-Signature-256` in constant time, parse the
//! JSON, deduplicate by `X-GitHub-Delivery` and answer 200 with a small JSON receipt.
//!
//! - memory: nothing more; the ceiling for a receiver that keeps nothing.
//! - durable: also appends each delivery (headers and raw body) to a log file; one writer thread
//!   takes every pending append, writes them in one `write`, `fdatasync`s once, then lets each
//!   waiting request answer: group commit, the ceiling for a receiver that answers only once the
//!   delivery is on disk.
//!
//! Each runs as its own process (the bench binary re-executed with a hidden subcommand), so its
//! CPU time and memory are measured apart from the load generator.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

/// The durable baseline's thread that writes and flushes the log (its group commit).
pub const LOG_THREAD: &str = "group-commit";

type HmacSha256 = Hmac<Sha256>;

/// Same as hookdock: GitHub does not send more than 25 MB.
const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
/// Same as hookdock's default `ingest.max_batch`.
const MAX_BATCH: usize = 256;
const QUEUE_CAPACITY: usize = 8192;

pub const WEBHOOK_PATH: &str = "/api/v1/webhooks/github";

struct AppState {
    secret: Vec<u8>,
    seen: Mutex<HashSet<String>>,
    next_id: AtomicU64,
    log: Option<mpsc::Sender<Append>>,
}

struct Append {
    record: Vec<u8>,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Serves until killed. `log`: `None` for the in-memory receiver, the log file for the durable one.
pub fn serve(listen: SocketAddr, secret: Vec<u8>, log: Option<&Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let log = match log {
        None => None,
        Some(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log {}", path.display()))?;
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            std::thread::Builder::new()
                .name(LOG_THREAD.into())
                .spawn(move || group_commit(file, rx))
                .context("starting the writer thread")?;
            Some(tx)
        }
    };
    let state = Arc::new(AppState {
        secret,
        seen: Mutex::new(HashSet::new()),
        next_id: AtomicU64::new(1),
        log,
    });
    runtime.block_on(async move {
        let app = Router::new()
            .route(WEBHOOK_PATH, post(receive))
            .route("/healthz", get(|| async { "{\"status\":\"ok\"}" }))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        axum::serve(listener, app).await.context("serving")
    })
}

/// The writer: one `write` and one `fdatasync` per batch of pending appends.
fn group_commit(mut file: File, mut rx: mpsc::Receiver<Append>) {
    let mut batch: Vec<Append> = Vec::with_capacity(MAX_BATCH);
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        buf.clear();
        for a in &batch {
            buf.extend_from_slice(&(a.record.len() as u64).to_le_bytes());
            buf.extend_from_slice(&a.record);
        }
        let result = file
            .write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| e.to_string());
        for a in batch.drain(..) {
            let _ = a.reply.send(result.clone());
        }
    }
}

/// The routing fields, parsed in one pass that also validates the whole document.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    action: Option<&'a str>,
    #[serde(borrow, default)]
    repository: Option<Repo<'a>>,
    #[serde(borrow, default)]
    sender: Option<Login<'a>>,
    #[serde(default)]
    number: Option<i64>,
}

#[derive(Deserialize)]
struct Repo<'a> {
    #[serde(default)]
    id: Option<i64>,
    #[serde(borrow, default)]
    full_name: Option<&'a str>,
}

#[derive(Deserialize)]
struct Login<'a> {
    #[serde(borrow, default)]
    login: Option<&'a str>,
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        format!("{{\"error\":\"{error}\"}}"),
    )
        .into_response()
}

fn receipt(status: &str, event_id: u64, delivery: &str, event: &str) -> Response {
    let body = serde_json::json!({
        "status": status,
        "event_id": event_id,
        "delivery_id": delivery,
        "event": event,
    });
    axum::Json(body).into_response()
}

async fn receive(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !text("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
        );
    }
    let (Some(event), Some(delivery)) = (text("x-github-event"), text("x-github-delivery")) else {
        return refuse(StatusCode::BAD_REQUEST, "missing_header");
    };
    let Some(signature) = text("x-hub-signature-256") else {
        return refuse(StatusCode::UNAUTHORIZED, "missing_signature");
    };
    let mut digest = [0u8; 32];
    let well_formed = signature
        .strip_prefix("sha256=")
        .is_some_and(|h| hex::decode_to_slice(h, &mut digest).is_ok());
    if !well_formed {
        return refuse(StatusCode::FORBIDDEN, "invalid_signature");
    }
    let Ok(mut mac) = HmacSha256::new_from_slice(&state.secret) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    };
    mac.update(&body);
    if mac.verify_slice(&digest).is_err() {
        return refuse(StatusCode::FORBIDDEN, "invalid_signature");
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_json");
    };
    let label = match envelope.action {
        Some(action) => format!("{event}.{action}"),
        None => event.to_owned(),
    };
    let fresh = match state.seen.lock() {
        Ok(mut seen) => seen.insert(delivery.to_owned()),
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    if !fresh {
        return receipt("duplicate_skipped", 0, delivery, &label);
    }
    let event_id = state.next_id.fetch_add(1, Ordering::Relaxed);
    if let Some(log) = &state.log {
        let received_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let repo = envelope.repository.as_ref();
        let head = serde_json::json!({
            "event_id": event_id,
            "delivery_id": delivery,
            "event": event,
            "action": envelope.action,
            "repository": repo.and_then(|r| r.full_name),
            "repository_id": repo.and_then(|r| r.id),
            "number": envelope.number,
            "sender": envelope.sender.as_ref().and_then(|s| s.login),
            "signature_256": signature,
            "received_at": received_at,
        });
        let mut record = head.to_string().into_bytes();
        record.push(b'\n');
        record.extend_from_slice(&body);
        let (reply, committed) = oneshot::channel();
        let stored = log.send(Append { record, reply }).await.is_ok()
            && matches!(committed.await, Ok(Ok(())));
        if !stored {
            // Not accepted, so a redelivery must not be taken for a duplicate.
            if let Ok(mut seen) = state.seen.lock() {
                seen.remove(delivery);
            }
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
        }
    }
    receipt("received", event_id, delivery, &label)
}
