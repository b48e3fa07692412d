//! TLS on zerg: tokio-rustls servers over `ConnectionStream` in both handler modes, against
//! tokio-rustls clients.
//!
//! - An echo is byte-exact under random segmentation: random write sizes from the clients,
//!   random read sizes on the server, 4 KiB receive buffers (TLS records span several).
//! - A failed handshake (garbage, a client that does not trust the certificate, a wrong server
//!   name, a peer that leaves mid-handshake) closes that connection only, while a concurrent good
//!   client keeps being served.
//! - The handshake timeout (the examples' `hyper_rt::timeout`: the reactor's timers on a reactor
//!   thread, tokio's elsewhere) closes silent and stalled clients.
//! - HTTPS with hyper: HTTP/2 and HTTP/1.1 chosen by ALPN, served with the examples'
//!   `hyper_rt::serve_connection` (in reactor mode on zerg's own executor and timer: HTTP/2
//!   streams are tasks on the reactor).

#[path = "../examples/hyper_rt/mod.rs"]
mod hyper_rt;
mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use util::{Mode, Rng, TestServer, assert_same, options, pattern, tagged, wait_until};
use zerg_uring::{Connection, ConnectionStream};

const MODES: [Mode; 2] = [Mode::Runtime, Mode::Reactor];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for localhost / 127.0.0.1, and the server's config with it
/// (offering `alpn`).
fn pki(alpn: &[&[u8]]) -> (Arc<ServerConfig>, CertificateDer<'static>) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (Arc::new(server), cert)
}

/// A client config trusting `cert` only, asking for `alpn`.
fn trusting(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    Arc::new(client_config(roots, alpn))
}

fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> ClientConfig {
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    client
}

/// What the server's handshakes came to.
#[derive(Debug, Default)]
struct Handshakes {
    ok: AtomicUsize,
    failed: AtomicUsize,
    timed_out: AtomicUsize,
}

impl Handshakes {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.timed_out.load(Ordering::SeqCst),
        )
    }
}

/// The server side of every test: the handshake (bounded by `limit`), then `serve`. A failed
/// handshake sends rustls's alert and a FIN, as the `tls` example does.
async fn accept<F, Fut>(
    acceptor: TlsAcceptor,
    limit: Duration,
    counts: Arc<Handshakes>,
    conn: Connection,
    serve: F,
) where
    F: FnOnce(tokio_rustls::server::TlsStream<ConnectionStream>) -> Fut,
    Fut: Future<Output = ()>,
{
    let handshake = acceptor.accept(ConnectionStream::new(conn)).into_fallible();
    match hyper_rt::timeout(limit, handshake).await {
        Ok(Ok(tls)) => {
            counts.ok.fetch_add(1, Ordering::SeqCst);
            serve(tls).await;
        }
        Ok(Err((_, mut stream))) => {
            let _ = hyper_rt::timeout(Duration::from_secs(1), stream.shutdown()).await;
            counts.failed.fetch_add(1, Ordering::SeqCst);
        }
        Err(_) => {
            counts.timed_out.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Echoes every plaintext byte, reading with random buffer sizes; answers close_notify with
/// close_notify.
async fn echo(mut tls: tokio_rustls::server::TlsStream<ConnectionStream>) {
    let id = tls.get_ref().0.get_ref().id();
    let mut rng = Rng::new(u64::from(id.slot()) << 32 | u64::from(id.generation()));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let size = match rng.below(3) {
            0 => 1 + rng.below(64),
            _ => 1 + rng.below(buf.len() as u64),
        } as usize;
        match tls.read(&mut buf[..size]).await {
            Ok(0) => {
                let _ = tls.shutdown().await;
                return;
            }
            Ok(n) => {
                if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A TLS echo server in `mode` with the harness's small buffers.
fn echo_server(
    mode: Mode,
    server: Arc<ServerConfig>,
    limit: Duration,
) -> (TestServer, Arc<Handshakes>) {
    let counts = Arc::new(Handshakes::default());
    let acceptor = TlsAcceptor::from(server);
    let c = counts.clone();
    let handler = move |conn| accept(acceptor.clone(), limit, c.clone(), conn, echo);
    (TestServer::start(mode, options(1, false), handler), counts)
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends `len` tagged bytes in random-sized writes (each flushed: one or more TLS records) while
/// reading the echo; returns it once the server's close_notify ends it.
async fn echo_client(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    id: u64,
    len: usize,
) -> Vec<u8> {
    let tls = connect(addr, config, "localhost").await.expect("handshake");
    let (mut r, mut w) = tokio::io::split(tls);
    let data = tagged(id, len);
    let writer = async {
        let mut rng = Rng::new(id + 1);
        let mut at = 0;
        while at < data.len() {
            let n = match rng.below(4) {
                0 => 1 + rng.below(16),
                1 => 1 + rng.below(1500),
                _ => 1 + rng.below(20_000),
            } as usize;
            let n = n.min(data.len() - at);
            w.write_all(&data[at..at + n]).await.unwrap();
            w.flush().await.unwrap();
            at += n;
        }
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("echo read");
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    got
}

#[test]
fn tls_echo_is_byte_exact_under_random_segmentation() {
    const CONNECTIONS: u64 = 4;
    const LEN: usize = 256 * 1024;
    for mode in MODES {
        let (server_config, cert) = pki(&[]);
        let client_config = trusting(&cert, &[]);
        let (server, counts) = echo_server(mode, server_config, Duration::from_secs(10));
        client_runtime().block_on(async {
            let tasks: Vec<_> = (0..CONNECTIONS)
                .map(|id| {
                    let config = client_config.clone();
                    let addr = server.addr;
                    tokio::spawn(async move { (id, echo_client(addr, config, id, LEN).await) })
                })
                .collect();
            for t in tasks {
                let (id, got) = tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .expect("echo within 30 s")
                    .unwrap();
                assert_same(&got, &tagged(id, LEN), &format!("{mode:?} connection {id}"));
            }
        });
        assert_eq!(counts.get(), (CONNECTIONS as usize, 0, 0), "{mode:?}");
        server.assert_quiescent();
        server.stop();
    }
}

/// One echo round trip of `n` bytes on an open TLS connection.
async fn round_trip(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, seed: u64, n: usize) {
    let data = pattern(seed, n);
    tls.write_all(&data).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = vec![0; n];
    tls.read_exact(&mut got).await.unwrap();
    assert_same(&got, &data, "good client round trip");
}

/// Reads until the server closes; the close must come within 5 s. A reset counts as a close
/// (the server closed with the client's garbage unread).
async fn expect_closed(mut s: TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: the server did not close the connection within 5 s"),
    }
    got
}

#[test]
fn failed_handshake_closes_only_that_connection() {
    for mode in MODES {
        let (server_config, cert) = pki(&[]);
        let client_config = trusting(&cert, &[]);
        let (server, counts) = echo_server(mode, server_config, Duration::from_secs(10));
        let addr = server.addr;
        let rt = client_runtime();
        // The good client: round trips until told to stop, each one checked.
        let rounds = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let good = {
            let (rounds, done, config) = (rounds.clone(), done.clone(), client_config.clone());
            rt.spawn(async move {
                let mut tls = connect(addr, config, "localhost").await.unwrap();
                let mut i = 0u64;
                while !done.load(Ordering::SeqCst) {
                    round_trip(&mut tls, i, 1 + (i as usize * 997) % 30_000).await;
                    rounds.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                tls.shutdown().await.unwrap();
                let mut rest = Vec::new();
                tls.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            })
        };
        let progressed = |from: usize| {
            assert!(
                wait_until(Duration::from_secs(10), || rounds.load(Ordering::SeqCst)
                    >= from + 3),
                "{mode:?}: the good client stalled"
            );
        };
        progressed(0);

        let mut failures = 0;
        let mut failed = |what: &str| {
            failures += 1;
            assert!(
                wait_until(Duration::from_secs(5), || counts.get().1 == failures),
                "{mode:?} {what}: the server saw {:?} (ok, failed, timed out)",
                counts.get()
            );
            server.wait_stats(Duration::from_secs(5), "only the good connection", |s| {
                s.total().connections == 1
            });
            progressed(rounds.load(Ordering::SeqCst));
        };

        // Garbage: an HTTP request to the TLS port. rustls answers with an alert, then closes.
        let got = rt.block_on(async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            expect_closed(s, "garbage").await
        });
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{mode:?}: not an alert: {got:02x?}"
        );
        failed("garbage");

        // A client that does not trust the certificate.
        let untrusting = Arc::new(client_config_without_roots());
        let e = rt
            .block_on(connect(addr, untrusting, "localhost"))
            .expect_err("an untrusted certificate is refused");
        assert!(e.to_string().contains("UnknownIssuer"), "{mode:?}: {e}");
        failed("untrusting client");

        // A client asking for another name.
        let e = rt
            .block_on(connect(addr, client_config.clone(), "wrong.example"))
            .expect_err("a certificate for another name is refused");
        assert!(
            e.to_string().contains("not valid for name"),
            "{mode:?}: {e}"
        );
        failed("wrong server name");

        // A peer that sends half a ClientHello record header and leaves.
        rt.block_on(async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
            s.shutdown().await.unwrap();
            expect_closed(s, "half a record").await;
        });
        failed("half a record, then FIN");

        done.store(true, Ordering::SeqCst);
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), good)
                .await
                .expect("the good client finishes")
                .unwrap();
        });
        assert_eq!(counts.get(), (1, 4, 0), "{mode:?}");
        server.assert_quiescent();
        server.stop();
    }
}

fn client_config_without_roots() -> ClientConfig {
    client_config(RootCertStore::empty(), &[])
}

#[test]
fn handshake_timeout_closes_silent_and_stalled_clients() {
    for mode in MODES {
        let (server_config, cert) = pki(&[]);
        let client_config = trusting(&cert, &[]);
        let (server, counts) = echo_server(mode, server_config, Duration::from_millis(300));
        let rt = client_runtime();
        rt.block_on(async {
            let silent = TcpStream::connect(server.addr).await.unwrap();
            let mut stalled = TcpStream::connect(server.addr).await.unwrap();
            stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
            let (a, b) = tokio::join!(
                expect_closed(silent, "silent client"),
                expect_closed(stalled, "stalled client"),
            );
            assert!(a.is_empty() && b.is_empty(), "{mode:?}: {a:?} {b:?}");
        });
        assert!(
            wait_until(Duration::from_secs(5), || counts.get() == (0, 0, 2)),
            "{mode:?}: {:?}",
            counts.get()
        );
        server.assert_quiescent();
        // A prompt client is still served.
        rt.block_on(async {
            let mut tls = connect(server.addr, client_config, "localhost")
                .await
                .unwrap();
            round_trip(&mut tls, 7, 10_000).await;
        });
        assert_eq!(counts.get(), (1, 0, 2), "{mode:?}");
        server.stop();
    }
}

/// GET: "Hello, World!"; POST: the body back.
async fn service(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = if req.method() == Method::POST {
        req.into_body().collect().await?.to_bytes()
    } else {
        Bytes::from_static(b"Hello, World!")
    };
    Ok(Response::new(Full::new(body)))
}

/// The `tls` example's connection handler: HTTP/2 or HTTP/1.1 by ALPN.
async fn https(tls: tokio_rustls::server::TlsStream<ConnectionStream>) {
    let protocols = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => hyper_rt::Protocols::Http2,
        _ => hyper_rt::Protocols::Http1,
    };
    let config = hyper_rt::Config {
        header_timeout: Some(Duration::from_secs(10)),
        max_head: 8 * 1024,
        max_headers: 100,
    };
    let svc = hyper::service::service_fn(service);
    let _ = hyper_rt::serve_connection(TokioIo::new(tls), svc, protocols, &config).await;
}

/// A request and the body its response must carry.
fn request(i: usize) -> (Request<Full<Bytes>>, Bytes) {
    if i.is_multiple_of(3) {
        let req = Request::get("https://localhost/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        (req, Bytes::from_static(b"Hello, World!"))
    } else {
        let body = Bytes::from(pattern(i as u64, (i * 7919) % 100_000));
        let req = Request::post("https://localhost/echo")
            .body(Full::new(body.clone()))
            .unwrap();
        (req, body)
    }
}

#[test]
fn https_serves_h2_and_http1_by_alpn() {
    const H2_STREAMS: usize = 64;
    const H1_REQUESTS: usize = 20;
    for mode in MODES {
        let (server_config, cert) = pki(&[b"h2", b"http/1.1"]);
        let counts = Arc::new(Handshakes::default());
        let acceptor = TlsAcceptor::from(server_config);
        let c = counts.clone();
        let limit = Duration::from_secs(10);
        let handler = move |conn| accept(acceptor.clone(), limit, c.clone(), conn, https);
        let server = TestServer::start(mode, options(1, false), handler);
        let addr = server.addr;
        client_runtime().block_on(async {
            // HTTP/2: every request at once on one connection (concurrent streams).
            let config = trusting(&cert, &[b"h2"]);
            let tls = connect(addr, config, "localhost").await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            let driver = tokio::spawn(conn);
            let tasks: Vec<_> = (0..H2_STREAMS)
                .map(|i| {
                    let mut sender = sender.clone();
                    tokio::spawn(async move {
                        let (req, want) = request(i);
                        let res = sender.send_request(req).await.unwrap();
                        assert_eq!(res.version(), hyper::Version::HTTP_2);
                        let got = res.into_body().collect().await.unwrap().to_bytes();
                        assert_same(&got, &want, &format!("h2 stream {i}"));
                    })
                })
                .collect();
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(20), t)
                    .await
                    .expect("h2 response within 20 s")
                    .unwrap();
            }
            drop(sender);
            let _ = driver.await;

            // HTTP/1.1: keep-alive, one request after the other.
            let config = trusting(&cert, &[b"http/1.1"]);
            let tls = connect(addr, config, "localhost").await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            let driver = tokio::spawn(conn);
            for i in 0..H1_REQUESTS {
                let (req, want) = request(i);
                sender.ready().await.unwrap();
                let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
                    .await
                    .expect("h1 response within 10 s")
                    .unwrap();
                assert_eq!(res.version(), hyper::Version::HTTP_11);
                let got = res.into_body().collect().await.unwrap().to_bytes();
                assert_same(&got, &want, &format!("http/1.1 request {i}"));
            }
            drop(sender);
            let _ = driver.await;
        });
        assert_eq!(counts.get(), (2, 0, 0), "{mode:?}");
        server.assert_quiescent();
        server.stop();
    }
}
