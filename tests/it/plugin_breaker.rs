//! A plugin that keeps failing is suspended for its merchant; the partner lifts the suspension
//! through the API or an operator through the command line, audited either way, the engine
//! serving the merchant sees a reset made elsewhere once its kept reads of the installation
//! expire (`database.recent_reads_ms`), and nobody below the partner can lift it.

use serde_json::json;
use trellis_tests::{Engine, databases, fixtures, trellis_command};

const ATOMIC: &str = "test.trellis.atomic";

#[tokio::test]
async fn a_suspended_plugin_is_reset_by_its_partner_or_the_command_line_and_nobody_else() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(
            &db.url(),
            &[
                ("TRELLIS_PLUGINS__BREAKER_TRAPS", "2"),
                ("TRELLIS_PLUGINS__BREAKER_COOLDOWN_SECS", "600"),
            ],
        );
        let branch = fixtures::branch(&engine, &db.url(), "p.test").await;
        fixtures::entitle(
            &branch.root,
            (&branch.partner, &branch.agent),
            &[&branch.merchant],
            ("tests/plugins/atomic", "trellis_fixture_atomic", ATOMIC),
        )
        .await;
        let merchant = &branch.merchant;
        let route = |path: &str| format!("/api/v1/merchants/{merchant}/plugins/{ATOMIC}{path}");
        let trip = async |round: &str| {
            for i in 0..2 {
                let failed = branch
                    .root
                    .post(&route(&format!("/apply/panic/{round}-{i}")), json!({}))
                    .await;
                assert_eq!(failed.status, 502, "{label}: {failed:?}");
            }
            let suspended = branch.root.get(&route("/state")).await;
            assert_eq!(suspended.status, 503, "{label}: {suspended:?}");
            assert_eq!(suspended.body["code"], "plugin_suspended", "{label}");
        };
        let reset = format!(
            "/api/v1/partners/{}/plugins/{ATOMIC}/breaker/reset",
            branch.partner
        );

        // The partner (here the platform above it) lifts it through the API: at once.
        trip("api").await;
        let merchant_owner =
            trellis_tests::create_user(&engine, &branch.root, merchant, "owner@m.test", "p.test")
                .await;
        // Above the merchant's subtree: the partner is not even found.
        let refused = merchant_owner.post(&reset, json!({})).await;
        assert_eq!(
            refused.status, 404,
            "{label}: a merchant cannot: {refused:?}"
        );
        let still = branch.root.get(&route("/state")).await;
        assert_eq!(still.status, 503, "{label}: {still:?}");
        let lifted = branch.root.post(&reset, json!({})).await.ok();
        assert!(
            lifted.body["breaker_reset_at"].is_string(),
            "{label}: {:?}",
            lifted.body
        );
        branch.root.get(&route("/state")).await.ok();

        // An operator lifts it from the command line, another process: the engine learns of it
        // on its first call after its kept read of the installation (1 s by default) expires.
        trip("cli").await;
        let out = trellis_command(engine.data_dir.path(), &db.url())
            .args([
                "plugin",
                "reset-breaker",
                "--partner",
                &branch.partner,
                ATOMIC,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let state = branch.root.get(&route("/state")).await;
            if state.status == 200 || std::time::Instant::now() > deadline {
                state.ok();
                break;
            }
            assert_eq!(state.body["code"], "plugin_suspended", "{label}: {state:?}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        // Both resets are in the audit log, newest first, and the merchant's attempt.
        let audit = branch
            .root
            .get("/api/v1/audit?action=plugin.breaker_reset&per_page=10")
            .await
            .ok()
            .body;
        let outcomes: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["outcome"].as_str())
            .collect();
        assert_eq!(
            outcomes,
            ["success", "success", "denied"],
            "{label}: {audit}"
        );
        let details: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["detail"].as_str())
            .collect();
        assert!(
            details.iter().any(|d| d.contains("command line")),
            "{label}: {audit}"
        );
        drop(engine);
        db.cleanup().await;
    }
}
