//! Opening Redis clients for the drain, the erasure and the drill, from
//! `redis://` or `rediss://` (TLS) URLs.
//!
//! TLS is rustls and always verifies the server's certificate and name
//! against the system's CA certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR`
//! point it at a private CA bundle), read once per process, as for the
//! https:// cache URLs of an erasure. A `#insecure` URL (no verification)
//! is refused by the Redis client.

use std::sync::OnceLock;

use base64::Engine as _;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisResult, TlsCertificates};

/// A client for `url`; nothing is connected yet.
pub(crate) fn open(url: &str) -> RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        redis::Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(system_roots_pem().to_vec()),
            },
        )
    } else {
        redis::Client::open(info)
    }
}

/// The system's CA certificates as one PEM bundle, the form the Redis
/// client takes them in. Without any, every TLS connection fails
/// verification, which is the safe outcome.
fn system_roots_pem() -> &'static [u8] {
    static PEM: OnceLock<Vec<u8>> = OnceLock::new();
    PEM.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the system CA certificates");
        }
        tracing::debug!(
            certificates = found.certs.len(),
            "CA certificates for rediss:// URLs"
        );
        let mut pem = String::new();
        for cert in &found.certs {
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            for line in encoded.as_bytes().chunks(64) {
                // Base64 output is ASCII.
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        pem.into_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_urls_open_as_such() {
        let plain = open("redis://127.0.0.1:6379/").expect("redis:// opens");
        assert!(matches!(
            plain.get_connection_info().addr(),
            ConnectionAddr::Tcp(..)
        ));
        let tls = open("rediss://redis.example:6380/").expect("rediss:// opens");
        assert!(matches!(
            tls.get_connection_info().addr(),
            ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
    }
}
