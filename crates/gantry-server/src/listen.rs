//! The HTTP listener: the router served over HTTP/1.1 with the limits a server reachable from
//! the internet needs, which `axum::serve` does not set.
//!
//! - A connection must send a whole request head within [`Limits::header_timeout`], whether it
//!   is new or an idle keep-alive one; a client sending a byte a second is cut off, not served.
//! - At most [`Limits::max_connections`] connections are open at once; one more is answered
//!   `503` with `Retry-After` and closed at once, so the process never runs out of file
//!   descriptors and `/healthz`, webhooks and the viewer keep answering.
//! - The request timeout stays the router's (30 s, the log follow and raw routes exempt).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// How long connections get, and how many there may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request head (request line and headers) must arrive within this; also how long an
    /// idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// How long shutdown waits for open connections to finish their requests.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: default_max_connections(),
            drain: Duration::from_secs(30),
        }
    }
}

/// Three quarters of the process's file limit (the rest for the database, logs, git and
/// processes), between 16 and 8192.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(1024);
    (soft / 4 * 3).clamp(16, 8192)
}

/// The answer to a connection over the limit.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 42\r\nConnection: close\r\n\r\n\
too many open connections: try again soon\n";

/// Answers a connection over the cap with [`TOO_MANY`] and closes it. What the client sent is
/// read (for a second at most) before closing: closing a socket with unread data resets it, and
/// the reset can destroy the answer before the client reads it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let answer = async {
        stream.write_all(TOO_MANY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// (for at most [`Limits::drain`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before accept: wait a
                    // little rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = limits.max_connections,
                "too many open connections: one refused"
            );
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: http::Request<Incoming>| req.map(Body::new)),
        );
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period: closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    #[test]
    fn the_default_connection_cap_leaves_room_for_files() {
        let cap = default_max_connections();
        assert!((16..=8192).contains(&cap), "{cap}");
    }

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            serve(listener, app, limits, async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        (addr, stop)
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_sends_its_head_slowly_is_cut_off_and_others_are_served() {
        let limits = Limits {
            header_timeout: Duration::from_millis(600),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let dripping = tokio::spawn(async move {
            // A byte every 100 ms: each arrives well within any read timeout, the head never
            // within the header timeout.
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if slow.write_all(&[*b]).await.is_err() {
                    return (slow, true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (slow, false)
        });
        assert!(
            get(addr).await.contains("hello"),
            "others are served meanwhile"
        );
        let (mut slow, cut) = tokio::time::timeout(Duration::from_secs(20), dripping)
            .await
            .expect("the slow client is cut off")
            .unwrap();
        if !cut {
            // Every byte was written before the server closed: it must close now.
            let answer = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut slow))
                .await
                .expect("the server closes the slow connection");
            assert!(!answer.contains("hello"), "{answer}");
        }
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let limits = Limits {
            header_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), until_closed(&mut s))
            .await
            .expect("the idle connection is closed after its request");
        assert!(answer.contains("hello"), "{answer}");
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_refused_with_503_and_the_cap_frees_up() {
        let limits = Limits {
            header_timeout: Duration::from_secs(30),
            max_connections: 3,
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"G").await.unwrap();
            idle.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = get(addr).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("Retry-After: 1"), "{refused}");
        assert!(refused.contains("too many open connections"), "{refused}");
        drop(idle);
        let mut served = String::new();
        for _ in 0..50 {
            served = get(addr).await;
            if served.contains("hello") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            served.contains("hello"),
            "served once connections close: {served}"
        );
    }
}
