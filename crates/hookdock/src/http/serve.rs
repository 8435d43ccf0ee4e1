//! Serving: accepts connections and serves the router on each over HTTP/1.1, with a limit on
//! how long a connection may go without bringing a complete request head (a keep-alive
//! connection left idle, or a sender stalled in its headers), a limit on how many connections
//! are open at once, and a graceful stop that lets requests in flight finish.
//!
//! `axum::serve` offers no such limit: with it, one client that sent part of its headers and
//! stopped held its connection, and its task, for good.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How often reaching `max_connections` is logged, at most.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `stop` completes, then stops accepting and gives the
/// connections' requests in flight `grace` to be answered (idle connections close at once);
/// connections still busy after it are closed, their requests unanswered. At most
/// `max_connections` are open at once: at the limit no more are accepted until one closes.
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    idle_timeout: Duration,
    max_connections: usize,
    grace: Duration,
    stop: impl Future<Output = ()>,
) {
    if let Some(warning) = open_files_warning(max_connections, open_files_limit()) {
        tracing::warn!("{warning}");
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut warning = Throttle::default();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!("hookdock_http_connection_limit_reached_total").increment(1);
                // Once a minute at most: connections coming and going at the limit reach it
                // again with every one.
                if warning.due(Instant::now(), LIMIT_WARNING_EVERY) {
                    tracing::warn!(
                        max_connections,
                        "the limit of open connections is reached (max_connections); new ones \
                         wait in the kernel's queue until one closes"
                    );
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut stop => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            async move { Ok::<_, Infallible>(response.await.unwrap_or_else(|e| match e {})) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let open = OpenConnection::new(slot);
        connections.spawn(async move {
            let _open = open;
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        while connections.try_join_next().is_some() {}
        tracing::warn!(
            grace_secs = grace.as_secs(),
            busy = connections.len(),
            "connections still busy after the shutdown grace period are closed, their requests unanswered"
        );
    }
    connections.shutdown().await;
}

/// A connection's place among the `max_connections`, and its count in
/// `hookdock_http_connections`, both given back when its task ends (or is aborted).
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit) -> OpenConnection {
        metrics::gauge!("hookdock_http_connections").increment(1.0);
        OpenConnection { _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("hookdock_http_connections").decrement(1.0);
    }
}

/// Whether something may be logged again: the first time, then at most once per interval.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn due(&mut self, now: Instant, every: Duration) -> bool {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Open files the process needs beside its client connections: the database's files and
/// connections, GitHub calls, logs, the runtime's own.
const FILES_BESIDE_CONNECTIONS: u64 = 128;

/// The process's soft limit on open files (`ulimit -n`), where the system says
/// (`/proc/self/limits`); `None` when unknown or unlimited.
fn open_files_limit() -> Option<u64> {
    soft_open_files(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn soft_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What to warn of when `max_connections` leaves fewer than [`FILES_BESIDE_CONNECTIONS`] of
/// the process's `open_files` for everything else: at the limit, the database and GitHub calls
/// would fail for want of a file descriptor.
fn open_files_warning(max_connections: usize, open_files: Option<u64>) -> Option<String> {
    let open_files = open_files?;
    let connections = u64::try_from(max_connections).unwrap_or(u64::MAX);
    let spare = open_files.saturating_sub(connections);
    (spare < FILES_BESIDE_CONNECTIONS).then(|| {
        format!(
            "max_connections ({max_connections}) leaves {spare} of the process's {open_files} open \
             files (ulimit -n) for the database and GitHub calls, which need about \
             {FILES_BESIDE_CONNECTIONS}: lower max_connections or raise the limit"
        )
    })
}

/// Errors of one connection (the peer gave up before it was accepted) are passed over; others
/// (out of file descriptors) are logged and accepting pauses a moment, as `axum::serve` does.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reaching the limit is logged the first time, then not again until the interval has
    /// passed since the last line, however often it is reached meanwhile.
    #[test]
    fn the_limit_warning_is_logged_at_most_once_an_interval() {
        let mut warning = Throttle::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert!(warning.due(at(0), LIMIT_WARNING_EVERY));
        assert!(!warning.due(at(1), LIMIT_WARNING_EVERY));
        assert!(!warning.due(at(59), LIMIT_WARNING_EVERY));
        assert!(warning.due(at(60), LIMIT_WARNING_EVERY));
        assert!(!warning.due(at(119), LIMIT_WARNING_EVERY));
        assert!(warning.due(at(125), LIMIT_WARNING_EVERY));
    }

    /// The soft limit is read from the kernel's table; "unlimited" is no limit.
    #[test]
    fn the_open_files_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96367                96367                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(soft_open_files(limits), Some(1024));
        assert_eq!(soft_open_files(&limits.replace("1024 ", "unlimited")), None);
        assert_eq!(soft_open_files("Max processes 10 10 processes"), None);
    }

    /// A limit that leaves too few files beside the connections is warned of, naming both
    /// numbers and what to change; enough room, or an unknown limit, is not.
    #[test]
    fn max_connections_near_the_open_files_limit_is_warned_of() {
        let warning = open_files_warning(1000, Some(1024)).expect("a warning");
        for says in [
            "max_connections (1000)",
            "leaves 24",
            "1024 open files",
            "ulimit -n",
        ] {
            assert!(warning.contains(says), "{warning}");
        }
        assert!(open_files_warning(2000, Some(1024)).is_some_and(|w| w.contains("leaves 0")));
        assert_eq!(open_files_warning(512, Some(1024)), None);
        assert_eq!(open_files_warning(512, None), None);
    }

    /// `hookdock_http_connections` counts each open connection once and forgets it when it
    /// ends, its place among `max_connections` given back with it.
    #[test]
    fn an_open_connection_is_counted_until_it_ends() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = || {
            handle.render().lines().find_map(|l| {
                l.strip_prefix("hookdock_http_connections ")?
                    .parse::<f64>()
                    .ok()
            })
        };
        let slots = Arc::new(Semaphore::new(2));
        metrics::with_local_recorder(&recorder, || {
            let take = || {
                Arc::clone(&slots)
                    .try_acquire_owned()
                    .expect("a free place")
            };
            let one = OpenConnection::new(take());
            let two = OpenConnection::new(take());
            assert_eq!(gauge(), Some(2.0));
            assert!(
                Arc::clone(&slots).try_acquire_owned().is_err(),
                "both places taken"
            );
            drop(one);
            assert_eq!(gauge(), Some(1.0));
            assert_eq!(slots.available_permits(), 1);
            drop(two);
            assert_eq!(gauge(), Some(0.0));
            assert_eq!(slots.available_permits(), 2);
        });
    }
}
