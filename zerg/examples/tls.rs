//! HTTPS on zerg: rustls (ring provider) over `ConnectionStream` via tokio-rustls, hyper serving
//! HTTP/2 or HTTP/1.1 as negotiated by ALPN, answering every request with "Hello, World!".
//!
//! ```text
//! cargo run --release --features tokio,hyper --example tls         # https://0.0.0.0:8080
//! curl -k https://127.0.0.1:8080/                                  # HTTP/2 (ALPN h2)
//! curl -k --http1.1 https://127.0.0.1:8080/
//! h2load -c16 -m16 -n100000 https://127.0.0.1:8080/
//! wrk -c64 -d10s https://127.0.0.1:8080/
//! cargo run --release --features tokio,hyper --example tls -- --mode runtime --reactors 2
//! cargo run --release --features tokio,hyper --example tls -- --cert cert.pem --key key.pem
//! ```
//!
//! Certificate: `--cert FILE` (PEM, the chain, leaf first) with `--key FILE` (PEM, PKCS#8,
//! PKCS#1 or SEC1), or else a self-signed certificate for `localhost` and `127.0.0.1` generated
//! at start-up (clients must skip verification, e.g. `curl -k`).
//!
//! Both handler modes serve the same: TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`.
//! - `--mode reactor` (the default): handlers on the reactor threads, no tokio runtime there.
//!   The handshake timeout runs on the reactor's timers (`zerg_uring::time::timeout`); hyper's
//!   HTTP/2 streams are tasks on the reactor (`zerg_uring::hyper::Executor`) and its timers the
//!   reactor's (`zerg_uring::hyper::Timer`).
//! - `--mode runtime`: handlers on tokio; tokio's timers, hyper's HTTP/2 streams tokio tasks.
//!
//! Timeouts and limits: the TLS handshake must finish within 10 s; then the `hyper` example's
//! limits (request heads of at most 8 KiB and 100 fields, the header timeout from
//! `--header-timeout`, default 60 s, HTTP/2 pings after 20 s of silence, 128 concurrent streams
//! per connection). A failed or timed-out handshake is logged at `info` and closes that
//! connection only, after the TLS alert, if any, is sent.
//!
//! Flags (`--help`): the common ones (--port, --reactors, --recv-buffer-size,
//! --buffer-ring-entries, --incremental, --mode reactor|runtime, --accept per-reactor|dedicated,
//! --workers, --sqpoll, --max-connections, the timeouts) plus --cert FILE --key FILE.
//! SIGINT/SIGTERM stop it.

mod common;
mod hyper_rt;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use common::http::{MAX_HEAD, MAX_HEADERS};
use common::{Args, Kind};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_rt::Protocols;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;
use zerg_uring::{Connection, ConnectionStream};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sending the alert and the FIN after a failed handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

async fn handle(acceptor: TlsAcceptor, conn: Connection, config: hyper_rt::Config) {
    let peer = conn.peer_addr().ok();
    let handshake = acceptor.accept(ConnectionStream::new(conn)).into_fallible();
    let tls = match hyper_rt::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err((error, mut stream))) => {
            tracing::info!(?peer, %error, "TLS handshake failed");
            // The alert rustls staged (if any), then the FIN.
            let _ = hyper_rt::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
            return;
        }
        Err(hyper_rt::Elapsed) => {
            tracing::info!(?peer, "TLS handshake timed out");
            return;
        }
    };
    let protocols = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocols::Http2,
        _ => Protocols::Http1,
    };
    // The TLS stream is a `tokio::io` stream: hyper takes it through `TokioIo`.
    let served =
        hyper_rt::serve_connection(TokioIo::new(tls), service_fn(hello), protocols, &config).await;
    if let Err(error) = served {
        tracing::debug!(?peer, %error, "connection ended with an error");
    }
}

/// `--cert` and `--key`, taken out of the arguments; the rest goes to the common parser.
struct TlsArgs {
    cert: Option<String>,
    key: Option<String>,
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// The certificate chain and key: from the PEM files, or a self-signed one made now.
fn certificate(
    tls: &TlsArgs,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), String> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("reading certificates from {cert}: {e}"))?;
            if chain.is_empty() {
                return Err(format!("no certificate in {cert}"));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("reading the private key from {key}: {e}"))?;
            Ok((chain, key, format!("certificate from {cert}")))
        }
        (None, None) => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            let generated = rcgen::generate_simple_self_signed(names)
                .map_err(|e| format!("generating a certificate: {e}"))?;
            let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
            Ok((
                vec![generated.cert.der().clone()],
                key,
                "self-signed certificate for localhost, 127.0.0.1".to_string(),
            ))
        }
        _ => Err("--cert and --key go together".to_string()),
    }
}

fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .unwrap_or_else(|e| fail(&format!("TLS configuration: {e}")));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

fn main() {
    let mut tls = TlsArgs {
        cert: None,
        key: None,
    };
    let mut args = Args::parse_with(
        Kind::Http,
        "TLS flags:\n  --cert FILE               certificate chain (PEM)\n  --key FILE                private key (PEM)",
        |flag, parser| {
            let slot = match flag {
                "cert" => &mut tls.cert,
                "key" => &mut tls.key,
                _ => return Ok(false),
            };
            *slot = Some(lexopt::ValueExt::string(parser.value()?)?);
            Ok(true)
        },
    );
    // hyper enforces the header timeout itself, in both modes.
    args.request_timeout_applied = true;
    let config = hyper_rt::Config {
        header_timeout: args.request_timeout,
        max_head: MAX_HEAD,
        max_headers: MAX_HEADERS,
    };
    let (chain, key, source) = certificate(&tls).unwrap_or_else(|e| fail(&e));
    let acceptor = TlsAcceptor::from(Arc::new(server_config(chain, key)));
    tracing::info!("TLS: {source}; ALPN h2, http/1.1; handshake timeout {HANDSHAKE_TIMEOUT:?}");
    common::run(&args, args.options(), move |conn| {
        handle(acceptor.clone(), conn, config)
    });
}
