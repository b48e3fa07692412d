//! `--metrics-port PORT`: the engine's counters as Prometheus text at
//! `http://IP:PORT/metrics`, IP being the example's `--ip` (default: every address, IPv6 and
//! IPv4 — pass `--ip 127.0.0.1` to keep the metrics on the machine).
//!
//! Served by a small hyper server on the example's tokio runtime, apart from the engine it
//! measures: a saturated or capped engine still answers scrapes. It is bounded like
//! the examples themselves: 64 scrape connections at a time (more wait in the backlog), an 8 KiB
//! request head read within 5 s, a connection closed after 60 s. `GET /metrics` (or `HEAD`)
//! answers in the Prometheus text format 0.0.4, or in OpenMetrics when the `Accept` header asks
//! for `application/openmetrics-text`; other paths get 404, other methods 405.
//!
//! Needs the library's `prometheus` feature (`--features prometheus`); without it the flag is
//! refused.

/// Whether this build can serve metrics.
pub const AVAILABLE: bool = cfg!(feature = "prometheus");

#[cfg(feature = "prometheus")]
pub use imp::Endpoint;

/// The metrics listener, bound before the engine starts so that a taken port fails fast.
#[cfg(not(feature = "prometheus"))]
pub struct Endpoint(std::convert::Infallible);

#[cfg(not(feature = "prometheus"))]
impl Endpoint {
    pub fn bind(_args: &super::Args) -> Option<Endpoint> {
        None
    }

    pub fn serve(self, _engine: &zerg_uring::Engine) {
        match self.0 {}
    }
}

#[cfg(feature = "prometheus")]
mod imp {
    use std::convert::Infallible;
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::{TokioIo, TokioTimer};
    use socket2::{Domain, Socket, Type};
    use zerg_uring::Engine;
    use zerg_uring::prometheus::EngineCollector;
    use zerg_uring::prometheus::prometheus_client::encoding::{prometheus_text, text};
    use zerg_uring::prometheus::prometheus_client::registry::Registry;

    use crate::common::Args;

    /// Scrape connections served at once.
    const MAX_CONNECTIONS: usize = 64;
    /// Longest request head.
    const MAX_HEAD: usize = 8 * 1024;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    /// A scrape connection is closed (gracefully) after this long.
    const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// The metrics listener, bound before the engine starts so that a taken port fails fast.
    pub struct Endpoint {
        listener: std::net::TcpListener,
    }

    impl Endpoint {
        /// Binds `--metrics-port` on `--ip` (exits with an error if that fails); `None` without
        /// the flag.
        pub fn bind(args: &Args) -> Option<Endpoint> {
            let port = args.metrics_port?;
            let listener = listen(args.ip, port).unwrap_or_else(|e| {
                eprintln!("error: --metrics-port {port}: {e}");
                std::process::exit(1);
            });
            Some(Endpoint { listener })
        }

        /// Serves `engine`'s metrics on the current tokio runtime until the runtime stops.
        pub fn serve(self, engine: &Engine) {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(EngineCollector::new(engine)));
            let registry = Arc::new(registry);
            let listener = tokio::net::TcpListener::from_std(self.listener)
                .expect("a non-blocking listener inside a tokio runtime");
            if let Ok(addr) = listener.local_addr() {
                println!("metrics on http://{addr}/metrics");
            }
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            tokio::spawn(async move {
                loop {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of descriptors, typically: try again a little later.
                            tracing::warn!(error = %e, "metrics: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, registry).await;
                        drop(slot);
                    });
                }
            });
        }
    }

    /// A listening socket on `ip:port`; without `ip`, every IPv6 and IPv4 address (IPv4 alone
    /// on a host without IPv6).
    fn listen(ip: Option<IpAddr>, port: u16) -> std::io::Result<std::net::TcpListener> {
        let bind = |addr: SocketAddr, v6only: bool| -> std::io::Result<std::net::TcpListener> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(v6only)?;
            }
            socket.bind(&addr.into())?;
            socket.listen(128)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        };
        match ip {
            Some(ip) => bind(SocketAddr::new(ip, port), true),
            None => bind(
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
                false,
            )
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT) => {
                    bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port), false)
                }
                _ => Err(e),
            }),
        }
    }

    async fn serve_connection(stream: tokio::net::TcpStream, registry: Arc<Registry>) {
        let service = service_fn(move |req| {
            let registry = registry.clone();
            async move { Ok::<_, Infallible>(respond(&req, &registry)) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEAD);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
            }
        }
    }

    fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
        if req.uri().path() != "/metrics" {
            return status(StatusCode::NOT_FOUND, "not found; try /metrics\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let openmetrics = req
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        let mut body = String::new();
        let (encoded, content_type) = if openmetrics {
            (text::encode(&mut body, registry), OPENMETRICS)
        } else {
            (prometheus_text::encode(&mut body, registry), PROMETHEUS)
        };
        if encoded.is_err() {
            return status(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
        }
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    }

    fn status(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = code;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }
}
