//! A network partition between hookdock and a server, for tests: [`TcpProxy`] forwards TCP
//! connections to an upstream address until [`TcpProxy::cut`]; from then on every connection
//! stays open but nothing crosses it (no reset, no answer, as when a link or a failed-over host
//! drops packets), and new connections are accepted and left unanswered. Then either
//! [`TcpProxy::heal`] closes those connections and forwards new ones again, or
//! [`TcpProxy::forget`] forwards new ones again and leaves those silent for good: the server
//! dropped them during the partition, and nothing tells the client, which waits for an answer.
//! [`TcpProxy::silenced`] counts the cut connections their clients still hold open.

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

/// The link's state, and how many partitions have begun: a connection forwarded since the
/// last began is cut by the next one only, even if it was opened after `forget`.
type State = (Link, u64);

pub struct TcpProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    /// Connections accepted while cut, held open and unanswered until healed.
    held: Arc<Mutex<Vec<TcpStream>>>,
    /// Forwarded connections the partition cut that their client has not closed.
    silenced: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1` (a port of its own) and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (state, state_rx) = watch::channel((Link::Forward, 0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let silenced = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let accept = tokio::spawn({
            let held = Arc::clone(&held);
            let silenced = Arc::clone(&silenced);
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let (now, cuts) = *state_rx.borrow();
                    if now == Link::Cut {
                        held.lock().unwrap_or_else(|e| e.into_inner()).push(inbound);
                    } else {
                        let link = link(
                            inbound,
                            upstream.clone(),
                            state_rx.clone(),
                            cuts,
                            Arc::clone(&silenced),
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
            silenced,
            accept,
        }
    }

    /// The address to connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Nothing crosses from now on; connections stay open.
    pub fn cut(&self) {
        self.state.send_modify(|(link, cuts)| {
            *link = Link::Cut;
            *cuts += 1;
        });
    }

    /// Closes the connections the partition held and forwards new ones again.
    pub fn heal(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.state.send_modify(|(link, _)| *link = Link::Forward);
    }

    /// Forwards new connections again; those the partition held stay open and silent.
    pub fn forget(&self) {
        self.state.send_modify(|(link, _)| *link = Link::Forgotten);
    }

    /// How many of the connections that were forwarded when the partition began their clients
    /// still hold open (until healed): a client that gives a silent connection up closes it.
    pub fn silenced(&self) -> usize {
        self.silenced.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways until either side closes. Once cut, holds both sockets open and silent
/// (what the client sends is read and dropped) until healed or until the client closes its
/// side, which never happens by itself when forgotten.
async fn link(
    inbound: TcpStream,
    upstream: String,
    mut state: watch::Receiver<State>,
    born: u64,
    silenced: Arc<AtomicUsize>,
) {
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let copy = async {
        tokio::select! {
            _ = tokio::io::copy(&mut in_read, &mut out_write) => {}
            _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
        }
    };
    let was_cut = tokio::select! {
        _ = copy => false,
        _ = state.wait_for(|s| s.1 != born) => true,
    };
    if was_cut {
        silenced.fetch_add(1, Ordering::SeqCst);
        let mut dropped = tokio::io::sink();
        tokio::select! {
            _ = state.wait_for(|s| s.0 == Link::Forward) => {}
            _ = tokio::io::copy(&mut in_read, &mut dropped) => {}
        }
        silenced.fetch_sub(1, Ordering::SeqCst);
    }
}
