//! hyper entirely on the reactor threads with zerg's own runtime traits (feature `hyper`): no
//! tokio runtime on the server side. HTTP/1 with `header_read_timeout` (a slowloris client is
//! closed, well-behaved keep-alive clients are not), and HTTP/2 prior knowledge (h2c) with many
//! concurrent streams on one connection, which needs the executor.

mod util;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use util::{TestServer, options};
use zerg_uring::{Connection, ConnectionStream, Engine};

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // A little local work per request, on the reactor's timers, to show they run here.
    if req.uri().path() == "/slow" {
        zerg_uring::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}

async fn serve_h1(conn: Connection) {
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(zerg_uring::hyper::Timer)
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(
            ConnectionStream::new(conn),
            hyper::service::service_fn(hello),
        )
        .await;
}

async fn serve_h2(conn: Connection) {
    let _ = hyper::server::conn::http2::Builder::new(zerg_uring::hyper::Executor)
        .timer(zerg_uring::hyper::Timer)
        .serve_connection(
            ConnectionStream::new(conn),
            hyper::service::service_fn(hello),
        )
        .await;
}

fn reactor_server<H, F>(handler: H) -> TestServer
where
    H: Fn(Connection) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + 'static,
{
    TestServer::from_engine(Engine::serve(options(1, false), handler).expect("engine starts"))
}

#[test]
fn http1_header_read_timeout_closes_slowloris_and_spares_keep_alive() {
    let server = reactor_server(serve_h1);
    // A slowloris client: one header byte every 100 ms, never finishing.
    let mut slow = server.connect();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let start = Instant::now();
    let mut closed_after = None;
    // A keep-alive client making a request every 50 ms throughout.
    let mut good = server.connect();
    let mut i = 0;
    while start.elapsed() < HEADER_TIMEOUT * 4 {
        good.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = [0u8; 256];
        let n = good.read(&mut resp).unwrap();
        assert!(
            resp[..n].starts_with(b"HTTP/1.1 200 OK"),
            "{:?}",
            String::from_utf8_lossy(&resp[..n])
        );
        if closed_after.is_none() && i % 2 == 0 {
            let byte = &request[(i / 2) % request.len()..][..1];
            if slow.write_all(byte).is_err() {
                closed_after = Some(start.elapsed());
            } else {
                slow.set_read_timeout(Some(Duration::from_millis(1)))
                    .unwrap();
                match slow.read(&mut resp) {
                    // hyper answers a header timeout with 408 or just closes.
                    Ok(_) => closed_after = Some(start.elapsed()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => closed_after = Some(start.elapsed()),
                }
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed = closed_after.expect("the slowloris client was closed");
    println!("slowloris closed after {closed:?}; {i} keep-alive requests served meanwhile");
    assert!(
        closed >= HEADER_TIMEOUT - Duration::from_millis(60),
        "{closed:?}"
    );
    assert!(
        closed < HEADER_TIMEOUT + Duration::from_secs(1),
        "{closed:?}"
    );
    drop((slow, good));
    server.assert_quiescent();
    server.stop();
}

#[test]
fn http2_prior_knowledge_serves_concurrent_streams_with_the_zerg_executor() {
    let server = reactor_server(serve_h2);
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let path = if i % 4 == 0 { "/slow" } else { "/" };
                let req = Request::get(format!("http://x{path}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let res = sender.send_request(req).await.unwrap();
                assert_eq!(res.status(), 200);
                assert_eq!(res.version(), hyper::Version::HTTP_2);
                res.into_body().collect().await.unwrap().to_bytes()
            }));
        }
        let started = Instant::now();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Bytes::from_static(b"Hello, World!"));
        }
        // 50 of the streams sleep 20 ms each: concurrently, not one after another.
        assert!(
            started.elapsed() < Duration::from_millis(50 * 20),
            "{:?}",
            started.elapsed()
        );
    });
    assert_eq!(server.engine().stats().total().connections_total, 1);
    server.stop();
}
