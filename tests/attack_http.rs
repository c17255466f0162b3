//! Attacks on the HTTP server of every process (/health, /ready, /metrics):
//! connections kept idle after a request, a slow trickle of header bytes,
//! huge headers, pipelined requests. However the sockets are used, the
//! limit of connections is never held for longer than the header read
//! timeout, and /health answers afterwards.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use archiver_operator::metrics::Metrics;
use archiver_operator::runtime::http::{ConnectionLimits, HttpState, router, serve_with_limits};
use archiver_operator::runtime::leader::Leadership;

const LIMITS: ConnectionLimits = ConnectionLimits {
    header_read_timeout: Duration::from_secs(1),
    max_connections: 4,
};

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

/// Reads until the server closes the connection (or resets it), at most
/// `bound`: what was read, or None if it stayed open.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Reads until `count` responses to /health arrived (each body is one JSON object, ending in "}").
async fn read_responses(stream: &mut TcpStream, count: usize) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while String::from_utf8_lossy(&received)
        .matches("HTTP/1.1 200")
        .count()
        < count
        || !received.ends_with(b"}")
    {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buffer[..n]),
            other => panic!(
                "fewer than {count} answers ({other:?}): {}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

async fn health(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers /health and closes");
    String::from_utf8_lossy(&response).into_owned()
}

/// Every slot taken by a client that asked once, got its answer, and then
/// keeps the connection open without a word (keep-alive): the slots come
/// back within the header read timeout.
#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_the_limit() {
    let addr = start(LIMITS).await;
    let mut held = Vec::new();
    for _ in 0..LIMITS.max_connections {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        read_responses(&mut stream, 1).await;
        held.push(stream);
    }
    for stream in &mut held {
        assert!(
            read_until_closed(stream, Duration::from_secs(5))
                .await
                .is_some(),
            "an idle keep-alive connection stayed open past the header read timeout"
        );
    }
    let answer = health(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A slowloris that keeps sending one header byte at a time never finishes
/// its headers: the timeout is for the whole header, not between bytes.
#[tokio::test]
async fn a_trickle_of_header_bytes_is_closed_at_the_timeout() {
    let addr = start(LIMITS).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickling client kept its connection for 4 s");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Headers far beyond any real request: refused, the process stays up.
#[tokio::test]
async fn huge_headers_are_refused_and_the_server_stays_up() {
    let addr = start(LIMITS).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = b"GET /health HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..2000 {
        request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    // The server may close before everything is written.
    let _ = stream.write_all(&request).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server closes a connection with 2 MB of headers");
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("200 OK"), "{answer}");
    let answer = health(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Many requests sent at once on one connection are all answered, in
/// order, and the connection is then closed at the client's request.
#[tokio::test]
async fn pipelined_requests_are_all_answered() {
    let addr = start(LIMITS).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut requests = Vec::new();
    for _ in 0..99 {
        requests.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    }
    requests
        .extend_from_slice(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(&requests).await.unwrap();
    let answers = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("closed after the last request");
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 100, "{answers}");
}
