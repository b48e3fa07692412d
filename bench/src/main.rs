//! zerg benchmark suite: peer servers, a load generator and a runner.
//!
//! Run everything (builds first; the full run is several hundred runs, see bench/README.md):
//!
//! ```text
//! bench/run.sh                 # builds, then runs `zerg-bench all`
//! bench/run.sh --quick         # every row once, under three minutes, for a smoke test
//! ```
//!
//! Subcommands (each one is also usable by hand):
//!
//! ```text
//! zerg-bench tokio       --port P --workload http|echo [--buf-size N] [--threads N]
//! zerg-bench monoio      --port P --workload http|echo [--buf-size N] [--coop-taskrun] [--threads N]
//! zerg-bench zerg        --port P --workload http|echo [--buf-size N] [--mode reactor|runtime]
//!                        [--accept dedicated|per-reactor] [--incremental] [--reactors N]
//! zerg-bench tokio-proxy --port P --upstream HOST:PORT
//! zerg-bench tokio-resp  --port P
//! zerg-bench tokio-hyper --port P [--tls]
//! zerg-bench loadgen     --port P --mode echo|http|churn|idle --conns N [--depth D] [--size B]
//!                        [--rate R] [--reqs-per-conn K] [--any-http] [--batch N]
//!                        [--warmup S] [--duration S] [--threads T]
//! zerg-bench micro       [--iters N] [--reps R]   (timers, local tasks, tokio context: ns/op)
//! zerg-bench all         [--quick] [--reps N] [--warmup S] [--duration S] [--rate R]
//!                        [--only a,b] [--servers a,b] [--out DIR] [--examples DIR]
//! ```
//!
//! See `bench/README.md` for the method and its limits.

mod args;
mod loadgen;
mod micro;
mod proto;
mod runner;
mod servers;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let Some(cmd) = argv.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = argv.collect();
    let result = match cmd.as_str() {
        "tokio" => servers::tokio::main(rest),
        "monoio" => servers::monoio::main(rest),
        "zerg" => servers::zerg::main(rest),
        "tokio-proxy" => servers::proxy::main(rest),
        "tokio-resp" => servers::resp::main(rest),
        "tokio-hyper" => servers::hyper::main(rest),
        "loadgen" => loadgen::main(rest),
        "micro" => micro::main(rest),
        "all" | "run" => runner::main(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown subcommand {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerg-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage:
  zerg-bench tokio       --port P --workload http|echo [--buf-size N] [--threads N]
  zerg-bench monoio      --port P --workload http|echo [--buf-size N] [--coop-taskrun] [--threads N]
  zerg-bench zerg        --port P --workload http|echo [--buf-size N] [--mode reactor|runtime]
                         [--accept dedicated|per-reactor] [--incremental] [--reactors N]
  zerg-bench tokio-proxy --port P --upstream HOST:PORT
  zerg-bench tokio-resp  --port P
  zerg-bench tokio-hyper --port P [--tls]
  zerg-bench loadgen     --port P --mode echo|http|churn|idle --conns N [--depth D] [--size B]
                         [--rate R] [--reqs-per-conn K] [--any-http] [--batch N]
                         [--warmup SECS] [--duration SECS] [--threads T]
  zerg-bench micro       [--iters N] [--reps R]
  zerg-bench all         [--quick] [--reps N] [--warmup SECS] [--duration SECS] [--rate R]
                         [--only WORKLOAD,..] [--servers NAME,..] [--out DIR] [--examples DIR]";
