//! End-to-end tests: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking, with the value in the message"
)]

mod alipay;
mod alipay_conformance;
mod browser;
mod consoles;
mod plugin_atomicity;
mod plugin_breaker;
mod kept_reads;
mod plugin_kv;
mod plugin_optimism;
mod platform;
mod plugins;
mod python;
mod foundation;
mod host_api_v02;
mod make_run;
mod membership;
mod payments;
mod payments_edges;
mod sandbox;
mod rbac_property;
mod security;
mod security_certs;
mod security_events;
mod security_gateway;
mod security_notify;
mod tenancy;
