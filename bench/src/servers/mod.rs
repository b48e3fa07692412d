//! Peer servers. Each one does exactly the same work (see [`crate::proto`]) on
//! one thread, so that the runner compares the I/O layers and nothing else.

pub(crate) mod monoio;
pub(crate) mod tokio;
pub(crate) mod zerg;

/// How long an accept loop waits after an error such as EMFILE before it
/// accepts again (a tight retry loop would burn the core being measured).
pub(crate) const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

#[cfg(test)]
mod tests {
    //! Every peer answers split and pipelined requests the same way and
    //! echoes large writes byte for byte.

    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::thread;
    use std::time::{Duration, Instant};

    use crate::proto::{REQUEST, RESPONSE};

    type Main = fn(Vec<String>) -> Result<(), String>;

    /// Starts a server on a free port in a background thread (it runs until
    /// the test process exits) and returns the port.
    fn start(main: Main, extra: &[&str]) -> u16 {
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
        let port = start(main, &argv);
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
        let port = start(main, &argv);
        let s = connect(port);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut writer = s.try_clone().unwrap();
        let sent = data.clone();
        let w = thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut got = vec![0; data.len()];
        (&s).read_exact(&mut got).unwrap();
        w.join().unwrap();
        assert!(got == data, "echoed bytes differ");
    }

    #[test]
    fn tokio_http() {
        check_http(super::tokio::main, &[]);
    }

    #[test]
    fn tokio_echo() {
        check_echo(super::tokio::main, &[]);
    }

    #[test]
    fn monoio_http() {
        check_http(super::monoio::main, &[]);
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
