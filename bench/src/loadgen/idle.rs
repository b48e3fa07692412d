//! `idle` mode: open every connection (blocking connects in a plain loop; the kernel completes
//! the handshake even before the server accepts), report, hold, exit.

use std::thread;
use std::time::{Duration, Instant};

use super::{Event, Opts, emit};

/// Delay before a failed connect is retried.
const BACKOFF: Duration = Duration::from_millis(10);

pub(crate) fn run(opts: &Opts) -> Result<(), String> {
    let deadline = Instant::now() + opts.duration;
    let mut held = Vec::with_capacity(opts.conns);
    let mut errors = 0u64;
    let addr = opts.addr.into();
    while held.len() < opts.conns && Instant::now() < deadline {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen idle: connect: {e}");
                }
                if errors > 100 {
                    return Err(format!("idle: {errors} connect errors, last: {e}"));
                }
                thread::sleep(BACKOFF);
            }
        }
    }
    emit(&Event::Ready {
        connected: held.len(),
        errors,
    });
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    Ok(())
}
