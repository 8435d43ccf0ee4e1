//! A network partition between hookdock and a server, for tests: [`TcpProxy`] forwards TCP
//! connections to an upstream address until [`TcpProxy::cut`]; from then on every connection
//! stays open but nothing crosses it (no reset, no answer, as when a link or a failed-over host
//! drops packets), and new connections are accepted and left unanswered. Then either
//! [`TcpProxy::heal`] closes those connections and forwards new ones again, or
//! [`TcpProxy::forget`] forwards new ones again and leaves those silent for good: the server
//! dropped them during the partition, and nothing tells the client, which waits for an answer.
//! [`TcpProxy::silenced`] counts the cut connections their clients still hold open, and
//! [`TcpProxy::accepted`] every connection made through the proxy.
//! [`TcpProxy::reset`] is the other way a connection ends under a client: every forwarded
//! connection is reset at once (a server restarted, a failover), and new ones are forwarded.
//!
//! What the proxy does to each connection (accepted, linked upstream, reset, cut, closed) is
//! traced at debug level (target `hookdock_testkit::partition`, each line naming the proxy's
//! port and the client's), so that a failing test can show it beside the client's own log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Forward,
    Cut,
    Forgotten,
}

/// The link's state, and how many partitions and resets have begun: a connection forwarded
/// since the last began is cut (or reset) by the next one only, even if it was opened after
/// `forget`.
#[derive(Clone, Copy)]
struct State {
    link: Link,
    cuts: u64,
    resets: u64,
}

pub struct TcpProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    /// Connections accepted while cut, held open and unanswered until healed.
    held: Arc<Mutex<Vec<TcpStream>>>,
    /// Forwarded connections not closed yet, by how many partitions had begun when each was
    /// accepted: those from before the latest are the ones it cut.
    live: Live,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1` (a port of its own) and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (state, state_rx) = watch::channel(State {
            link: Link::Forward,
            cuts: 0,
            resets: 0,
        });
        let held = Arc::new(Mutex::new(Vec::new()));
        let live = Live::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let accept = tokio::spawn({
            let held = Arc::clone(&held);
            let live = live.clone();
            let accepted = Arc::clone(&accepted);
            async move {
                while let Ok((inbound, peer)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let now = *state_rx.borrow();
                    tracing::debug!(
                        proxy = addr.port(),
                        client = peer.port(),
                        resets = now.resets,
                        cuts = now.cuts,
                        "accepted"
                    );
                    if now.link == Link::Cut {
                        held.lock().unwrap_or_else(|e| e.into_inner()).push(inbound);
                    } else {
                        let link = link(
                            addr.port(),
                            peer.port(),
                            inbound,
                            upstream.clone(),
                            state_rx.clone(),
                            now,
                            live.open(now.cuts),
                        );
                        tokio::spawn(link);
                    }
                }
            }
        });
        TcpProxy {
            addr,
            state,
            held,
            live,
            accepted,
            accept,
        }
    }

    /// The address to connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Nothing crosses from now on; connections stay open.
    pub fn cut(&self) {
        tracing::debug!(
            proxy = self.addr.port(),
            "cutting every connection forwarded so far"
        );
        self.state.send_modify(|s| {
            s.link = Link::Cut;
            s.cuts += 1;
        });
    }

    /// Closes the connections the partition held and forwards new ones again.
    pub fn heal(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.state.send_modify(|s| s.link = Link::Forward);
    }

    /// Forwards new connections again; those the partition held stay open and silent.
    pub fn forget(&self) {
        self.state.send_modify(|s| s.link = Link::Forgotten);
    }

    /// Resets every connection forwarded now (both sides see a TCP reset), as a restarted
    /// server or a failover does; new connections are forwarded.
    pub fn reset(&self) {
        tracing::debug!(
            proxy = self.addr.port(),
            "resetting every connection forwarded so far"
        );
        self.state.send_modify(|s| s.resets += 1);
    }

    /// How many of the connections that were forwarded when the partition began their clients
    /// still hold open (until healed): a client that gives a silent connection up closes it.
    /// Counted from the moment the partition begins (not as each connection's task notices it).
    pub fn silenced(&self) -> usize {
        self.live.before(self.state.borrow().cuts)
    }

    /// How many connections the proxy has accepted so far (forwarded, or held by a partition).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways until either side closes. Once cut, holds both sockets open and silent
/// (what the client sends is read and dropped) until healed or until the client closes its
/// side, which never happens by itself when forgotten. Once reset, closes both at once with a
/// TCP reset.
async fn link(
    proxy: u16,
    client: u16,
    inbound: TcpStream,
    upstream: String,
    mut state: watch::Receiver<State>,
    born: State,
    _open: Open,
) {
    let outbound = match TcpStream::connect(&upstream).await {
        Ok(outbound) => outbound,
        Err(error) => {
            tracing::debug!(proxy, client, %error, "no connection upstream; closed");
            return;
        }
    };
    let upstream_port = outbound.local_addr().map_or(0, |a| a.port());
    tracing::debug!(proxy, client, upstream_port, "linked");
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let copy = async {
        tokio::select! {
            _ = tokio::io::copy(&mut in_read, &mut out_write) => {}
            _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
        }
    };
    // The state first: once a cut or a reset has begun, nothing more crosses, not even what
    // was already waiting on either side when this task next runs (polled in random order,
    // the copy could still forward it: say the server's answer to a query sent just before).
    let ended = tokio::select! {
        biased;
        ended = state.wait_for(|s| s.cuts != born.cuts || s.resets != born.resets) => ended,
        _ = copy => {
            tracing::debug!(proxy, client, "closed by one side");
            return;
        }
    };
    if ended.is_ok_and(|s| s.resets != born.resets) {
        tracing::debug!(proxy, client, "reset");
        // Closed with a zero linger time: a reset instead of an orderly close.
        for (read, write) in [(in_read, in_write), (out_read, out_write)] {
            if let Ok(stream) = read.reunite(write) {
                let _ = stream.set_zero_linger();
            }
        }
        return;
    }
    tracing::debug!(proxy, client, "cut off");
    let mut dropped = tokio::io::sink();
    tokio::select! {
        _ = state.wait_for(|s| s.link == Link::Forward) => {}
        _ = tokio::io::copy(&mut in_read, &mut dropped) => {}
    }
}

/// The forwarded connections not closed yet, by how many partitions had begun when each was
/// accepted. Counted when accepted and when closed, so that [`TcpProxy::silenced`] is right as
/// soon as a partition begins, not only once every connection's task has noticed it.
#[derive(Clone, Default)]
struct Live(Arc<Mutex<BTreeMap<u64, usize>>>);

impl Live {
    fn open(&self, cuts: u64) -> Open {
        *self.lock().entry(cuts).or_default() += 1;
        Open {
            live: self.clone(),
            cuts,
        }
    }

    /// Those accepted before `cuts` partitions had begun.
    fn before(&self, cuts: u64) -> usize {
        self.lock().range(..cuts).map(|(_, n)| n).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One forwarded connection in [`Live`], until dropped with its task.
struct Open {
    live: Live,
    cuts: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(n) = self.live.lock().get_mut(&self.cuts) {
            *n = n.saturating_sub(1);
        }
    }
}
