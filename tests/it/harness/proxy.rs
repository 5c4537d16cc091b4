//! A TCP proxy in front of RabbitMQ or PostgreSQL that a test can cut and restore, so that
//! one test can lose its broker or its database without disturbing the tests running beside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    /// The local port of each connection made upstream, in order: how the server names the
    /// connections that came through this proxy.
    upstream_ports: Arc<Mutex<Vec<u16>>>,
}

impl Proxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let accepting = Arc::clone(&open);
        let cuts = generation.clone();
        let upstream_ports = Arc::new(Mutex::new(Vec::new()));
        let ports = Arc::clone(&upstream_ports);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let mut cut = cuts.subscribe();
                let ports = Arc::clone(&ports);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    if let Ok(local) = server.local_addr() {
                        ports.lock().expect("ports lock").push(local.port());
                    }
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            open,
            generation,
            upstream_ports,
        }
    }

    /// The local ports of the connections made upstream so far, oldest first.
    pub fn upstream_ports(&self) -> Vec<u16> {
        self.upstream_ports.lock().expect("ports lock").clone()
    }

    /// The broker through this proxy (when it stands in front of 127.0.0.1:5672).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Severs every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
