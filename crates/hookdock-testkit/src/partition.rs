//! A network partition between hookdock and a server, for tests: [`TcpProxy`] forwards TCP
//! connections to an upstream address until [`TcpProxy::cut`]; from then on every connection
//! stays open but nothing crosses it (no reset, no answer, as when a link or a failed-over host
//! drops packets), and new connections are accepted and left unanswered. [`TcpProxy::heal`]
//! closes those connections and forwards new ones again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct TcpProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections accepted while cut, held open and unanswered until healed.
    held: Arc<Mutex<Vec<TcpStream>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1` (a port of its own) and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (cut, cut_rx) = watch::channel(false);
        let held = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let accept = tokio::spawn({
            let held = Arc::clone(&held);
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *cut_rx.borrow() {
                        held.lock().unwrap_or_else(|e| e.into_inner()).push(inbound);
                    } else {
                        tokio::spawn(link(inbound, upstream.clone(), cut_rx.clone()));
                    }
                }
            }
        });
        TcpProxy {
            addr,
            cut,
            held,
            accept,
        }
    }

    /// The address to connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Nothing crosses from now on; connections stay open.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Closes the connections the partition held and forwards new ones again.
    pub fn heal(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways until either side closes; once cut, holds both sockets open and silent
/// until healed, then closes them.
async fn link(inbound: TcpStream, upstream: String, mut cut: watch::Receiver<bool>) {
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
        _ = cut.wait_for(|cut| *cut) => true,
    };
    if was_cut {
        let _ = cut.wait_for(|cut| !*cut).await;
    }
}
