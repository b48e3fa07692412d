//! The io_uring peer: monoio, one thread (its thread-per-core model with one
//! core), default ring flags or `--coop-taskrun` (IORING_SETUP_COOP_TASKRUN).
//! monoio 0.2 builds its ring with io-uring 0.6, hence the renamed dependency
//! `io-uring-06`. TCP_NODELAY on every connection. `--threads N`: N such threads, each with its
//! own ring and SO_REUSEPORT listener.

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use crate::args::Args;
use crate::proto::{self, ServerOpts, Workload};

/// Submission queue entries (monoio's default).
const RING_ENTRIES: u32 = 1024;

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut args = Args::parse(argv)?;
    let opts = ServerOpts::parse(&mut args)?;
    let coop_taskrun = args.flag("coop-taskrun")?;
    args.finish()?;
    proto::raise_nofile_limit();
    proto::per_thread(&opts, |opts| {
        let mut ring = io_uring_06::IoUring::builder();
        if coop_taskrun {
            ring.setup_coop_taskrun();
        }
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .uring_builder(ring)
            .enable_timer()
            .build()
            .map_err(|e| format!("monoio runtime (io_uring setup): {e}"))?;
        rt.block_on(serve(opts)).map_err(|e| e.to_string())
    })
}

async fn serve(opts: ServerOpts) -> io::Result<()> {
    let listener_opts = ListenerOpts::default()
        .reuse_port(opts.threads > 1)
        .reuse_addr(true)
        .backlog(proto::BACKLOG as i32);
    let listener = TcpListener::bind_with_config(opts.addr(), &listener_opts)?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("monoio server: accept: {e}");
                monoio::time::sleep(super::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match opts.workload {
            Workload::Http => monoio::spawn(http(stream)),
            Workload::Echo => monoio::spawn(echo(stream, opts.buf_size)),
        };
    }
}

/// Same algorithm as the tokio peer; the buffers are owned (io_uring needs
/// them to live until the completion) and handed back by each operation.
async fn http(mut stream: TcpStream) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(proto::HTTP_READ_BUF);
    let mut out: Vec<u8> = Vec::with_capacity(proto::HTTP_READ_BUF);
    loop {
        let filled = buf.len();
        if filled == buf.capacity() {
            return Err(io::Error::other("request larger than the read buffer"));
        }
        // Read into the spare capacity after the kept partial request.
        let (res, slice) = stream.read(buf.slice_mut(filled..)).await;
        buf = slice.into_inner();
        if res? == 0 {
            return Ok(());
        }
        let used = proto::answer_requests(&buf, &mut out);
        buf.drain(..used);
        if !out.is_empty() {
            let (res, back) = stream.write_all(out).await;
            out = back;
            res?;
            out.clear();
        }
    }
}

async fn echo(mut stream: TcpStream, buf_size: usize) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(buf_size);
    loop {
        let (res, back) = stream.read(buf).await;
        buf = back;
        if res? == 0 {
            return Ok(());
        }
        let (res, back) = stream.write_all(buf).await;
        buf = back;
        res?;
        buf.clear();
    }
}
