//! hyper 1.x on zerg: a hyper HTTP/1.1 server over `ConnectionStream` (hyper-util's `TokioIo`)
//! answers 1,000 requests from a hyper client over keep-alive connections, in both handler modes
//! and both buffer modes, with request bodies echoed byte-exact.

mod util;

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use util::{Mode, TestServer, options, pattern};
use zerg_uring::{Connection, ConnectionStream};

/// GET: "Hello, World!"; POST: the request body back.
async fn service(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.method() == Method::POST {
        match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::from_static(b"body error"),
        }
    } else {
        Bytes::from_static(b"Hello, World!")
    };
    Ok(Response::new(Full::new(body)))
}

async fn serve_hyper(conn: Connection) {
    let io = TokioIo::new(ConnectionStream::new(conn));
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, hyper::service::service_fn(service))
        .await;
}

const CONNECTIONS: usize = 4;
const REQUESTS: usize = 1000;

/// Sends `REQUESTS` requests over `CONNECTIONS` keep-alive connections with a hyper client.
async fn client(addr: std::net::SocketAddr) {
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            let driver = tokio::spawn(connection);
            for i in 0..REQUESTS / CONNECTIONS {
                sender.ready().await.unwrap();
                let (req, expected) = if i % 2 == 0 {
                    let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
                    (req, Bytes::from_static(b"Hello, World!"))
                } else {
                    let body = Bytes::from(pattern((c * 10_000 + i) as u64, (i * 97) % 20_000));
                    let req = Request::post("/echo")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    (req, body)
                };
                let res = sender.send_request(req).await.unwrap();
                assert_eq!(res.status(), 200);
                let got = res.into_body().collect().await.unwrap().to_bytes();
                assert!(got == expected, "connection {c} request {i}: wrong body");
            }
            drop(sender);
            let _ = driver.await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn hyper_answers_1000_requests_over_keep_alive() {
    for (mode, incremental) in [
        (Mode::Runtime, false),
        (Mode::Runtime, true),
        (Mode::Reactor, false),
        (Mode::Reactor, true),
    ] {
        let server = TestServer::start(mode, options(1, incremental), serve_hyper);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), client(server.addr))
                .await
                .expect("1,000 requests within 30 s");
        });
        // Only the client's keep-alive connections: every request was served on them.
        assert_eq!(
            server.engine().stats().total().connections_total,
            CONNECTIONS as u64
        );
        server.assert_quiescent();
        server.stop();
    }
}
