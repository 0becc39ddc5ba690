//! What every plugin invocation reads and only administrators change (the installation, the
//! merchant's packages, its configuration, the theme, suspensions) is kept for
//! `database.recent_reads_ms`. Kept for a minute here, so that only what must hold whatever is
//! kept is tested: a package ends on time, and changes made through this engine apply at once.

use std::time::Duration;

use serde_json::json;
use trellis_tests::{Engine, databases, fixtures};

const ATOMIC: &str = "test.trellis.atomic";
const HELLO: &str = "com.trellis.hello";

/// An engine keeping reads for a minute, with a partner, agent and merchant; `plugin` (a
/// directory, its component and its id), when given, is installed and assigned to the merchant.
async fn keeping(
    db: &trellis_tests::TestDb,
    plugin: Option<(&str, &str, &str)>,
) -> (Engine, fixtures::Branch) {
    let engine = Engine::start(&db.url(), &[("TRELLIS_DATABASE__RECENT_READS_MS", "60000")]);
    let branch = fixtures::branch(&engine, &db.url(), "p.test").await;
    if let Some(plugin) = plugin {
        fixtures::entitle(
            &branch.root,
            (&branch.partner, &branch.agent),
            &[&branch.merchant],
            plugin,
        )
        .await;
    }
    (engine, branch)
}

#[tokio::test]
async fn a_kept_entitlement_ends_on_time_and_changes_through_the_engine_apply_at_once() {
    for db in databases().await {
        let label = db.label();
        let (_engine, branch) = keeping(
            &db,
            Some(("tests/plugins/atomic", "trellis_fixture_atomic", ATOMIC)),
        )
        .await;
        let merchant = &branch.merchant;
        let state = format!("/api/v1/merchants/{merchant}/plugins/{ATOMIC}/state");
        branch.root.get(&state).await.ok();
        let assignments = branch
            .root
            .get(&format!("/api/v1/assignments?merchant_id={merchant}"))
            .await
            .ok();
        let assignment = assignments.body["items"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        // The package now ends in two seconds; the engine keeps the new end and honours it.
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        branch
            .root
            .post(
                &format!("/api/v1/assignments/{assignment}/renew"),
                json!({"ends_at": soon}),
            )
            .await
            .ok();
        branch.root.get(&state).await.ok();
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let ended = branch.root.get(&state).await;
        assert_eq!(ended.status, 403, "{label}: {ended:?}");
        assert_eq!(ended.body["code"], "package_expired", "{label}");

        // Renewed and revoked through this engine: seen by the next call.
        branch
            .root
            .post(
                &format!("/api/v1/assignments/{assignment}/renew"),
                json!({}),
            )
            .await
            .ok();
        branch.root.get(&state).await.ok();
        branch
            .root
            .post(
                &format!("/api/v1/assignments/{assignment}/revoke"),
                json!({}),
            )
            .await
            .ok();
        let revoked = branch.root.get(&state).await;
        assert_eq!(
            revoked.body["code"], "package_expired",
            "{label}: {revoked:?}"
        );

        // Uninstalled through this engine: gone at once too.
        branch
            .root
            .delete(&format!(
                "/api/v1/partners/{}/plugins/{ATOMIC}?force=true",
                branch.partner
            ))
            .await
            .ok();
        let gone = branch.root.get(&state).await;
        assert_eq!(gone.status, 404, "{label}: {gone:?}");
    }
}

/// A merchant whose agent is suspended through the engine has its public plugin pages refused
/// from the next request on, and once resumed, served again at once — though whether a tenant
/// is under a suspended node is kept (the merchant itself stays active).
#[tokio::test]
async fn a_suspension_through_the_engine_stops_the_merchants_plugins_at_once() {
    for db in databases().await {
        let label = db.label();
        let (engine, branch) =
            keeping(&db, Some(("plugins/hello", "trellis_plugin_hello", HELLO))).await;
        let (merchant, agent) = (&branch.merchant, &branch.agent);
        let visitor = trellis_tests::Api::new(&engine, "p.test");
        let page = format!("/m/{merchant}/{HELLO}/");
        assert_eq!(visitor.page(&page).await.status, 200, "{label}");
        branch
            .root
            .post(&format!("/api/v1/agents/{agent}/suspend"), json!({}))
            .await
            .ok();
        let refused = visitor.page(&page).await;
        assert_eq!(refused.status, 403, "{label}: {refused:?}");
        branch
            .root
            .post(&format!("/api/v1/agents/{agent}/resume"), json!({}))
            .await
            .ok();
        assert_eq!(visitor.page(&page).await.status, 200, "{label}");
    }
}

/// A merchant holding two packages gets the more generous quota of the two; once that package
/// ends, its quota ends with it, though the entitlements were kept.
#[tokio::test]
async fn a_kept_union_of_packages_loses_an_ended_packages_quota_on_time() {
    const CALLER: &str = "test.trellis.caller";
    for db in databases().await {
        let label = db.label();
        let (_engine, branch) = keeping(&db, None).await;
        let (partner, agent, merchant) = (&branch.partner, &branch.agent, &branch.merchant);
        branch
            .root
            .upload(
                &format!("/api/v1/partners/{partner}/plugins"),
                trellis_tests::plugin_archive_bytes(
                    "tests/plugins/neighbours",
                    "trellis_fixture_neighbours",
                ),
            )
            .await
            .ok();
        branch
            .root
            .post(
                &format!("/api/v1/partners/{partner}/plugins/{CALLER}/offer"),
                json!({"offered": true}),
            )
            .await
            .ok();
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        for (name, members, ends_at) in [("small", 1, None), ("large", 50, Some(soon))] {
            let package = branch
                .root
                .post(
                    "/api/v1/packages",
                    json!({"agent_id": agent, "name": name, "plugins": [CALLER],
                        "validity_days": 30, "quotas": {"max_members": members}}),
                )
                .await
                .ok()
                .id();
            branch
                .root
                .post(&format!("/api/v1/packages/{package}/publish"), json!({}))
                .await
                .ok();
            let mut assign = json!({"merchant_ids": [merchant]});
            if let Some(end) = &ends_at {
                assign["ends_at"] = json!(end);
            }
            branch
                .root
                .post(&format!("/api/v1/packages/{package}/assignments"), assign)
                .await
                .ok();
        }
        let context = format!("/api/v1/merchants/{merchant}/plugins/{CALLER}/context");
        let both = branch.root.get(&context).await.ok();
        assert_eq!(both.body["max_members"], 50, "{label}: {both:?}");
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let one = branch.root.get(&context).await.ok();
        assert_eq!(one.body["max_members"], 1, "{label}: {one:?}");
    }
}
