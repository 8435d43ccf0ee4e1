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
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut warned: Option<Instant> = None;
    loop {
        while connections.try_join_next().is_some() {}
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!("hookdock_http_connection_limit_reached_total").increment(1);
                // Once a minute at most: connections coming and going at the limit reach it
                // again with every one.
                if warned.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_EVERY) {
                    warned = Some(Instant::now());
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
