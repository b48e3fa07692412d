//! The library's log events as an operator sees them through `tracing-subscriber`: inside a
//! `reactor{reactor=N}` or `acceptor` span, connection events with a `conn=slot/generation`
//! field, at the documented levels.

mod util;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use util::{Mode, TestServer};

const WAIT: Duration = Duration::from_secs(10);

/// Everything logged in this process, formatted as `tracing-subscriber`'s fmt layer does.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("zerg_uring=trace,logs=info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The logged lines containing every one of `parts`.
fn lines_with(parts: &[&str]) -> Vec<String> {
    let logs = logs();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

fn wait_for_line(parts: &[&str]) -> String {
    let mut found = Vec::new();
    let ok = util::wait_until(WAIT, || {
        found = lines_with(parts);
        !found.is_empty()
    });
    assert!(ok, "no log line with {parts:?}");
    found.remove(0)
}

/// Reads until the server closes; `true` if it did (EOF or reset) before the read timeout.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    let mut buf = [0; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                );
            }
        }
    }
}

#[test]
fn connection_events_carry_the_reactor_span_and_the_connection_id() {
    logs();
    let mut opts = util::options(1, false);
    opts.reactor_configs[0].idle_timeout = Some(Duration::from_millis(300));
    // Thread-per-core: the handler's own events are inside the reactor span too.
    let server = TestServer::start(
        Mode::Reactor,
        opts,
        |mut conn: zerg_uring::Connection| async move {
            tracing::info!(peer = ?conn.peer_addr().ok(), "handler started");
            while !conn.read().await.is_closed() {}
        },
    );
    let mut client = server.connect();
    assert!(closed_by_server(&mut client), "the idle timeout closed it");

    let line = wait_for_line(&["connection timed out", "timeout=Idle"]);
    assert!(line.contains(" DEBUG "), "{line}");
    assert!(line.contains("reactor{reactor=0}"), "{line}");
    // `conn` is slot/generation, and the same id was logged when the connection opened.
    let conn = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("conn="))
        .unwrap_or_else(|| panic!("no conn field: {line}"))
        .to_string();
    let (slot, generation) = conn.split_once('/').expect("slot/generation");
    slot.parse::<u32>().unwrap();
    generation.parse::<u32>().unwrap();
    let opened = wait_for_line(&["connection opened", &format!("conn={conn} ")]);
    assert!(
        opened.contains(" TRACE ") && opened.contains("reactor{reactor=0}"),
        "{opened}"
    );
    wait_for_line(&["connection closed", &format!("conn={conn}")]);
    let handler = wait_for_line(&["handler started"]);
    assert!(handler.contains("reactor{reactor=0}"), "{handler}");
    server.stop();
}

#[test]
fn a_failed_send_is_a_debug_event_of_its_connection() {
    logs();
    // The handler sends 32 MiB to a client that resets without reading: the send fails.
    let server = TestServer::start(
        Mode::Runtime,
        util::options(1, false),
        |mut conn: zerg_uring::Connection| async move {
            let chunk = vec![b'z'; 1 << 20];
            for _ in 0..32 {
                if conn.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = conn.flush().await;
        },
    );
    let client = server.connect();
    server.wait_stats(WAIT, "the server sending", |s| s.total().bytes_sent > 0);
    util::reset(client);
    server.wait_stats(WAIT, "a flush error", |s| s.total().flush_errors > 0);
    let line = wait_for_line(&["send failed; the flush fails"]);
    assert!(
        line.contains(" DEBUG ") && line.contains("reactor{reactor=0}"),
        "{line}"
    );
    assert!(line.contains("conn=") && line.contains("reason="), "{line}");
    server.stop();
}

#[test]
fn a_connection_cap_pause_warns_inside_the_acceptor_span() {
    logs();
    let mut opts = util::options(1, false);
    opts.max_connections = 1;
    let server = TestServer::start(Mode::Runtime, opts, util::echo);
    let mut first = server.connect();
    first.write_all(b"hi").unwrap();
    let mut back = [0; 2];
    first.read_exact(&mut back).unwrap();
    // The second waits in the backlog: accepting paused.
    let _second = server.connect();
    server.wait_stats(WAIT, "an accept pause", |s| s.acceptor.accept_pauses > 0);
    let line = wait_for_line(&["connection cap reached"]);
    assert!(
        line.contains(" WARN ") && line.contains("acceptor:"),
        "{line}"
    );
    assert!(line.contains("suppressed=0"), "{line}");
    drop(first);
    let resumed = wait_for_line(&["below the connection cap again"]);
    assert!(
        resumed.contains(" INFO ") && resumed.contains("acceptor:"),
        "{resumed}"
    );
    server.stop();
}
