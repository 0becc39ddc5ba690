//! Event delivery throughput: events queued for the `ledger` fixture across the merchants of
//! one partner, each delivery reading two keys (a counter and the event's `seen/` mark) and
//! writing both, committed in one transaction with its `delivered` mark (the fixture cannot
//! leave its invocation, so its runs are optimistic: docs/plugins.md). Engines built by the
//! composition root in this process (release, each on a runtime of its own with two workers, on
//! the same two cores): one on SQLite, the embedded default; and, when
//! `TRELLIS_TEST_DATABASE_URL` names a PostgreSQL server, one and then two on one PostgreSQL
//! database. Each runs twice: across 16 merchants with the default 16 deliveries in flight per
//! engine, and across 64 merchants with 64 in flight (`events.concurrency`). One merchant's
//! deliveries run one at a time (they share its counter), so with 16 merchants at most 16 run
//! at once whatever the engines could do.
//!
//! Measured from the moment the queued deliveries fall due to the last one delivered; the
//! latency of each is from that moment to its delivery (the engine's own `latency_ms`).
//!
//! Run: `make plugins && CARGO_TARGET_DIR=target/bench cargo bench -p trellis-tests --bench
//! delivery` (`TRELLIS_TEST_EVENTS` sets how many events per run, 20,000 by default; text after
//! `--` runs only the legs whose label holds it, e.g. `-- "2 engine(s), 16"`). Results:
//! `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::json;
use trellis_tests::fixtures::{branch, entitle, queue_events};
use trellis_tests::{Engine, create_node};

/// The engine runs on the allocator its binary uses.
#[global_allocator]
static ALLOCATOR: trellis_engine::Allocator = trellis_engine::Allocator;

const LEDGER: (&str, &str, &str) = (
    "tests/plugins/ledger",
    "trellis_fixture_ledger",
    "test.trellis.ledger",
);

async fn scalar(conn: &DatabaseConnection, sql: &str) -> i64 {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .map_or(0, |row| row.try_get_by_index::<i64>(0).unwrap_or(0))
}

async fn latencies(conn: &DatabaseConnection) -> Vec<i64> {
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT latency_ms FROM event_deliveries WHERE status = 'delivered' ORDER BY latency_ms",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| row.try_get_by_index::<i64>(0).unwrap_or(0))
        .collect()
}

/// Delivers `n` events across `merchants` merchants with `engines` engines on the database at
/// `url`, each running as many deliveries at once as there are merchants; prints the rate.
async fn measure(label: &str, url: &str, engines: usize, n: usize, merchant_count: usize) {
    let label = format!("{label}, {merchant_count} merchants");
    let label = label.as_str();
    if !chosen(label) {
        return;
    }
    let concurrency = merchant_count.to_string();
    let env = [
        ("TRELLIS_EVENTS__POLL_MS", "50"),
        ("TRELLIS_EVENTS__CONCURRENCY", concurrency.as_str()),
        ("TRELLIS_PLUGINS__BREAKER_TRAPS", "1000000"),
        ("TRELLIS_LOG__LEVEL", "warn"),
    ];
    let first = Engine::start(url, &env);
    let tree = branch(&first, url, "bench.test").await;
    let mut merchants = vec![tree.merchant.clone()];
    for i in 1..merchant_count {
        merchants.push(
            create_node(
                &tree.root,
                "merchants",
                Some(&tree.agent),
                json!({"name": format!("M{i}")}),
            )
            .await,
        );
    }
    let refs: Vec<&str> = merchants.iter().map(String::as_str).collect();
    let installation = entitle(&tree.root, (&tree.partner, &tree.agent), &refs, LEDGER).await;
    let _others: Vec<Engine> = (1..engines).map(|_| Engine::start(url, &env)).collect();
    let conn = Database::connect(url).await.unwrap();
    // Queued ahead of time, all due at one moment: recording them is not what is measured.
    let due = chrono::Utc::now().timestamp_millis() + 4_000;
    for merchant in &merchants {
        queue_events(
            &conn,
            (&tree.partner, &tree.agent, merchant),
            (&installation, "test.tick"),
            n / merchant_count,
            due,
        )
        .await;
    }
    let total = i64::try_from(n / merchant_count * merchant_count).unwrap();
    let wait = due - chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    let started = Instant::now();
    let delivered = "SELECT COUNT(*) FROM event_deliveries WHERE status = 'delivered'";
    // Polled rarely, so that counting takes little from the engines; the end is the last
    // delivery's own time.
    while scalar(&conn, delivered).await < total {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{label}: {} of {total} delivered in 10 minutes",
            scalar(&conn, delivered).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last = scalar(&conn, "SELECT MAX(delivered_at) FROM event_deliveries").await;
    let elapsed = Duration::from_millis(u64::try_from(last - due).unwrap_or(0));
    let seen = scalar(
        &conn,
        &format!("SELECT COUNT(*) FROM plugin_kv WHERE installation_id = '{installation}' AND key LIKE 'seen/%'"),
    )
    .await;
    assert_eq!(seen, total, "{label}: every event handled once");
    // And counted once: no update lost, whichever engine ran it, however it started.
    let count = match conn.get_database_backend() {
        sea_orm::DbBackend::Postgres => "CAST(convert_from(value, 'UTF8') AS BIGINT)",
        _ => "CAST(CAST(value AS TEXT) AS INTEGER)",
    };
    let counted = scalar(
        &conn,
        &format!("SELECT CAST(SUM({count}) AS BIGINT) FROM plugin_kv WHERE installation_id = '{installation}' AND key = 'handled'"),
    )
    .await;
    assert_eq!(counted, total, "{label}: every event counted once");
    let latency = latencies(&conn).await;
    let at = |q: f64| latency[((latency.len() - 1) as f64 * q) as usize];
    // How the engines shared the work: each delivery keeps its last holder.
    let shares = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) FROM event_deliveries WHERE status = 'delivered' \
             GROUP BY lease_owner ORDER BY COUNT(*) DESC",
        ))
        .await
        .unwrap();
    let shares: Vec<String> = shares
        .iter()
        .map(|row| row.try_get_by_index::<i64>(0).unwrap_or(0).to_string())
        .collect();
    // Deliveries that took more than one attempt (a failed one waits for its backoff): what a
    // straggling tail may be made of. (Delivery clears the last error, so only the count.)
    let retried = scalar(
        &conn,
        "SELECT COUNT(*) FROM event_deliveries WHERE attempts > 1",
    )
    .await;
    let max = latency.last().copied().unwrap_or(0);
    println!(
        "{label}: {total} deliveries in {:.2} s: {:.0}/s; latency from due: median {} ms, p99 {} ms, max {max} ms{}{}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        if engines > 1 {
            format!("; by engine: {}", shares.join(" + "))
        } else {
            String::new()
        },
        if retried > 0 {
            format!("; attempted more than once: {retried}")
        } else {
            String::new()
        }
    );
    conn.close().await.unwrap();
}

/// Whether the leg `label` runs: every leg, unless the command line names some text of the
/// labels to run (`cargo bench … -- "2 engine"`).
fn chosen(label: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| label.contains(f.as_str()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = trellis_engine::config::test_events_from_env().unwrap_or(20_000);
    for merchants in [16, 64] {
        let sqlite = trellis_tests::sqlite();
        measure("SQLite, one engine", &sqlite.url(), 1, n, merchants).await;
        if let Some(admin_url) = trellis_engine::config::test_database_url_from_env() {
            for engines in [1, 2] {
                let db = trellis_tests::fresh_postgres(&admin_url).await;
                let label = format!("PostgreSQL, {engines} engine(s)");
                measure(&label, &db.url(), engines, n, merchants).await;
                db.cleanup().await;
            }
        }
    }
}
