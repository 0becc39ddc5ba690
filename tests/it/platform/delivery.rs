//! Events through the outbox with real engines: two engines deliver each event once, a killed
//! one loses none, and a failing delivery is retried, then dead, and can be redelivered.

use super::*;

#[tokio::test]
async fn two_engines_deliver_every_event_once_per_installation_and_a_killed_engine_loses_none() {
    for db in databases().await {
        // 2,000 events per database in the suite; `TRELLIS_TEST_EVENTS=10000` runs the full
        // scale (docs/benchmarks.md, event delivery).
        let n = trellis_engine::config::test_events_from_env().unwrap_or(2_000) / 4 * 4;
        let label = db.label();
        let env = [
            ("TRELLIS_EVENTS__POLL_MS", "50"),
            ("TRELLIS_EVENTS__LEASE_SECS", "3"),
            ("TRELLIS_EVENTS__BACKOFF_FIRST_SECS", "1"),
            // On a starved machine a few wall-clock traps would open the breaker and postpone
            // every delivery by its 15-minute cooldown; what is tested here is delivery, not it.
            ("TRELLIS_PLUGINS__BREAKER_TRAPS", "1000000"),
        ];
        let mut first = Engine::spawn(&db.url(), &env);
        create_platform_admin(&db.url(), ROOT, PASSWORD);
        let root = Api::new(&first, CONSOLE).login(ROOT, PASSWORD).await;
        let partner = node(
            &root,
            "partners",
            None,
            json!({"name": "P", "domains": ["p.test"]}),
        )
        .await;
        let agent = node(&root, "agents", Some(&partner), json!({"name": "A"})).await;
        // Four merchants, four kv namespaces: deliveries finishing together commit as groups.
        let mut merchants = Vec::new();
        for name in ["M1", "M2", "M3", "M4"] {
            merchants.push(node(&root, "merchants", Some(&agent), json!({"name": name})).await);
        }
        let refs: Vec<&str> = merchants.iter().map(String::as_str).collect();
        let installation = trellis_tests::fixtures::entitle(
            &root,
            (&partner, &agent),
            &refs,
            (
                "tests/plugins/ledger",
                "trellis_fixture_ledger",
                "test.trellis.ledger",
            ),
        )
        .await;

        let conn = sea_orm::Database::connect(db.url()).await.unwrap();
        for merchant in &merchants {
            trellis_tests::fixtures::queue_events(
                &conn,
                (&partner, &agent, merchant),
                (&installation, "test.tick"),
                n / merchants.len(),
                chrono::Utc::now().timestamp_millis(),
            )
            .await;
        }
        let second = Engine::spawn(&db.url(), &env);
        let delivered_sql = "SELECT COUNT(*) FROM event_deliveries WHERE status = 'delivered'";

        // Kill the first engine once it is well into the work: its claimed deliveries must be
        // picked up by the second once their leases end.
        let started = Instant::now();
        while count(&conn, delivered_sql).await < i64::try_from(n / 10).unwrap() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{label}: no progress"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first.signal_and_wait("KILL", Duration::from_secs(10));
        let after_kill = count(&conn, delivered_sql).await;
        assert!(
            after_kill < i64::try_from(n).unwrap(),
            "{label}: killed too late to matter"
        );

        let deadline = Duration::from_secs(if db.label() == "postgres" { 420 } else { 300 });
        while count(&conn, delivered_sql).await < i64::try_from(n).unwrap() {
            assert!(
                started.elapsed() < deadline,
                "{label}: {} of {n} delivered; second engine log:\n{}",
                count(&conn, delivered_sql).await,
                second.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let total = count(&conn, "SELECT COUNT(*) FROM event_deliveries").await;
        assert_eq!(
            total,
            i64::try_from(n).unwrap(),
            "{label}: one delivery per event"
        );
        // Handled exactly once per event id (the plugin's own dedup key), though some were
        // delivered twice: those the killed engine had started.
        let seen = count(
            &conn,
            &format!("SELECT COUNT(*) FROM plugin_kv WHERE installation_id = '{installation}' AND key LIKE 'seen/%'"),
        )
        .await;
        assert_eq!(
            seen,
            i64::try_from(n).unwrap(),
            "{label}: every event id handled"
        );
        // Each namespace's usage row still counts exactly what it holds.
        let miscounted = count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM plugin_kv_usage u WHERE u.installation_id = '{installation}' \
                 AND (u.keys, u.bytes) <> (SELECT COUNT(*), COALESCE(SUM(LENGTH(k.key) + LENGTH(k.value)), 0) \
                 FROM plugin_kv k WHERE k.installation_id = u.installation_id AND k.scope_id = u.scope_id)"
            ),
        )
        .await;
        assert_eq!(miscounted, 0, "{label}: usage rows count what they hold");
        let owners = count(
            &conn,
            "SELECT COUNT(DISTINCT lease_owner) FROM event_deliveries WHERE status = 'delivered'",
        )
        .await;
        assert_eq!(owners, 2, "{label}: both engines delivered");
        eprintln!(
            "{label}: {n} events delivered by two engines in {:.1} s ({after_kill} before the kill)",
            started.elapsed().as_secs_f64()
        );
        conn.close().await.unwrap();
        drop(second);
        db.cleanup().await;
    }
}

/// A delivery that keeps failing is retried with backoff, then dead, visible with its error,
/// and a manual redelivery queues it again.
#[tokio::test]
async fn a_failing_delivery_is_retried_then_dead_and_can_be_redelivered() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(
        &db.url(),
        &[
            ("TRELLIS_EVENTS__POLL_MS", "50"),
            ("TRELLIS_EVENTS__BACKOFF_FIRST_SECS", "1"),
            ("TRELLIS_EVENTS__MAX_ATTEMPTS", "3"),
            // The redelivered panic traps three more times: with the first three that is past
            // the breaker's five, and on a busy machine it would open before the quota events
            // below are delivered. The breaker has its own tests; here it stays out of the way.
            ("TRELLIS_PLUGINS__BREAKER_TRAPS", "1000000"),
        ],
    );
    create_platform_admin(&db.url(), ROOT, PASSWORD);
    let root = Api::new(&engine, CONSOLE).login(ROOT, PASSWORD).await;
    let partner = node(
        &root,
        "partners",
        None,
        json!({"name": "P", "domains": ["p.test"]}),
    )
    .await;
    let agent = node(&root, "agents", Some(&partner), json!({"name": "A"})).await;
    let merchant = node(&root, "merchants", Some(&agent), json!({"name": "M"})).await;
    let abuse = plugin_archive_bytes("tests/plugins/abuse", "trellis_fixture_abuse");
    let installed = root
        .upload(&format!("/api/v1/partners/{partner}/plugins"), abuse)
        .await;
    assert_eq!(installed.status, 201, "{installed:?}");
    let plugin = installed.body["plugin_id"].as_str().unwrap().to_owned();
    root.post(
        &format!("/api/v1/partners/{partner}/plugins/{plugin}/offer"),
        json!({"offered": true}),
    )
    .await
    .ok();
    let package = root
        .post(
            "/api/v1/packages",
            json!({"agent_id": agent, "name": "Abuse", "plugins": [plugin], "validity_days": 1,
                   "quotas": {"events_per_day": 2}}),
        )
        .await
        .ok()
        .id();
    root.post(&format!("/api/v1/packages/{package}/publish"), json!({}))
        .await
        .ok();
    root.post(
        &format!("/api/v1/packages/{package}/assignments"),
        json!({"merchant_ids": [merchant]}),
    )
    .await
    .ok();
    // The plugin never sees the caller's credentials and cannot set cookies.
    let response = trellis_tests::client()
        .get(engine.url(&format!(
            "/api/v1/merchants/{merchant}/plugins/{plugin}/headers"
        )))
        .header("host", CONSOLE)
        .bearer_auth(root.token().unwrap())
        .header("cookie", "trellis_session=secret")
        .header("x-api-key", "secret")
        .header("x-trace", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "{:?}",
        response.headers()
    );
    let seen: Vec<String> = response.json().await.unwrap();
    assert!(seen.contains(&"x-trace".to_owned()), "{seen:?}");
    for hidden in ["authorization", "cookie", "x-api-key"] {
        assert!(
            !seen.contains(&hidden.to_owned()),
            "{hidden} reached the plugin: {seen:?}"
        );
    }

    let started = Instant::now();
    root.post(
        &format!("/api/v1/merchants/{merchant}/events"),
        json!({"kind": "abuse.panic"}),
    )
    .await
    .ok();
    eventually(Duration::from_secs(30), "the dead delivery", || async {
        let items = deliveries(&root, &merchant, "dead").await;
        if items.is_empty() {
            Err(format!(
                "{:?}",
                deliveries(&root, &merchant, "pending").await
            ))
        } else {
            Ok(())
        }
    })
    .await;
    let dead = deliveries(&root, &merchant, "dead").await.remove(0);
    assert_eq!(dead["attempts"], 3, "{dead:?}");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("panic"),
        "{dead:?}"
    );
    // Two retries with backoff: at least 1 s and then 2 s apart.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let id = dead["id"].as_str().unwrap();
    let again = root
        .post(&format!("/api/v1/deliveries/{id}/redeliver"), json!({}))
        .await
        .ok();
    assert_eq!(again.body["status"], "pending");
    // Its attempts start again from none (a dispatcher may have claimed it already).
    assert!(again.body["attempts"].as_i64() <= Some(1), "{again:?}");

    // The daily quota: two events a day are delivered, the third is skipped with the reason.
    for _ in 0..3 {
        root.post(
            &format!("/api/v1/merchants/{merchant}/events"),
            json!({"kind": "abuse.ok"}),
        )
        .await
        .ok();
    }
    eventually(Duration::from_secs(30), "the quota skip", || async {
        let skipped = deliveries(&root, &merchant, "skipped").await;
        let delivered = deliveries(&root, &merchant, "delivered").await;
        match (delivered.len(), skipped.first()) {
            (2, Some(s))
                if s["last_error"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("quota_exceeded") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(engine);
}
