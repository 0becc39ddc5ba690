//! An invocation's kv writes and emitted events commit together when it succeeds and not at
//! all when it fails, whatever the failure; its reads see its own writes; and compare-and-swap
//! keeps its meaning when many invocations race on one key. On both databases, through the
//! engine's own doors: a merchant's admin route and an event delivery.

use std::collections::BTreeSet;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;
use trellis_tests::{Api, Engine, databases, eventually, fixtures};

const ATOMIC: &str = "test.trellis.atomic";

async fn count(conn: &DatabaseConnection, sql: &str) -> i64 {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .map_or(0, |row| row.try_get_by_index::<i64>(0).unwrap_or(0))
}

/// A merchant entitled to the atomic fixture; returns (root client, merchant, installation).
async fn set_up(engine: &Engine, url: &str) -> (Api, String, String) {
    let branch = fixtures::branch(engine, url, "p.test").await;
    let installation = fixtures::entitle(
        &branch.root,
        (&branch.partner, &branch.agent),
        &[&branch.merchant],
        ("tests/plugins/atomic", "trellis_fixture_atomic", ATOMIC),
    )
    .await;
    (branch.root, branch.merchant, installation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invocation_keeps_no_write_and_no_event_and_a_successful_one_keeps_all() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(
            &db.url(),
            &[
                // Every failure below is the plugin's: none may suspend it for the next.
                ("TRELLIS_PLUGINS__BREAKER_TRAPS", "100"),
                ("TRELLIS_EVENTS__POLL_MS", "50"),
                ("TRELLIS_EVENTS__BACKOFF_FIRST_SECS", "1"),
                ("TRELLIS_EVENTS__MAX_ATTEMPTS", "2"),
            ],
        );
        let (root, merchant, installation) = set_up(&engine, &db.url()).await;
        let route = |path: &str| format!("/api/v1/merchants/{merchant}/plugins/{ATOMIC}{path}");
        let conn = sea_orm::Database::connect(db.url()).await.unwrap();

        // Each failure mode after the same writes and emission: the plugin's own error, a
        // panic, the CPU budget, the memory cap, the kv operation cap, the emission cap, and an
        // answer over the output cap.
        for mode in [
            "error",
            "panic",
            "cpu",
            "memory",
            "kv_ops",
            "emit_flood",
            "big",
        ] {
            let failed = root
                .post(&route(&format!("/apply/{mode}/{mode}-1")), json!({}))
                .await;
            assert!(
                failed.status >= 400,
                "{label}: {mode} should fail: {failed:?}"
            );
        }
        let state = root.get(&route("/state")).await.ok();
        assert_eq!(
            (state.body["applied"].as_i64(), state.body["seen"].as_i64()),
            (Some(0), Some(0)),
            "{label}: nothing of a failed invocation is kept: {:?}",
            state.body
        );
        let events = "SELECT COUNT(*) FROM events WHERE kind = 'atomic.applied'";
        assert_eq!(
            count(&conn, events).await,
            0,
            "{label}: no event of a failed invocation"
        );

        // The same work succeeding keeps everything at once, its reads having seen its writes.
        root.post(&route("/apply/ok/good-1"), json!({})).await.ok();
        let state = root.get(&route("/state")).await.ok();
        assert_eq!(
            (state.body["applied"].as_i64(), state.body["seen"].as_i64()),
            (Some(1), Some(1)),
            "{label}: {:?}",
            state.body
        );
        assert_eq!(count(&conn, events).await, 1, "{label}: its event is kept");

        // Through the event door: a delivery that fails every attempt ends dead with nothing
        // kept; one that succeeds is marked delivered with its writes and its event.
        for mode in ["error", "ok"] {
            root.post(
                &format!("/api/v1/merchants/{merchant}/events"),
                json!({"kind": "atomic.apply", "payload": {"mode": mode}}),
            )
            .await
            .ok();
        }
        eventually(Duration::from_secs(30), "both deliveries end", || {
            let conn = conn.clone();
            async move {
                let ended = count(
                    &conn,
                    "SELECT COUNT(*) FROM event_deliveries WHERE kind = 'atomic.apply' AND status IN ('delivered', 'dead')",
                )
                .await;
                if ended == 2 {
                    Ok(())
                } else {
                    Err(format!("{ended} of 2 ended"))
                }
            }
        })
        .await;
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM event_deliveries WHERE kind = 'atomic.apply' AND status = 'dead'"
            )
            .await,
            1,
            "{label}"
        );
        let state = root.get(&route("/state")).await.ok();
        assert_eq!(
            (state.body["applied"].as_i64(), state.body["seen"].as_i64()),
            (Some(2), Some(2)),
            "{label}: {:?}",
            state.body
        );
        assert_eq!(count(&conn, events).await, 2, "{label}");

        // The merchant's event log shows what was kept, with its payloads; nothing of the
        // failures.
        let log = root
            .get(&format!(
                "/api/v1/merchants/{merchant}/events?source=plugin:{ATOMIC}"
            ))
            .await
            .ok();
        assert_eq!(log.body["total"], 2, "{label}: {:?}", log.body);
        let items = log.body["items"].as_array().unwrap();
        assert!(
            items
                .iter()
                .all(|e| e["kind"] == "atomic.applied" && e["payload"]["applied"].is_i64()),
            "{label}: {items:?}"
        );
        assert!(
            items.iter().any(|e| e["payload"]["id"] == "good-1"),
            "{label}: {items:?}"
        );
        let too_many = root
            .get(&format!(
                "/api/v1/events?merchant_id={merchant}&per_page=51"
            ))
            .await;
        assert_eq!(too_many.status, 422, "{label}: {too_many:?}");

        // What the namespace's usage row says is what it holds.
        let rows = count(
            &conn,
            &format!("SELECT COUNT(*) FROM plugin_kv WHERE installation_id = '{installation}' AND scope_id = '{merchant}'"),
        )
        .await;
        let charged = count(
            &conn,
            &format!("SELECT keys FROM plugin_kv_usage WHERE installation_id = '{installation}' AND scope_id = '{merchant}'"),
        )
        .await;
        assert_eq!((rows, charged), (4, 4), "{label}: seen ×2, applied, last");
        conn.close().await.unwrap();
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_read_modify_writes_lose_no_update() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &[]);
        let (root, merchant, _) = set_up(&engine, &db.url()).await;
        let route = format!("/api/v1/merchants/{merchant}/plugins/{ATOMIC}/count");
        // Each request reads the counter and swaps in one more, with no retry of its own; the
        // engine runs again whichever lost the race at commit.
        let mut racing = Vec::new();
        for _ in 0..24 {
            let root = root.clone();
            let route = route.clone();
            racing.push(tokio::spawn(
                async move { root.post(&route, json!({})).await },
            ));
        }
        let mut values = BTreeSet::new();
        let mut conflicts = 0;
        for answer in racing {
            let answer = answer.await.unwrap();
            match answer.status {
                200 => assert!(
                    values.insert(answer.body.as_i64().unwrap()),
                    "{label}: two requests counted the same value: {answer:?}"
                ),
                409 => {
                    assert_eq!(answer.body["code"], "plugin_conflict", "{label}");
                    conflicts += 1;
                }
                _ => panic!("{label}: {answer:?}"),
            }
        }
        let counted = i64::try_from(values.len()).unwrap();
        assert_eq!(
            values,
            (1..=counted).collect(),
            "{label}: every success counted one more"
        );
        let state = root
            .get(&format!(
                "/api/v1/merchants/{merchant}/plugins/{ATOMIC}/state"
            ))
            .await
            .ok();
        assert_eq!(
            state.body["counter"].as_i64(),
            Some(counted),
            "{label}: the counter is the number of successes ({conflicts} gave up)"
        );
        drop(engine);
        db.cleanup().await;
    }
}
