//! `results.md`: the tables.

use std::fmt::Write as _;
use std::path::Path;

use super::{Cell, Group, GroupKind, Machine, RunRecord, fmt_us, num, ratio, show, si};
use crate::runner::record::{LOAD_SATURATED, SERVER_SATURATED};

fn pct(x: f64) -> String {
    format!("{x:.0}%")
}

pub(super) fn markdown(
    machine: &Machine,
    groups: &[Group],
    records: &[RunRecord],
    skipped: &[(String, String)],
    raw: &Path,
) -> String {
    let mut s = String::from("# zerg benchmark results\n\n");
    s.push_str(&machine.markdown());
    let _ = writeln!(
        s,
        "\nRatios (×) are against the first row of each workload, median to median. \"server \
         CPU µs\" is the server's utime+stime (all threads, /proc/PID/stat) over the measured \
         window divided by what it served; \"load µs\" the same for the load side (load \
         generator, plus a proxy's upstream when it shares the load CPU). \"server %\" and \
         \"load %\" are the shares of their CPUs each side used.\n\n\
         **Saturation rule.** A run is *server-bound* when the server used ≥ {:.0}% of its \
         CPUs and the load side < {:.0}% of its own; only server-bound runs count in \
         \"throughput\" and its ×. Otherwise the run is *client-bound* (load side ≥ {:.0}%: \
         the load generator's limit was measured), *unsaturated* (neither side full: \
         latency-bound) or *paced* (fixed-rate load); its throughput is shown in \
         parentheses and is not a claim. CPU per request (and its ×) is reported for every \
         run: the server's cost of one request does not depend on who was saturated.\n\n\
         \"disturbed\" runs (other tasks used > 20% of the server's or the load side's CPUs, \
         from /proc/stat) are left out of the medians when the cell has clean runs, and \
         counted in \"runs\". Raw runs: `{}`.\n",
        SERVER_SATURATED * 100.0,
        LOAD_SATURATED * 100.0,
        LOAD_SATURATED * 100.0,
        raw.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    throughput_table(&mut s, groups, records);
    conn_table(&mut s, groups, records);
    latency_table(&mut s, groups, records);
    tls_table(&mut s, groups, records);
    idle_table(&mut s, groups, records);
    syscall_table(&mut s, groups, records);
    s.push_str("\nWorkloads:\n\n");
    for g in groups {
        let _ = writeln!(s, "- `{}`: {} (unit: {})", g.id, g.title, g.unit);
    }
    let failures: Vec<&RunRecord> = records.iter().filter(|r| r.error.is_some()).collect();
    if !skipped.is_empty() || !failures.is_empty() {
        s.push_str("\n## Skipped, not measured and failed\n\n");
        for (what, why) in skipped {
            let _ = writeln!(s, "- skipped `{what}`: {why}");
        }
        for r in failures {
            let _ = writeln!(
                s,
                "- failed `{}` / `{}` rep {}: {}",
                r.workload,
                r.server,
                r.rep + 1,
                r.error.as_deref().unwrap_or("")
            );
        }
    }
    s
}

fn throughput_groups(groups: &[Group]) -> impl Iterator<Item = &Group> {
    groups.iter().filter(|g| g.kind == GroupKind::Throughput)
}

fn throughput_table(s: &mut String, groups: &[Group], records: &[RunRecord]) {
    s.push_str("## Throughput and CPU per request\n\n");
    s.push_str(
        "| workload | server | runs | saturation | throughput /s | × | server CPU µs/unit | × | load µs/unit | server % | load % | p99 | RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in throughput_groups(groups) {
        let Some(base) = g.servers.first() else {
            continue;
        };
        let base_cell = Cell::new(records, &g.id, base);
        let base_tp = base_cell.throughput();
        let base_cpu = base_cell.spread(|r| r.cpu_us_per_req);
        for srv in &g.servers {
            let c = Cell::new(records, &g.id, srv);
            let tp = c.throughput();
            let cpu = c.spread(|r| r.cpu_us_per_req);
            let tp_text = match tp {
                Some(t) => t.show(si),
                None => c
                    .spread(|r| r.throughput)
                    .map_or("–".into(), |t| format!("({})", si(t.median))),
            };
            let _ = writeln!(
                s,
                "| {} | {srv} | {} | {} | {tp_text} | {} | {} | {} | {} | {} | {} | {} | {} |",
                g.id,
                c.runs(),
                c.saturation(),
                ratio(tp, base_tp),
                show(cpu, num),
                ratio(cpu, base_cpu),
                show(c.spread(|r| r.load_us_per_req), num),
                show(c.spread(|r| r.server_cpu_util * 100.0), pct),
                show(c.spread(|r| r.load_cpu_util * 100.0), pct),
                c.spread_opt(|r| r.p99_us)
                    .map_or("–".into(), |x| fmt_us(x.median)),
                c.spread(|r| r.rss_kib as f64 / 1024.0)
                    .map_or("–".into(), |x| format!("{:.1}", x.median)),
            );
        }
    }
}

fn conn_table(s: &mut String, groups: &[Group], records: &[RunRecord]) {
    let gs: Vec<&Group> = throughput_groups(groups).filter(|g| g.per_conn).collect();
    if gs.is_empty() {
        return;
    }
    s.push_str(
        "\n## Connection cost\n\n\
         Workloads that open and close connections while they run (each closed with RST after \
         its requests). CPU per connection = server CPU over the window ÷ connections \
         completed in it (so it includes that connection's requests).\n\n\
         | workload | server | runs | req/s | conns/s | server CPU µs/req | server CPU µs/conn | × | server % | load % |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in gs {
        let base = Cell::new(records, &g.id, &g.servers[0]).spread_opt(|r| r.cpu_us_per_conn);
        for srv in &g.servers {
            let c = Cell::new(records, &g.id, srv);
            let per_conn = c.spread_opt(|r| r.cpu_us_per_conn);
            let _ = writeln!(
                    s,
                    "| {} | {srv} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    g.id,
                    c.runs(),
                    show(c.spread(|r| r.throughput), si),
                    show(
                        c.spread(
                            |r| r.conns_completed as f64 * r.throughput / r.requests.max(1) as f64
                        ),
                        si
                    ),
                    show(c.spread(|r| r.cpu_us_per_req), num),
                    show(per_conn, num),
                    ratio(per_conn, base),
                    show(c.spread(|r| r.server_cpu_util * 100.0), pct),
                    show(c.spread(|r| r.load_cpu_util * 100.0), pct),
                );
        }
    }
}

fn latency_table(s: &mut String, groups: &[Group], records: &[RunRecord]) {
    let gs: Vec<&Group> = throughput_groups(groups).filter(|g| g.latency).collect();
    if gs.is_empty() {
        return;
    }
    s.push_str(
        "\n## Latency\n\n\
         Our load generator; fixed-rate rows are open loop: each request has an intended send \
         time (`start + i/rate`) and its latency counts from that time to its response, so a \
         server stall is not hidden by the generator waiting (no coordinated omission). \
         Median of the runs' percentiles.\n\n\
         | workload | server | runs | req/s | p50 | p99 | p99.9 | server CPU µs/req | × | server % |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in gs {
        let base = Cell::new(records, &g.id, &g.servers[0]).spread(|r| r.cpu_us_per_req);
        for srv in &g.servers {
            let c = Cell::new(records, &g.id, srv);
            let cpu = c.spread(|r| r.cpu_us_per_req);
            let p = |f: fn(&RunRecord) -> Option<f64>| {
                c.spread_opt(f).map_or("–".into(), |x| fmt_us(x.median))
            };
            let _ = writeln!(
                s,
                "| {} | {srv} | {} | {} | {} | {} | {} | {} | {} | {} |",
                g.id,
                c.runs(),
                show(c.spread(|r| r.throughput), si),
                p(|r| r.p50_us),
                p(|r| r.p99_us),
                p(|r| r.p999_us),
                show(cpu, num),
                ratio(cpu, base),
                show(c.spread(|r| r.server_cpu_util * 100.0), pct),
            );
        }
    }
}

/// The plain row a TLS row is compared with: `X-tls` -> `X`, or `zerg-tls` -> `zerg-hyper`.
fn plain_of<'a>(tls: &str, servers: &'a [String]) -> Option<&'a String> {
    let stem = tls.strip_suffix("-tls")?;
    servers
        .iter()
        .find(|s| *s == stem)
        .or_else(|| servers.iter().find(|s| **s == format!("{stem}-hyper")))
}

fn tls_table(s: &mut String, groups: &[Group], records: &[RunRecord]) {
    let gs: Vec<&Group> = throughput_groups(groups)
        .filter(|g| g.servers.iter().any(|n| n.ends_with("-tls")))
        .collect();
    if gs.is_empty() {
        return;
    }
    s.push_str(
        "\n## TLS cost per request\n\n\
         Server CPU per request over TLS minus the same server in plain HTTP, same load \
         (medians; the TLS runs include the handshakes of the load's connections).\n\n\
         | workload | TLS row | plain row | TLS µs/req | plain µs/req | TLS cost µs/req | × |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for g in gs {
        for tls in g.servers.iter().filter(|n| n.ends_with("-tls")) {
            let Some(plain) = plain_of(tls, &g.servers) else {
                continue;
            };
            let t = Cell::new(records, &g.id, tls).spread(|r| r.cpu_us_per_req);
            let p = Cell::new(records, &g.id, plain).spread(|r| r.cpu_us_per_req);
            let cost = match (t, p) {
                (Some(t), Some(p)) => num(t.median - p.median),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {tls} | {plain} | {} | {} | {cost} | {} |",
                g.id,
                show(t, num),
                show(p, num),
                ratio(t, p),
            );
        }
    }
}

fn idle_table(s: &mut String, groups: &[Group], records: &[RunRecord]) {
    let idle: Vec<&Group> = groups
        .iter()
        .filter(|g| g.kind == GroupKind::Idle)
        .collect();
    if idle.is_empty() {
        return;
    }
    s.push_str(
        "\n## Memory per idle connection\n\n\
         Server VmRSS after all connections are accepted minus before, divided by the \
         connections (no request sent). Kernel socket memory is not in RSS.\n\n\
         | workload | server | runs | conns | RSS before MiB | RSS after MiB | bytes/conn | × |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for g in idle {
        let base_b = Cell::new(records, &g.id, &g.servers[0]).spread(|r| r.bytes_per_conn);
        for srv in &g.servers {
            let c = Cell::new(records, &g.id, srv);
            let b = c.spread(|r| r.bytes_per_conn);
            let _ = writeln!(
                s,
                "| {} | {srv} | {} | {} | {} | {} | {} | {} |",
                g.id,
                c.runs(),
                show(c.spread(|r| r.idle_conns as f64), |x| format!("{x:.0}")),
                show(c.spread(|r| r.rss_before_kib as f64 / 1024.0), |x| format!(
                    "{x:.1}"
                )),
                show(c.spread(|r| r.rss_kib as f64 / 1024.0), |x| format!(
                    "{x:.1}"
                )),
                show(b, |x| format!("{x:.0}")),
                ratio(b, base_b),
            );
        }
    }
}

fn syscall_table(s: &mut String, groups: &[Group], records: &[RunRecord]) {
    let sys: Vec<&Group> = groups
        .iter()
        .filter(|g| matches!(g.kind, GroupKind::Syscalls(_)))
        .collect();
    if sys.is_empty() {
        return;
    }
    s.push_str(
        "\n## Syscalls per request\n\n\
         Server syscalls (all threads) during a load generator run of HTTP keep-alive, 256 \
         connections, depth 1, divided by the responses. `perf` counts the \
         raw_syscalls:sys_enter tracepoint (the server runs at nearly full speed); \
         `strace -c -f` stops the server on every call (it runs several times slower, which \
         may change how much each call batches) but names the calls. An io_uring_enter counts \
         once however many operations it submits or reaps.\n\n\
         | workload | server | runs | syscalls/req | × | req/s under the tool | most frequent (strace) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for g in sys {
        let base_v = Cell::new(records, &g.id, &g.servers[0]).spread(|r| r.syscalls_per_req);
        for srv in &g.servers {
            let c = Cell::new(records, &g.id, srv);
            let v = c.spread(|r| r.syscalls_per_req);
            let top =
                c.ok.first()
                    .map(|r| r.top_syscalls.clone())
                    .unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {srv} | {} | {} | {} | {} | {} |",
                g.id,
                c.runs(),
                show(v, |x| format!("{x:.3}")),
                ratio(v, base_v),
                show(c.spread(|r| r.throughput), si),
                if top.is_empty() { "–".into() } else { top },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_rows_find_their_plain_twin() {
        let servers: Vec<String> = ["tokio-hyper", "tokio-hyper-tls", "zerg-hyper", "zerg-tls"]
            .map(String::from)
            .into();
        assert_eq!(
            plain_of("tokio-hyper-tls", &servers).unwrap(),
            "tokio-hyper"
        );
        assert_eq!(plain_of("zerg-tls", &servers).unwrap(), "zerg-hyper");
        assert!(plain_of("zerg-hyper", &servers).is_none());
    }
}
