//! The replay storm at full size: 100,000 Alipay trade notifications for 20,000 trades (30%
//! delivered twice, all shuffled) sent to two release `trellis serve` processes on one
//! PostgreSQL database, the first killed (SIGKILL) once 40% are answered. Checks every trade
//! applied once and prints the rate; the end-to-end suite runs the same at a tenth.
//!
//! Run (needs PostgreSQL, as `.ci/run` starts it, and the release binary beside the bench):
//! `CARGO_TARGET_DIR=target/bench cargo build --release --bin trellis &&
//!  TRELLIS_TEST_DATABASE_URL=postgres://… CARGO_TARGET_DIR=target/bench
//!  cargo bench -p trellis-tests --bench storm`. Results: `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use trellis_tests::storm::{Storm, run};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(admin_url) = trellis_engine::config::test_database_url_from_env() else {
        eprintln!("TRELLIS_TEST_DATABASE_URL is not set: the storm needs PostgreSQL");
        return;
    };
    let db = trellis_tests::fresh_postgres(&admin_url).await;
    let storm = Storm {
        trades: 20_000,
        notifications: 100_000,
        concurrency: 64,
    };
    let outcome = run(&db.url(), storm).await;
    let trades = i64::try_from(storm.trades).unwrap();
    assert_eq!(outcome.deliveries, storm.notifications, "{outcome:?}");
    assert_eq!(outcome.finished, trades, "{outcome:?}");
    assert_eq!(outcome.succeeded_events, trades, "{outcome:?}");
    assert_eq!(
        outcome.records,
        i64::try_from(outcome.distinct).unwrap(),
        "{outcome:?}"
    );
    println!(
        "{} deliveries ({} distinct) in {:.1} s: {:.0}/s; {} sent again after the kill; \
         {} trades finished, {} payment.succeeded",
        outcome.deliveries,
        outcome.distinct,
        outcome.elapsed.as_secs_f64(),
        outcome.deliveries as f64 / outcome.elapsed.as_secs_f64(),
        outcome.retried,
        outcome.finished,
        outcome.succeeded_events
    );
    db.cleanup().await;
}
