//! Configuration checks.

use super::*;
use crate::Error;

fn field_of(err: Error) -> String {
    match err {
        Error::Config(c) => c.field().to_string(),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn defaults_are_valid_and_small() {
    let opts = EngineOptions::default();
    opts.validate().unwrap();
    // A default one-reactor engine reserves at most 64 MiB of receive buffers.
    assert!(opts.reactor_config(0).receive_memory() <= 64 << 20);
}

#[test]
fn buffer_ring_entries_must_be_power_of_two() {
    let opts = EngineOptions {
        reactor_configs: vec![ReactorConfig {
            buffer_ring_entries: 1000,
            ..ReactorConfig::default()
        }],
        ..EngineOptions::default()
    };
    let err = opts.validate().unwrap_err();
    let msg = err.to_string();
    assert_eq!(field_of(err), "buffer_ring_entries");
    assert!(msg.contains("power of two"), "{msg}");
}

#[test]
fn mismatched_reactor_configs_are_rejected() {
    let opts = EngineOptions {
        reactor_count: 3,
        reactor_configs: vec![ReactorConfig::default(); 2],
        ..EngineOptions::default()
    };
    assert_eq!(field_of(opts.validate().unwrap_err()), "reactor_configs");
}

#[test]
fn one_reactor_config_applies_to_all() {
    let rc = ReactorConfig {
        recv_buffer_size: 4096,
        ..ReactorConfig::default()
    };
    let opts = EngineOptions {
        reactor_count: 4,
        reactor_configs: vec![rc.clone()],
        ..EngineOptions::default()
    };
    opts.validate().unwrap();
    assert_eq!(opts.reactor_config(3), &rc);
}

#[test]
fn sqpoll_excludes_defer_taskrun() {
    let rc = ReactorConfig {
        sqpoll: true,
        ..ReactorConfig::default()
    };
    assert_eq!(field_of(rc.validate().unwrap_err()), "sqpoll");
    let rc = ReactorConfig {
        sqpoll: true,
        defer_taskrun: false,
        sq_cpu: Some(0),
        ..ReactorConfig::default()
    };
    rc.validate().unwrap();
}

#[test]
fn address_family_must_match_ip_version() {
    let mut opts = EngineOptions::default();
    opts.acceptor.ip_version = IpVersion::Ipv6;
    assert_eq!(field_of(opts.validate().unwrap_err()), "ip");
    opts.ip = "::1".parse().unwrap();
    opts.validate().unwrap();
}

#[test]
fn min_wait_must_be_a_short_positive_wait() {
    for bad in [
        Duration::ZERO,
        Duration::from_nanos(500),
        Duration::from_secs(2),
    ] {
        let rc = ReactorConfig {
            min_wait: Some(bad),
            ..ReactorConfig::default()
        };
        assert_eq!(field_of(rc.validate().unwrap_err()), "min_wait", "{bad:?}");
    }
    for good in [
        None,
        Some(Duration::from_micros(1)),
        Some(Duration::from_secs(1)),
    ] {
        let rc = ReactorConfig {
            min_wait: good,
            ..ReactorConfig::default()
        };
        rc.validate().unwrap();
    }
}
