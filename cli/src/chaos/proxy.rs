//! A TCP proxy in front of the database, so the chaos run can make it unreachable: during
//! an outage every open connection is cut and new ones are refused (accepted and closed
//! at once), exactly what processes see when a database host drops off the network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct DbProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl DbProxy {
    /// Listens on a free local port and forwards to `upstream` until `stop`.
    pub(crate) async fn start(upstream: String, stop: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?,
            down: Arc::new(AtomicBool::new(false)),
            connections: Arc::new(Mutex::new(JoinSet::new())),
        };
        let this = proxy.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                if this.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let mut connections = this.connections.lock().await;
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            this.connections.lock().await.abort_all();
        });
        Ok(proxy)
    }

    /// Cuts every connection and refuses new ones until [`DbProxy::restore`].
    pub async fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}
