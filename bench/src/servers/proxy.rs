//! The proxy peer: tokio `current_thread`, for every accepted connection a connection to the
//! upstream, bytes copied both ways (16 KiB buffers each way) with half-close: EOF from one side
//! shuts down the write half of the other, and the pair ends when both directions are done.
//! TCP_NODELAY on both sockets.
//!
//! `zerg-bench tokio-proxy --port P --upstream HOST:PORT`

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::args::Args;
use crate::proto;

/// Copy buffer per direction (the suite's read buffer size).
const COPY_BUF: usize = 16 * 1024;
/// Longest wait for the upstream connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut args = Args::parse(argv)?;
    let port: u16 = args.req("port")?;
    let upstream: SocketAddr = args.req("upstream")?;
    args.finish()?;
    proto::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(serve(port, upstream))
        .map_err(|e| e.to_string())
}

async fn serve(port: u16, upstream: SocketAddr) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind((std::net::Ipv4Addr::LOCALHOST, port).into())?;
    let listener = socket.listen(proto::BACKLOG)?;
    loop {
        let client = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("tokio proxy: accept: {e}");
                tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = relay(client, upstream).await {
                // Resets are part of the benchmark (RST closes); anything else is worth a line.
                if e.kind() != io::ErrorKind::ConnectionReset {
                    eprintln!("tokio proxy: {e}");
                }
            }
        });
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut up = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"))??;
    let _ = up.set_nodelay(true);
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, COPY_BUF, COPY_BUF).await?;
    Ok(())
}
