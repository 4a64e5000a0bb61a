//! `--metrics-addr`: ferry's metrics in the Prometheus text format, served
//! by a small HTTP responder of our own (no HTTP server dependency).

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::Result;

/// Histogram buckets, in seconds: from a millisecond to ten minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// A running endpoint: how many scrapes it has answered.
pub(crate) struct Exporter {
    scrapes: watch::Receiver<u64>,
}

/// Installs the Prometheus recorder (before any pipeline exists, so every
/// metric reaches it) and serves `GET /metrics` (any path) on `addr`.
pub(crate) async fn serve(addr: SocketAddr) -> Result<Exporter> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    ferry::metrics::describe();
    let listener = TcpListener::bind(addr).await?;
    eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
    let (tx, scrapes) = watch::channel(0u64);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (handle, tx) = (handle.clone(), tx.clone());
            tokio::spawn(async move {
                if answer(stream, &handle).await.is_ok() {
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
    });
    Ok(Exporter { scrapes })
}

/// Reads one request head (bounded) and answers with the rendered metrics.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let body = handle.render();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

impl Exporter {
    /// Scrapes answered so far.
    pub(crate) fn scrapes(&self) -> u64 {
        *self.scrapes.borrow()
    }

    /// Keeps serving until a scrape after the `seen`-th has been answered,
    /// at most `limit`.
    pub(crate) async fn linger(&mut self, seen: u64, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.scrapes.wait_for(|n| *n > seen)).await;
    }
}
