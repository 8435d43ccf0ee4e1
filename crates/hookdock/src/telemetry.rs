//! Logging and metrics set-up. Tracing goes to stderr (text or JSON); metrics are kept by the
//! Prometheus recorder, installed once per process and rendered by `/metrics`, with the queue's
//! gauges read from the store when they are scraped.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::store::{QueueState, Store};

/// Installs the global tracing subscriber. Call once, from the binary. The filter was checked
/// when the settings were loaded. Colours only when stderr is a terminal.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (tests); keep the first.
    drop(result);
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "hookdock_webhook_deliveries_total",
        "Deliveries answered 2xx, by outcome (received, duplicate, ignored, unknown_event, replay_suspected)"
    );
    metrics::describe_counter!(
        "hookdock_webhook_rejected_total",
        "Deliveries refused, by reason (missing_signature, invalid_signature, invalid_json, ...)"
    );
    metrics::describe_counter!("hookdock_jobs_total", "Job attempts by handler and outcome");
    metrics::describe_histogram!("hookdock_job_seconds", "Handler run time");
    metrics::describe_histogram!("hookdock_store_batch_size", "Operations per group commit");
    metrics::describe_histogram!("hookdock_store_batch_seconds", "Time per group commit");
    metrics::describe_counter!(
        "hookdock_store_write_errors_total",
        "Group-commit transactions the database refused (a full disk, a lost connection)"
    );
    metrics::describe_counter!(
        "hookdock_retention_purged_total",
        "Events deleted by retention"
    );
    metrics::describe_gauge!(
        "hookdock_http_connections",
        "Client connections open now (at most max_connections)"
    );
    metrics::describe_counter!(
        "hookdock_http_connection_limit_reached_total",
        "Times all max_connections places were taken (new connections then wait to be accepted)"
    );
}

/// The queue's gauges (`hookdock_queue_jobs{status}`, `hookdock_events_replay_suspected`),
/// read from the store when `/metrics` is scraped: at most once a second however often, and
/// given up after two seconds. When the store cannot be read they are left out (no stale
/// values; `/readyz` says what is wrong) rather than shown as they last were. They describe this
/// instance's database, so they are rendered beside the process-wide recorder's text rather
/// than kept in it; every instance on one database reports the same values.
pub struct QueueGauges {
    store: Store,
    last: tokio::sync::Mutex<Option<(Instant, Option<QueueState>)>>,
}

impl QueueGauges {
    const MIN_INTERVAL: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(2);

    pub fn new(store: Store) -> QueueGauges {
        QueueGauges {
            store,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The gauges in Prometheus' text format (nothing when the store could not be read).
    pub async fn render(&self) -> String {
        let mut last = self.last.lock().await;
        let state = match &*last {
            Some((at, state)) if at.elapsed() < Self::MIN_INTERVAL => *state,
            _ => {
                let state =
                    match tokio::time::timeout(Self::TIMEOUT, self.store.queue_state()).await {
                        Ok(Ok(state)) => Some(state),
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "reading the queue's state for /metrics failed");
                            None
                        }
                        Err(_) => {
                            tracing::warn!("reading the queue's state for /metrics took over 2 s");
                            None
                        }
                    };
                *last = Some((Instant::now(), state));
                state
            }
        };
        state.map(queue_text).unwrap_or_default()
    }
}

fn queue_text(state: QueueState) -> String {
    let mut text = String::from(
        "# HELP hookdock_queue_jobs Jobs in the queue by status (failed: waiting for a retry)\n\
         # TYPE hookdock_queue_jobs gauge\n",
    );
    for (status, count) in [
        ("pending", state.pending),
        ("processing", state.processing),
        ("failed", state.failed),
        ("dead", state.dead),
    ] {
        text.push_str(&format!(
            "hookdock_queue_jobs{{status=\"{status}\"}} {count}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP hookdock_events_replay_suspected Events held as suspected replays, to be released or left\n\
         # TYPE hookdock_events_replay_suspected gauge\n\
         hookdock_events_replay_suspected {}\n",
        state.replay_suspected
    ));
    text
}
