//! axum on zerg: the `axum` example's Router served by `axum::serve` on
//! `zerg_uring::axum::Listener`, and as the example serves it — hyper-util over
//! `ConnectionStream` with the examples' `hyper_rt::serve_connection` — on tokio (runtime mode)
//! and on the reactor threads with zerg's own executor and timer (reactor mode), against hyper
//! clients over HTTP/1.1 and h2c: the JSON routes, the streamed route, a 1 MiB upload round trip,
//! and larger uploads refused with 413.

#[path = "../examples/axum_app/mod.rs"]
mod axum_app;
#[path = "../examples/hyper_rt/mod.rs"]
mod hyper_rt;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum_app::{BODY_LIMIT, Message, Uploaded};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use util::{Mode, TestServer, assert_same, options, pattern};
use zerg_uring::{Connection, ConnectionStream, Engine};

/// How the Router is served.
#[derive(Debug, Clone, Copy)]
enum How {
    /// `axum::serve` on `zerg_uring::axum::Listener`, on tokio.
    AxumServe,
    /// The `axum` example's handler, in this handler mode.
    Example(Mode),
}

/// The example's Router on a zerg engine.
enum Server {
    AxumServe {
        rt: tokio::runtime::Runtime,
        engine: Arc<Engine>,
        serve: tokio::task::JoinHandle<std::io::Result<()>>,
    },
    Example(TestServer),
}

/// The `axum` example's handler (either mode).
async fn handle(app: axum::Router, conn: Connection) {
    let config = hyper_rt::Config {
        header_timeout: Some(Duration::from_secs(10)),
        max_head: 8 * 1024,
        max_headers: 100,
    };
    let io = ConnectionStream::new(conn);
    let service = TowerToHyperService::new(app);
    let _ = hyper_rt::serve_connection(io, service, hyper_rt::Protocols::Auto, &config).await;
}

impl Server {
    fn start(how: How) -> Server {
        let app = axum_app::app(Some(Duration::from_secs(10)));
        match how {
            How::AxumServe => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let listener = zerg_uring::axum::Listener::bind(options(1, false)).unwrap();
                let engine = listener.engine().clone();
                let serve = rt.spawn(axum::serve(listener, app).into_future());
                Server::AxumServe { rt, engine, serve }
            }
            How::Example(mode) => {
                let handler = move |conn| handle(app.clone(), conn);
                Server::Example(TestServer::start(mode, options(1, false), handler))
            }
        }
    }

    fn engine(&self) -> &Engine {
        match self {
            Server::AxumServe { engine, .. } => engine,
            Server::Example(s) => s.engine(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.engine().local_addr()
    }

    /// Waits until every connection closed and every buffer is back, then stops.
    fn stop(self) {
        match self {
            Server::AxumServe { rt, engine, serve } => {
                assert!(
                    util::wait_until(Duration::from_secs(5), || {
                        let t = engine.stats().total();
                        t.connections == 0 && t.buffers_free == t.buffers_total
                    }),
                    "quiescent: {:#?}",
                    engine.stats()
                );
                assert!(!serve.is_finished(), "axum::serve ended on its own");
                engine.stop();
                serve.abort();
                rt.shutdown_timeout(Duration::from_secs(2));
                let engine = Arc::into_inner(engine).expect("axum dropped the listener");
                engine.join().unwrap();
            }
            Server::Example(s) => {
                s.assert_quiescent();
                s.stop();
            }
        }
    }
}

/// One HTTP connection from a hyper client, HTTP/1.1 or h2c (prior knowledge).
enum Client {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl Client {
    async fn connect(addr: SocketAddr, h2: bool) -> Client {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let io = TokioIo::new(tcp);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(sender)
        }
    }

    /// Sends `req`; returns the status, the headers and the whole body.
    async fn send(&mut self, req: Request<Body>) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let res = match self {
            Client::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await
            }
            Client::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await
            }
        };
        let res = res.expect("a response");
        let want = match self {
            Client::H1(_) => Version::HTTP_11,
            Client::H2(_) => Version::HTTP_2,
        };
        assert_eq!(res.version(), want);
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("the whole body").to_bytes();
        (parts.status, parts.headers, body)
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// The body in pieces of `piece` bytes, without a length (chunked on HTTP/1.1).
fn streamed(data: Bytes, piece: usize) -> Body {
    let frames: Vec<_> = (0..data.len())
        .step_by(piece)
        .map(|at| Ok(Frame::data(data.slice(at..(at + piece).min(data.len())))))
        .collect();
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

fn get(path: &str) -> Request<Body> {
    Request::get(format!("http://localhost{path}"))
        .body(full(Bytes::new()))
        .unwrap()
}

fn post(path: &str, body: Body) -> Request<Body> {
    Request::post(format!("http://localhost{path}"))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

async fn exercise(addr: SocketAddr, h2: bool, what: &str) {
    let mut c = Client::connect(addr, h2).await;

    let (status, headers, body) = c.send(get("/json")).await;
    assert_eq!(status, StatusCode::OK, "{what}");
    assert_eq!(headers[CONTENT_TYPE], "application/json", "{what}");
    let msg: Message = serde_json::from_slice(&body).unwrap();
    assert_eq!(msg.message, "Hello, World!", "{what}");

    let (status, _, body) = c.send(post("/json", full(r#"{"name":"zerg"}"#))).await;
    assert_eq!(status, StatusCode::OK, "{what}");
    let msg: Message = serde_json::from_slice(&body).unwrap();
    assert_eq!(msg.message, "Hello, zerg!", "{what}");

    let (status, _, _) = c.send(post("/json", full(r#"{"nom":1}"#))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}");

    let (status, headers, body) = c.send(get("/stream?lines=5000")).await;
    assert_eq!(status, StatusCode::OK, "{what}");
    if !h2 {
        assert_eq!(headers[TRANSFER_ENCODING], "chunked", "{what}: streamed");
    }
    let want: String = (0..5000).map(axum_app::line).collect();
    assert_same(&body, want.as_bytes(), &format!("{what} /stream"));

    let (status, _, _) = c.send(get("/stream?lines=100001")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");

    // Exactly the limit, with a length and streamed without one.
    let data = Bytes::from(pattern(1, BODY_LIMIT));
    let want = Uploaded {
        bytes: BODY_LIMIT,
        crc32: crc32fast::hash(&data),
    };
    for body in [full(data.clone()), streamed(data.clone(), 10_000)] {
        let (status, _, body) = c.send(post("/upload", body)).await;
        assert_eq!(status, StatusCode::OK, "{what}");
        let got: Uploaded = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, want, "{what}: 1 MiB upload");
    }

    // One byte over, streamed: refused once the limit is crossed.
    let over = Bytes::from(pattern(2, BODY_LIMIT + 1));
    let (status, _, _) = c
        .send(post("/upload", streamed(over.clone(), 10_000)))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{what}: streamed");

    // One byte over, with a length: refused before the body is read. HTTP/1.1 then closes the
    // connection (the unread body), so this goes last on its own connection.
    let mut c = Client::connect(addr, h2).await;
    let (status, _, _) = c.send(post("/upload", full(over))).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{what}: with a length"
    );
}

#[test]
fn axum_routes_served_every_way() {
    for how in [
        How::AxumServe,
        How::Example(Mode::Runtime),
        How::Example(Mode::Reactor),
    ] {
        let server = Server::start(how);
        let addr = server.addr();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for h2 in [false, true] {
                let what = format!("{how:?} {}", if h2 { "h2c" } else { "HTTP/1.1" });
                tokio::time::timeout(Duration::from_secs(30), exercise(addr, h2, &what))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: every route within 30 s"));
            }
        });
        // The clients' connections close with their runtime.
        drop(rt);
        server.stop();
    }
}
