//! The load generator: hyper http1 client connections with keep-alive, one per task, on the
//! bench's single-threaded runtime (so it takes at most one core from the server).
//!
//! - Closed loop: each connection sends its next request as soon as the previous is answered.
//! - Open loop: request `i` is due at `start + i / rate`, whatever happened before; a pacing
//!   thread releases requests at their due time to a pool of connections, and latency is
//!   measured from the due time, so a stalled server is charged for every request it delayed
//!   (no coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::baseline::WEBHOOK_PATH;
use crate::payload::PayloadTemplate;
use crate::procfs::Snapshot;
use crate::report::{Latency, Phase, new_histogram};

/// Makes the requests: unique body, signature and delivery id each.
pub struct Deliveries {
    template: Arc<PayloadTemplate>,
    seq: AtomicU64,
    host: String,
    event: String,
    hook_id: String,
    repository_id: Option<String>,
}

impl Deliveries {
    pub fn new(template: Arc<PayloadTemplate>, addr: SocketAddr, event: &str) -> Deliveries {
        let repository_id = template.repository_id.map(|id| id.to_string());
        Deliveries {
            template,
            seq: AtomicU64::new(0),
            host: addr.to_string(),
            event: event.to_owned(),
            hook_id: "424242".into(),
            repository_id,
        }
    }

    /// Requests made so far.
    pub fn sent(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    pub(crate) fn next(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let signed = self.template.signed(seq);
        let delivery = uuid::Uuid::new_v4().to_string();
        let mut req = Request::post(WEBHOOK_PATH)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/bench")
            .header("accept", "*/*")
            .header("x-github-event", &self.event)
            .header("x-github-delivery", delivery)
            .header("x-github-hook-id", &self.hook_id)
            .header("x-hub-signature-256", signed.signature);
        if let Some(id) = &self.repository_id {
            req = req
                .header("x-github-hook-installation-target-type", "repository")
                .header("x-github-hook-installation-target-id", id);
        }
        req.body(Full::new(signed.body))
            .context("building a request")
    }
}

/// Connects with keep-alive; the connection's IO runs as its own task.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `GET path`: the body of a 2xx answer, else `None`.
pub async fn get(addr: SocketAddr, path: &str) -> Option<Bytes> {
    let probe = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let ok = resp.status().is_success();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(ok.then_some(body))
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

/// Whether the server is up: `GET /healthz` answers 200.
pub async fn healthy(addr: SocketAddr) -> bool {
    get(addr, "/healthz").await.is_some()
}

/// Per-task tallies, merged at the end.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            ok: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(&other.hist).ok();
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Sends one request; `Ok(())` only for a 200 whose receipt says `received` and not held.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(), Failure> {
    sender
        .ready()
        .await
        .map_err(|e| Failure::Connection(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::Connection(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::Connection(e.to_string()))?
        .to_bytes();
    let received = contains(&body, b"\"status\":\"received\"") && !contains(&body, b"\"held\"");
    if status.as_u16() == 200 && received {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        Err(Failure::Answer(format!("HTTP {status}: {text}")))
    }
}

enum Failure {
    /// The connection broke: reconnect.
    Connection(String),
    /// The server answered something other than 200 `received`.
    Answer(String),
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends `req`, reconnecting once if the connection broke. Errors only if it cannot reconnect.
async fn send_counted(
    addr: SocketAddr,
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<Result<(), String>> {
    match exchange(sender, req).await {
        Ok(()) => Ok(Ok(())),
        Err(Failure::Answer(e)) => Ok(Err(e)),
        Err(Failure::Connection(e)) => {
            *sender = connect(addr).await.context("reconnecting")?;
            Ok(Err(format!("connection error: {e}")))
        }
    }
}

/// Timing of one phase: `warmup`, then the measured window of `duration`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

/// CPU snapshots at the window's edges, from the orchestrating task.
async fn measure_window(
    window: Window,
    server_pid: u32,
    start: Instant,
    recording: &AtomicBool,
) -> anyhow::Result<(Snapshot, Snapshot, Duration)> {
    tokio::time::sleep_until((start + window.warmup).into()).await;
    let before = Snapshot::take(server_pid)?;
    let t0 = Instant::now();
    recording.store(true, Ordering::SeqCst);
    tokio::time::sleep_until((t0 + window.duration).into()).await;
    recording.store(false, Ordering::SeqCst);
    let after = Snapshot::take(server_pid)?;
    Ok((before, after, t0.elapsed()))
}

fn phase_result(
    kind: &str,
    setting: u64,
    tally: Tally,
    (before, after, elapsed): (Snapshot, Snapshot, Duration),
) -> Phase {
    let secs = elapsed.as_secs_f64();
    let n = tally.ok.max(1) as f64;
    let server_total = after.server.saturating_sub(before.server);
    let server = server_total.as_secs_f64();
    let client = (after.client - before.client).as_secs_f64();
    let machine = (after.machine - before.machine).as_secs_f64();
    Phase {
        kind: kind.into(),
        sent: 0,
        group_commit: None,
        flush: None,
        setting,
        seconds: secs,
        ok: tally.ok,
        errors: tally.errors,
        first_error: tally.first_error,
        req_per_sec: tally.ok as f64 / secs,
        latency: Latency::from_histogram(&tally.hist),
        server_cpu_us_per_req: server * 1e6 / n,
        server_threads_us_per_req: crate::procfs::per_request_by_thread(
            &before.server_threads,
            &after.server_threads,
            server_total,
            tally.ok,
        ),
        server_cores: server / secs,
        client_cpu_us_per_req: client * 1e6 / n,
        other_cores: ((machine - server - client) / secs).max(0.0),
    }
}

pub async fn closed_loop(
    addr: SocketAddr,
    deliveries: Arc<Deliveries>,
    connections: usize,
    window: Window,
    server_pid: u32,
) -> anyhow::Result<Phase> {
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut sender = connect(addr).await?;
        let (recording, stop, deliveries) = (recording.clone(), stop.clone(), deliveries.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while !stop.load(Ordering::Relaxed) {
                let req = deliveries.next()?;
                let sent = Instant::now();
                let result = send_counted(addr, &mut sender, req).await?;
                if recording.load(Ordering::Relaxed) {
                    match result {
                        Ok(()) => {
                            tally.ok += 1;
                            tally
                                .hist
                                .saturating_record(sent.elapsed().as_micros() as u64);
                        }
                        Err(e) => tally.error(e),
                    }
                } else if let Err(e) = result {
                    // Failures outside the window still fail the run.
                    tally.error(e);
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let start = Instant::now();
    let measured = measure_window(window, server_pid, start, &recording).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = Tally::new();
    for task in tasks {
        total.merge(task.await.context("load task panicked")??);
    }
    Ok(phase_result("closed", connections as u64, total, measured?))
}

pub async fn open_loop(
    addr: SocketAddr,
    deliveries: Arc<Deliveries>,
    connections: usize,
    rate: u64,
    window: Window,
    server_pid: u32,
) -> anyhow::Result<Phase> {
    if rate == 0 {
        bail!("--rate must be above 0");
    }
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + window.warmup;
    let window_end = window_start + window.duration;
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || pace(tx, start, window_end, rate))
        .context("starting the pacing thread")?;
    let mut tasks = Vec::with_capacity(connections);
    for mut sender in senders {
        let (rx, deliveries) = (rx.clone(), deliveries.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let Some(due) = rx.lock().await.recv().await else {
                    break;
                };
                let req = deliveries.next()?;
                let result = send_counted(addr, &mut sender, req).await?;
                let in_window = due >= window_start && due < window_end;
                match result {
                    Ok(()) if in_window => {
                        tally.ok += 1;
                        tally
                            .hist
                            .saturating_record(due.elapsed().as_micros() as u64);
                    }
                    Ok(()) => {}
                    Err(e) => tally.error(e),
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let recording = AtomicBool::new(false);
    let measured = measure_window(window, server_pid, start, &recording).await;
    let mut total = Tally::new();
    for task in tasks {
        total.merge(task.await.context("load task panicked")??);
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacing thread panicked"))?;
    let mut phase = phase_result("open", rate, total, measured?);
    // Requests due in the window, whenever they were answered.
    phase.req_per_sec = phase.ok as f64 / window.duration.as_secs_f64();
    Ok(phase)
}

/// Releases request `i` at `start + i / rate` until `end`. A thread of its own with 1 µs timer
/// slack: tokio's timer has millisecond granularity, which would add up to 1 ms to every
/// latency measured from the due time.
fn pace(tx: mpsc::UnboundedSender<Instant>, start: Instant, end: Instant, rate: u64) {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    for i in 0u64.. {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if tx.send(due).is_err() {
            break;
        }
    }
}
