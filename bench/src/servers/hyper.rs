//! The hyper peer: hyper 1.x HTTP/1.1 (keep-alive, pipelined requests answered in order) on
//! tokio `current_thread`, answering every request with "Hello, World!" (text/plain). hyper's
//! defaults, as in zerg's `hyper` example, so the rows differ only in the I/O underneath: each
//! response is flushed on its own; `--pipeline-flush` aggregates the flushes of a pipelined
//! batch (`http1::Builder::pipeline_flush`). With `--tls`, the same behind tokio-rustls (ring provider,
//! TLS 1.3 and 1.2, ALPN http/1.1, a self-signed certificate for `localhost` and `127.0.0.1`
//! generated at start-up); the handshake must finish within 10 s.
//!
//! `zerg-bench tokio-hyper --port P [--tls] [--pipeline-flush]`

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use tokio_rustls::TlsAcceptor;

use crate::args::Args;
use crate::proto;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut args = Args::parse(argv)?;
    let port: u16 = args.req("port")?;
    let tls = args.flag("tls")?;
    let pipeline_flush = args.flag("pipeline-flush")?;
    args.finish()?;
    proto::raise_nofile_limit();
    let acceptor = if tls { Some(tls_acceptor()?) } else { None };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(serve(port, acceptor, pipeline_flush))
        .map_err(|e| e.to_string())
}

/// rustls with the ring provider and a fresh self-signed certificate.
pub(crate) fn tls_acceptor() -> Result<TlsAcceptor, String> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| format!("self-signed certificate: {e}"))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| format!("TLS certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

async fn serve(port: u16, tls: Option<TlsAcceptor>, pipeline_flush: bool) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind((std::net::Ipv4Addr::LOCALHOST, port).into())?;
    let listener = socket.listen(proto::BACKLOG)?;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("tokio hyper: accept: {e}");
                tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                tokio::spawn(http(stream, pipeline_flush));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A failed or slow handshake closes this connection only.
                    let accepted =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    if let Ok(Ok(s)) = accepted {
                        http(s, pipeline_flush).await;
                    }
                });
            }
        }
    }
}

async fn http<S>(io: S, pipeline_flush: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Errors (a client that resets, a malformed request) end this connection only.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .pipeline_flush(pipeline_flush)
        .serve_connection(TokioIo::new(io), service_fn(hello))
        .await;
}
