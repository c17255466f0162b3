//! The HTTP server of every process (/health, /ready, /metrics) against
//! clients that do not finish their requests: a header read timeout closes
//! half-sent requests, and a connection limit bounds how many sockets one
//! client can hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use archiver_operator::metrics::Metrics;
use archiver_operator::runtime::http::{ConnectionLimits, HttpState, router, serve_with_limits};
use archiver_operator::runtime::leader::Leadership;

const LIMITS: ConnectionLimits = ConnectionLimits {
    header_read_timeout: Duration::from_secs(1),
    max_connections: 4,
};

/// Serves the endpoints (no database) on a free port until the test ends.
async fn start(limits: ConnectionLimits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(HttpState {
        leadership: Leadership::always(),
        db: None,
        metrics: Arc::new(Metrics::new()),
        worker: None,
    });
    tokio::spawn(serve_with_limits(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    addr
}

/// Reads until the server closes the connection (or it is reset), at most
/// `bound`: what was read and when it ended, or None if it stayed open.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<(Vec<u8>, Instant)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((received, Instant::now())),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

async fn health(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers /health and closes");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_read_timeout() {
    let addr = start(LIMITS).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    // The request line and one header, never the blank line that ends them.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let (_, closed_at) = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("a half-sent request is kept open (no header read timeout)");
    let held = closed_at - sent;
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(3),
        "closed after {held:?}, expected about the 1 s header read timeout"
    );
    // A socket that sends nothing at all is closed the same way.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection is kept open"
    );
    assert!(health(addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_health_answers_afterwards() {
    let addr = start(ConnectionLimits {
        header_read_timeout: Duration::from_secs(2),
        ..LIMITS
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..LIMITS.max_connections {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    // Let the server accept and start serving all of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut excess = TcpStream::connect(addr).await.unwrap();
    let (received, _) = read_until_closed(&mut excess, Duration::from_millis(1000))
        .await
        .expect("a connection beyond the limit is kept open");
    assert!(
        received.is_empty(),
        "a refused connection gets no answer: {:?}",
        String::from_utf8_lossy(&received)
    );
    // The held connections are closed by the server's timeout, without the
    // client's help, and the slots serve again.
    for stream in &mut held {
        assert!(
            read_until_closed(stream, Duration::from_secs(5))
                .await
                .is_some(),
            "a held connection stayed open past the header read timeout"
        );
    }
    let answer = health(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
}
