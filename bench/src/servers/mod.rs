//! Peer servers. Each one does exactly the same work (see [`crate::proto`]) on
//! one thread, so that the runner compares the I/O layers and nothing else.

pub(crate) mod hyper;
pub(crate) mod monoio;
pub(crate) mod proxy;
pub(crate) mod resp;
pub(crate) mod tokio;
pub(crate) mod zerg;

/// How long an accept loop waits after an error such as EMFILE before it
/// accepts again (a tight retry loop would burn the core being measured).
pub(crate) const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

#[cfg(test)]
pub(crate) mod tests {
    //! Every peer answers split and pipelined requests the same way and
    //! echoes large writes byte for byte.

    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::thread;
    use std::time::{Duration, Instant};

    use crate::proto::{REQUEST, RESPONSE};

    pub(crate) type Main = fn(Vec<String>) -> Result<(), String>;

    /// Starts a server on a free port in a background thread (it runs until
    /// the test process exits) and returns the port.
    pub(crate) fn start(main: Main, extra: &[&str]) -> u16 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut argv: Vec<String> = ["--port", &port.to_string()].map(String::from).into();
        argv.extend(extra.iter().map(|s| s.to_string()));
        thread::spawn(move || main(argv).expect("server runs"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            thread::sleep(Duration::from_millis(10));
        }
        port
    }

    fn connect(port: u16) -> TcpStream {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn check_http(main: Main, extra: &[&str]) {
        let mut argv = vec!["--workload", "http"];
        argv.extend_from_slice(extra);
        check_http_port(start(main, &argv));
    }

    fn check_http_port(port: u16) {
        let mut s = connect(port);
        // One request split across two writes, then three pipelined.
        s.write_all(&REQUEST[..7]).unwrap();
        thread::sleep(Duration::from_millis(20));
        s.write_all(&REQUEST[7..]).unwrap();
        s.write_all(&REQUEST.repeat(3)).unwrap();
        let mut got = vec![0; 4 * RESPONSE.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, RESPONSE.repeat(4));
        // Nothing more: no response without a complete request.
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut one = [0u8; 1];
        assert!(s.read(&mut one).is_err(), "answered an incomplete request");
    }

    fn check_echo(main: Main, extra: &[&str]) {
        let mut argv = vec!["--workload", "echo", "--buf-size", "4096"];
        argv.extend_from_slice(extra);
        check_echo_port(start(main, &argv));
    }

    /// 300 kB echoed byte for byte while still being written, then a half-close: what was
    /// sent comes back and the server closes too.
    fn check_echo_port(port: u16) {
        let s = connect(port);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut writer = s.try_clone().unwrap();
        let sent = data.clone();
        let w = thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut got = vec![0; data.len()];
        (&s).read_exact(&mut got).unwrap();
        w.join().unwrap();
        assert!(got == data, "echoed bytes differ");
        (&s).write_all(b"last").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        (&s).read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"last");
    }

    #[test]
    fn proxy_relays_both_ways_with_half_close() {
        let up = start(super::tokio::main, &["--workload", "echo"]);
        let upstream = format!("127.0.0.1:{up}");
        check_echo_port(start(super::proxy::main, &["--upstream", &upstream]));
    }

    #[test]
    fn resp_over_a_socket() {
        let mut s = connect(start(super::resp::main, &[]));
        s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\n*2\r\n$3\r\nDEL\r\n$1\r\nk\r\nPING\r\n")
            .unwrap();
        let want = b"+OK\r\n$1\r\nv\r\n:1\r\n+PONG\r\n";
        let mut got = vec![0; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
        // Malformed input: an error reply, then the server closes.
        s.write_all(b"*1\r\n:oops\r\n").unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(
            rest.starts_with(b"-ERR"),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    #[test]
    fn hyper_answers_pipelined_requests() {
        let mut s = connect(start(super::hyper::main, &[]));
        s.write_all(&REQUEST.repeat(3)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while memchr::memmem::find_iter(&got, b"Hello, World!").count() < 3 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    }

    /// The C reference server, built with gcc against liburing into a temporary directory.
    fn c_server() -> Option<std::path::PathBuf> {
        let out = std::env::temp_dir().join(format!("zerg-bench-c-{}", std::process::id()));
        match crate::runner::build_c_server_for_tests(&out) {
            Ok(()) => Some(out),
            Err(e) => {
                eprintln!("SKIPPED: the C reference server cannot be built here: {e}");
                None
            }
        }
    }

    #[test]
    fn c_reference_server_http_and_echo() {
        let Some(bin) = c_server() else { return };
        for work in ["http", "echo"] {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let mut child = std::process::Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--workload",
                    work,
                    "--buf-size",
                    "4096",
                ])
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
                assert!(Instant::now() < deadline, "C server did not start");
                thread::sleep(Duration::from_millis(10));
            }
            if work == "http" {
                check_http_port(port);
                // An incomplete request above 16 KiB closes the connection, unanswered (with
                // RST if the close finds unread bytes).
                let mut s = connect(port);
                let _ = s.write_all(&vec![b'x'; 20_000]);
                let mut rest = Vec::new();
                match s.read_to_end(&mut rest) {
                    Ok(_) => assert!(rest.is_empty(), "answered an oversized request"),
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
                }
            } else {
                check_echo_port(port);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&bin);
    }

    #[test]
    fn tokio_http() {
        check_http(super::tokio::main, &[]);
        check_http(super::tokio::main, &["--threads", "2"]);
    }

    #[test]
    fn tokio_echo() {
        check_echo(super::tokio::main, &[]);
    }

    #[test]
    fn monoio_http() {
        check_http(super::monoio::main, &[]);
        check_http(super::monoio::main, &["--threads", "2"]);
        check_http(super::monoio::main, &["--coop-taskrun"]);
    }

    #[test]
    fn monoio_echo() {
        check_echo(super::monoio::main, &[]);
        check_echo(super::monoio::main, &["--coop-taskrun"]);
    }

    #[test]
    fn zerg_http() {
        for extra in [
            &["--mode", "reactor", "--accept", "per-reactor"][..],
            &[
                "--mode",
                "reactor",
                "--accept",
                "dedicated",
                "--incremental",
            ],
            &["--mode", "runtime", "--accept", "dedicated"],
            &["--reactors", "2"],
        ] {
            check_http(super::zerg::main, extra);
        }
    }

    #[test]
    fn zerg_echo() {
        check_echo(super::zerg::main, &[]);
        check_echo(super::zerg::main, &["--mode", "runtime", "--incremental"]);
    }
}
