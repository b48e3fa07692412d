//! The workloads (row groups): what drives the server, with which server-side work.

use super::rows::Family;
use super::syscalls::SyscallTool;

/// How a workload drives the server.
#[derive(Clone, Debug)]
pub(crate) enum Load {
    /// wrk, one thread per load CPU, keep-alive, `conns` connections.
    Wrk { conns: usize },
    /// Our load generator with these arguments (port, timing and threads added).
    Gen { args: Vec<String> },
    /// `conns` idle connections: server RSS delta per connection. `0`: as many as the
    /// descriptor limit (`RLIMIT_NOFILE`, inherited by server and load generator) allows.
    Idle { conns: usize },
    /// Server syscalls per request during a load generator run.
    Syscalls {
        tool: SyscallTool,
        args: Vec<String>,
    },
    /// redis-benchmark, `-c conns -P pipeline -t set,get`.
    Redis { conns: usize, pipeline: usize },
    /// h2load `--h1`, `-c conns -m depth` (HTTP/1.1 pipelining depth), http or https by row.
    H2load { conns: usize, depth: usize },
}

/// One row group.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) family: Family,
    /// Server `--workload` (suite rows).
    pub(crate) server: &'static str,
    pub(crate) buf_size: usize,
    pub(crate) load: Load,
    /// The unit of one "request" in the tables.
    pub(crate) unit: &'static str,
    /// Fixed-rate load: throughput is set by the load, CPU per request is the metric.
    pub(crate) paced: bool,
    /// Connections are opened and closed during the run: report CPU per connection too.
    pub(crate) per_conn: bool,
    /// Report the latency distribution (p50/p99/p99.9).
    pub(crate) latency: bool,
    /// Run on half the CPUs with N server threads (machines with four or more CPUs).
    pub(crate) scaled: bool,
    /// Part of `--quick`.
    pub(crate) quick: bool,
}

const KIB: usize = 1024;

fn lg(s: &str) -> Load {
    Load::Gen {
        args: s.split_whitespace().map(String::from).collect(),
    }
}

fn syscalls(tool: SyscallTool) -> Load {
    Load::Syscalls {
        tool,
        // "Under load": as many connections as the keep-alive rows' larger group.
        args: "--mode http --conns 256 --depth 1"
            .split_whitespace()
            .map(String::from)
            .collect(),
    }
}

/// Every workload, in report order. `rate` is the total rate of the fixed-rate rows.
pub(crate) fn workloads(rate: u64) -> Vec<Workload> {
    use Family::*;
    let w = |id, title, family, server, load, unit| Workload {
        id,
        title,
        family,
        server,
        buf_size: 16 * KIB,
        load,
        unit,
        paced: false,
        per_conn: false,
        latency: false,
        scaled: false,
        quick: true,
    };
    let paced = |mut w: Workload| {
        w.paced = true;
        w.latency = true;
        w
    };
    let slow = |mut w: Workload| {
        w.quick = false;
        w
    };
    let per_conn = |mut w: Workload| {
        w.per_conn = true;
        w
    };
    let mut v = vec![
        slow(w(
            "http-c16",
            "HTTP keep-alive, 16 conns (wrk)",
            Suite,
            "http",
            Load::Wrk { conns: 16 },
            "req",
        )),
        w(
            "http-c256",
            "HTTP keep-alive, 256 conns (wrk)",
            Suite,
            "http",
            Load::Wrk { conns: 256 },
            "req",
        ),
        w(
            "http-pipe16-c256",
            "HTTP pipelined x16, 256 conns",
            Suite,
            "http",
            lg("--mode http --conns 256 --depth 16"),
            "req",
        ),
        paced(slow(w(
            "http-rate",
            "HTTP fixed rate, 64 conns",
            Suite,
            "http",
            lg(&format!("--mode http --conns 64 --rate {rate}")),
            "req",
        ))),
        paced(w(
            "http-rate-c4096",
            "HTTP fixed rate, 4,096 conns (open loop)",
            Suite,
            "http",
            lg(&format!("--mode http --conns 4096 --rate {rate}")),
            "req",
        )),
        per_conn(w(
            "http-conn10-c256",
            "HTTP, 10 requests per connection, 256 at a time",
            Suite,
            "http",
            lg("--mode http --conns 256 --reqs-per-conn 10"),
            "req",
        )),
    ];
    v.extend(echo_and_aux_workloads(&w));
    v.extend(family_workloads(w));
    v
}

/// The suite's echo, churn, syscall, idle and scaling workloads.
fn echo_and_aux_workloads(
    w: &impl Fn(&'static str, &'static str, Family, &'static str, Load, &'static str) -> Workload,
) -> Vec<Workload> {
    use Family::*;
    let slow = |mut w: Workload| {
        w.quick = false;
        w
    };
    let per_conn = |mut w: Workload| {
        w.per_conn = true;
        w
    };
    let scaled = |mut w: Workload| {
        w.scaled = true;
        w
    };
    let buf = |mut w: Workload, b| {
        w.buf_size = b;
        w
    };
    vec![
        {
            let mut x = w(
                "echo-64B-c1",
                "echo 64 B, 1 conn",
                Suite,
                "echo",
                lg("--mode echo --conns 1 --size 64"),
                "msg",
            );
            x.latency = true;
            slow(x)
        },
        w(
            "echo-64B-c64",
            "echo 64 B, 64 conns",
            Suite,
            "echo",
            lg("--mode echo --conns 64 --size 64"),
            "msg",
        ),
        slow(w(
            "echo-64B-c1024",
            "echo 64 B, 1,024 conns",
            Suite,
            "echo",
            lg("--mode echo --conns 1024 --size 64"),
            "msg",
        )),
        slow(w(
            "echo-16KiB-c16",
            "echo 16 KiB, 16 conns, 16 KiB buffers",
            Suite,
            "echo",
            lg("--mode echo --conns 16 --size 16KiB"),
            "msg",
        )),
        slow(buf(
            w(
                "echo-1MiB-c4",
                "echo 1 MiB, 4 conns, 1 MiB buffers",
                Suite,
                "echo",
                lg("--mode echo --conns 4 --size 1MiB"),
                "msg",
            ),
            1024 * KIB,
        )),
        // The same transfer through 64 KiB buffers on every server (tokio reads into 64 KiB,
        // zerg's ring buffers are 64 KiB): a receive spans several buffers, which is what
        // receive bundles (the zerg-bundle row) are for.
        slow(buf(
            w(
                "echo-1MiB-c4-64KiB",
                "echo 1 MiB, 4 conns, 64 KiB buffers",
                Suite,
                "echo",
                lg("--mode echo --conns 4 --size 1MiB"),
                "msg",
            ),
            64 * KIB,
        )),
        slow(per_conn(w(
            "churn-c16",
            "connect, 1 request, close (RST); 16 at a time",
            Suite,
            "http",
            lg("--mode http --conns 16 --reqs-per-conn 1"),
            "conn",
        ))),
        w(
            "syscalls-perf",
            "syscalls/request, HTTP 256 conns (perf tracepoint)",
            Suite,
            "http",
            syscalls(SyscallTool::Perf),
            "req",
        ),
        slow(w(
            "syscalls-strace",
            "syscalls/request, HTTP 256 conns (strace -c)",
            Suite,
            "http",
            syscalls(SyscallTool::Strace),
            "req",
        )),
        w(
            "idle-10k",
            "10,000 idle connections",
            Suite,
            "http",
            Load::Idle { conns: 10_000 },
            "conn",
        ),
        slow(w(
            "idle-max",
            "as many idle connections as the descriptor limit allows",
            Suite,
            "http",
            Load::Idle { conns: 0 },
            "conn",
        )),
        scaled(w(
            "scale-http-pipe16",
            "HTTP pipelined x16, 256 conns per server CPU, N reactors",
            Suite,
            "http",
            lg("--mode http --conns 256 --depth 16"),
            "req",
        )),
        scaled(w(
            "scale-echo-64B-c1024",
            "echo 64 B, 1,024 conns, N reactors",
            Suite,
            "echo",
            lg("--mode echo --conns 1024 --size 64"),
            "msg",
        )),
    ]
}

/// The proxy, RESP, hyper and TLS workloads.
fn family_workloads(
    w: impl Fn(&'static str, &'static str, Family, &'static str, Load, &'static str) -> Workload,
) -> Vec<Workload> {
    use Family::*;
    let slow = |mut w: Workload| {
        w.quick = false;
        w
    };
    vec![
        w(
            "proxy-echo-64B-c64",
            "proxy -> echo upstream, 64 B, 64 conns",
            Proxy,
            "echo",
            lg("--mode echo --conns 64 --size 64"),
            "rt",
        ),
        slow(w(
            "proxy-echo-16KiB-c16",
            "proxy -> echo upstream, 16 KiB, 16 conns",
            Proxy,
            "echo",
            lg("--mode echo --conns 16 --size 16KiB"),
            "rt",
        )),
        w(
            "resp-P16-c50",
            "RESP SET+GET, redis-benchmark -P 16, 50 conns",
            Resp,
            "resp",
            Load::Redis {
                conns: 50,
                pipeline: 16,
            },
            "req",
        ),
        w(
            "hyper-pipe16-c256",
            "hyper HTTP/1, pipelined x16, 256 conns",
            Hyper,
            "http",
            lg("--mode http --any-http --conns 256 --depth 16"),
            "req",
        ),
        slow(w(
            "hyper-c256",
            "hyper HTTP/1, keep-alive, 256 conns (wrk)",
            Hyper,
            "http",
            Load::Wrk { conns: 256 },
            "req",
        )),
        w(
            "tls-h1-pipe16-c64",
            "HTTP/1.1 over TLS vs plain, h2load -m 16, 64 conns",
            Tls,
            "http",
            Load::H2load {
                conns: 64,
                depth: 16,
            },
            "req",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_family_has_a_quick_workload() {
        let w = workloads(1000);
        let mut ids: Vec<&str> = w.iter().map(|w| w.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), w.len());
        for f in [
            Family::Suite,
            Family::Proxy,
            Family::Resp,
            Family::Hyper,
            Family::Tls,
        ] {
            assert!(w.iter().any(|w| w.family == f && w.quick), "{f:?}");
        }
    }
}
