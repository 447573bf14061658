//! A TCP proxy in front of a server (the git server, the API server) that a test can stop and
//! start again on the same port: "the server went away" with connections refused, as a real
//! outage looks; or freeze: open connections fall silent and new ones are accepted and never
//! answered, as a network partition looks.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
    frozen: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Proxy {
            addr,
            upstream,
            task: None,
            frozen: watch::Sender::new(false),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        let frozen = self.frozen.subscribe();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut frozen = frozen.clone();
                conns.spawn(async move {
                    let already = *frozen.borrow();
                    if already {
                        // Accepted, never answered: the sockets stay open until the test ends.
                        std::future::pending::<()>().await;
                    }
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let silent = async {
                        let _ = frozen.wait_for(|f| *f).await;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = silent => std::future::pending::<()>().await,
                    }
                });
            }
        }));
    }

    /// Closes the listener and every open connection: new connections are refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Stops passing bytes on every connection, open or new, and keeps them all open: requests
    /// in flight and new ones wait for an answer that never comes.
    #[allow(dead_code)]
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let listener = rebind(self.addr).await;
        self.serve(listener);
    }
}

/// Binds `addr` again once the aborted task has let go of it (aborting is not immediate).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("binding {addr} again: {e}"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
