//! What a plugin-to-plugin call (`plugins.call`, host-api 0.2) costs on top of the callee's own
//! work: a caller route making 20 calls to a callee route that does nothing, against the same
//! caller route making none — the anchor, interleaved in the same run. Per call:
//! (t(20) − t(0)) / 20, which includes the callee's own invocation (a fresh instance, its call)
//! and everything the engine does around it (the plugin door: the merchant, the callee's
//! installation, entitlement, configuration and theme; admission; the commit). The engine runs
//! in this process on SQLite; the caller is reached through its merchant's admin door.
//!
//! Run: `make plugins && CARGO_TARGET_DIR=target/bench cargo bench -p trellis-tests --bench
//! plugin_calls`. Results: `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::time::{Duration, Instant};

use trellis_tests::Engine;
use trellis_tests::fixtures::{branch, entitle};

/// The engine runs on the allocator its binary uses.
#[global_allocator]
static ALLOCATOR: trellis_engine::Allocator = trellis_engine::Allocator;

const ROUNDS: usize = 300;
const CALLS: u32 = 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("calls.db").display()
    );
    let engine = Engine::start(
        &url,
        &[
            ("TRELLIS_EVENTS__DISPATCHER", "false"),
            ("TRELLIS_PAYMENTS__RECONCILE", "false"),
            ("TRELLIS_LOG__LEVEL", "warn"),
        ],
    );
    let branch = branch(&engine, &url, "p1.test").await;
    let pair = (branch.partner.as_str(), branch.agent.as_str());
    let merchants = [branch.merchant.as_str()];
    entitle(
        &branch.root,
        pair,
        &merchants,
        (
            "tests/plugins/neighbours",
            "trellis_fixture_neighbours",
            "test.trellis.caller",
        ),
    )
    .await;
    entitle(
        &branch.root,
        pair,
        &merchants,
        (
            "tests/plugins/neighbours/callee",
            "trellis_fixture_neighbours",
            "test.trellis.callee",
        ),
    )
    .await;
    let route = |n: u32| {
        format!(
            "/api/v1/merchants/{}/plugins/test.trellis.caller/ask-many/{n}",
            branch.merchant
        )
    };
    let time = async |n: u32| {
        let started = Instant::now();
        let answer = branch.root.get(&route(n)).await.ok();
        assert_eq!(answer.body["calls"], n);
        started.elapsed()
    };
    for _ in 0..30 {
        time(0).await;
        time(CALLS).await;
    }
    let (mut none, mut many) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        none.push(time(0).await);
        many.push(time(CALLS).await);
    }
    none.sort();
    many.sort();
    let per_call =
        |p: f64| (micros(percentile(&many, p)) - micros(percentile(&none, p))) / f64::from(CALLS);
    println!(
        "caller route, no call: median {:.0} µs, p99 {:.0} µs",
        micros(percentile(&none, 0.5)),
        micros(percentile(&none, 0.99))
    );
    println!(
        "caller route, {CALLS} calls: median {:.0} µs, p99 {:.0} µs",
        micros(percentile(&many, 0.5)),
        micros(percentile(&many, 0.99))
    );
    println!(
        "per call (callee's invocation included): median {:.0} µs, p99 {:.0} µs",
        per_call(0.5),
        per_call(0.99)
    );
}
