//! Cache invalidation over `https://` against a real TLS server: a
//! throw-away CA and server certificate made with the `openssl` command, the
//! CA trusted through `SSL_CERT_FILE` the way an operator points the
//! operator at a private CA bundle. Its own test binary, because that
//! variable is process-wide.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use archiver_operator::erasure::Scope;
use archiver_operator::erasure::invalidate::{InvalidationError, invalidate_all};

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a certificate for `localhost` only, signed by it.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=archiver test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=CA:FALSE",
            "-keyout",
            "server.key",
            "-out",
            "server.pem",
        ],
    );
}

/// Serves HTTPS on 127.0.0.1: answers every request `204 No Content` and
/// sends each request's body down the channel.
async fn tls_server(dir: &Path) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (bodies, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let bodies = bodies.clone();
            tokio::spawn(async move {
                // A failed handshake (an untrusting client) just ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !complete(&request) {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let body = text
                    .split("\r\n\r\n")
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let _ = bodies.send(body);
                let _ = tls
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, received)
}

/// Whether `request` holds the headers and the whole body.
fn complete(request: &[u8]) -> bool {
    let text = String::from_utf8_lossy(request);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    body.len() >= length
}

#[tokio::test]
async fn an_https_cache_url_is_called_over_verified_tls() {
    let dir = std::env::temp_dir().join(format!("archiver-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    // SAFETY: the only test of this binary, set before any client exists.
    unsafe { std::env::set_var("SSL_CERT_FILE", dir.join("ca.pem")) };
    let (port, mut bodies) = tls_server(&dir).await;
    let scope = Scope {
        tenant: Uuid::from_u128(7),
        server: Some("server-0".into()),
    };

    let url = format!("https://localhost:{port}/api/admin/cache-invalidate");
    let called = invalidate_all(std::slice::from_ref(&url), &scope, Duration::from_secs(5))
        .await
        .expect("the TLS call succeeds");
    assert_eq!(called.len(), 1);
    assert_eq!(called[0].status, 204);
    let body: serde_json::Value = serde_json::from_str(&bodies.recv().await.unwrap()).unwrap();
    assert_eq!(body["serverSlug"], "server-0");
    assert_eq!(body["tenantId"], Uuid::from_u128(7).to_string());

    // The certificate names localhost only: by IP address the name does not
    // match, and the erasure must fail rather than talk to an unverified peer.
    let by_ip = format!("https://127.0.0.1:{port}/api/admin/cache-invalidate");
    let error = invalidate_all(&[by_ip], &scope, Duration::from_secs(5))
        .await
        .expect_err("an unverified peer is refused");
    match error {
        InvalidationError::Request { reason, .. } => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
