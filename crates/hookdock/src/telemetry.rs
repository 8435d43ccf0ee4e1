//! Logging and metrics set-up. Tracing goes to stderr (text or JSON); metrics are kept by the
//! Prometheus recorder, installed once per process and rendered by `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

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
        "hookdock_retention_purged_total",
        "Events deleted by retention"
    );
}
