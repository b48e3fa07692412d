//! Parsing wrk 4.x output (`--latency`).

/// What the runner takes from a wrk run.
#[derive(Debug, PartialEq)]
pub(crate) struct WrkOutput {
    pub(crate) requests: u64,
    pub(crate) requests_per_s: f64,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    /// Socket errors (connect, read, write, timeout) and non-2xx responses.
    pub(crate) errors: u64,
}

pub(crate) fn parse(out: &str) -> Result<WrkOutput, String> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0;
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if l.contains(" requests in ") {
            requests = l.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(v) = l.strip_prefix("50%") {
            p50 = duration_us(v.trim());
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = duration_us(v.trim());
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(WrkOutput {
        requests: requests.ok_or("no 'requests in' line")?,
        requests_per_s: rps.ok_or("no 'Requests/sec' line")?,
        p50_us: p50,
        p99_us: p99,
        errors,
    })
}

/// "95.12us", "1.20ms", "2.00s", "3.00m" to microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let units = [
        ("us", 1.0),
        ("ms", 1e3),
        ("s", 1e6),
        ("m", 60e6),
        ("h", 3600e6),
    ];
    units.iter().find_map(|(u, mult)| {
        let n = s.strip_suffix(u)?;
        n.parse::<f64>().ok().map(|n| n * mult)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_4() {
        let out = "Running 2s test @ http://127.0.0.1:8080/plaintext
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    95.12us   20.00us   1.00ms   90.00%
    Req/Sec   165.00k     5.00k  170.00k    80.00%
  Latency Distribution
     50%   90.00us
     75%  100.00us
     90%  110.00us
     99%    1.50ms
  330000 requests in 2.00s, 25.60MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec: 165000.00
Transfer/sec:     12.80MB
";
        let w = parse(out).unwrap();
        assert_eq!(
            w,
            WrkOutput {
                requests: 330000,
                requests_per_s: 165000.0,
                p50_us: Some(90.0),
                p99_us: Some(1500.0),
                errors: 3,
            }
        );
    }
}
