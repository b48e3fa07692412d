//! The examples as a client sees them. Their request framing (`examples/common/http.rs`) and
//! RESP decoding (`examples/resp_proto`) are tested here directly; then each example binary
//! (built by `cargo test` alongside this test) is started on 127.0.0.1 port 0 and attacked:
//! requests split at every byte, pipelined requests with bodies, malformed and oversized
//! requests (400 / 431 / 413 / 501, then a close; RESP protocol errors), a 256 MiB header flood
//! (cut off early, server memory bounded, the next client served), timeouts, and a clean exit on
//! SIGINT.

#[path = "../../examples/common/http.rs"]
mod http;
#[path = "../../examples/resp_proto/mod.rs"]
mod resp_proto;

mod framing;
mod harness;
mod http_examples;
#[cfg(all(feature = "tokio", feature = "hyper"))]
mod hyper_examples;
mod resp;
