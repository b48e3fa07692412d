//! The epoll peer: tokio with a `current_thread` runtime (one thread does the
//! accept loop and every connection, as in a thread-per-core server; a
//! `multi_thread` runtime with one worker would add a second, idle thread and
//! cross-thread wakeups). TCP_NODELAY on every connection. `--threads N`: N such threads, each
//! with its own SO_REUSEPORT listener.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::args::Args;
use crate::proto::{self, ServerOpts, Workload};

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut args = Args::parse(argv)?;
    let opts = ServerOpts::parse(&mut args)?;
    args.finish()?;
    proto::raise_nofile_limit();
    proto::per_thread(&opts, |opts| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(serve(opts)).map_err(|e| e.to_string())
    })
}

async fn serve(opts: ServerOpts) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    if opts.threads > 1 {
        socket.set_reuseport(true)?;
    }
    socket.bind(opts.addr())?;
    let listener = socket.listen(proto::BACKLOG)?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("tokio server: accept: {e}");
                tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // A failure here only concerns this connection.
        let _ = stream.set_nodelay(true);
        match opts.workload {
            Workload::Http => tokio::spawn(http(stream)),
            Workload::Echo => tokio::spawn(echo(stream, opts.buf_size)),
        };
    }
}

/// Keep-alive + pipelining: one write with every response of a read batch.
async fn http(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Vec::with_capacity(proto::HTTP_READ_BUF);
    let mut out = Vec::with_capacity(proto::HTTP_READ_BUF);
    loop {
        if buf.len() == buf.capacity() {
            return Err(io::Error::other("request larger than the read buffer"));
        }
        // `read_buf` on a Vec with spare capacity reads into that capacity
        // and never grows it.
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let used = proto::answer_requests(&buf, &mut out);
        buf.drain(..used);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

async fn echo(mut stream: TcpStream, buf_size: usize) -> io::Result<()> {
    let mut buf = Vec::with_capacity(buf_size);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        stream.write_all(&buf).await?;
        buf.clear();
    }
}
