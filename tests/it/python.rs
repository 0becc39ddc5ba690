//! A plugin written in Python (`host-api/examples/hello-py`): built by `trellis plugin build`
//! with componentize-py against a world of its declared capabilities, packed with the usual
//! checks, and run by an engine with default settings — events delivered, a route answered
//! with the tenant, the host's clock and randomness.

use std::time::Duration;

use serde_json::json;
use trellis_tests::{Engine, eventually, fixtures, sqlite, workspace_root};

const HELLO_PY: &str = "com.example.hello-py";

/// Whether componentize-py runs here; CI says it must (`TRELLIS_TEST_REQUIRE_PYTHON`).
fn componentize_py() -> bool {
    let found = std::process::Command::new("componentize-py")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !trellis_engine::config::test_requires_python(),
            "componentize-py is required here: `make python` installs it"
        );
        eprintln!("skipped: no componentize-py on the PATH (`make python` installs it)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_builds_packs_and_runs_on_an_engine_with_default_settings() {
    if !componentize_py() {
        return;
    }
    let tmp = trellis_tests::tempdir();
    for file in ["plugin.toml", "app.py"] {
        std::fs::copy(
            workspace_root()
                .join("host-api/examples/hello-py")
                .join(file),
            tmp.path().join(file),
        )
        .unwrap();
    }
    let built = std::process::Command::new(trellis_tests::trellis_bin())
        .current_dir(tmp.path())
        .args(["plugin", "build", "."])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = tmp.path().join("plugin.wasm");

    let db = sqlite();
    // Default settings, but the suite's compile cache: compiling CPython is most of the work.
    let cache = workspace_root().join("target/test-plugin-cache");
    let engine = Engine::start(
        &db.url(),
        &[
            ("TRELLIS_PLUGINS__CACHE_DIR", cache.to_str().unwrap()),
            ("TRELLIS_EVENTS__POLL_MS", "50"),
        ],
    );
    let branch = fixtures::branch(&engine, &db.url(), "p.test").await;
    fixtures::entitle(
        &branch.root,
        (&branch.partner, &branch.agent),
        &[&branch.merchant],
        (
            tmp.path().to_str().unwrap(),
            wasm.to_str().unwrap(),
            HELLO_PY,
        ),
    )
    .await;
    let merchant = &branch.merchant;
    branch
        .root
        .post(
            &format!("/api/v1/merchants/{merchant}/events"),
            json!({"kind": "member.activated", "payload": {"user_id": "2088000000000001"}}),
        )
        .await
        .ok();
    let stats = format!("/api/v1/merchants/{merchant}/plugins/{HELLO_PY}/stats");
    eventually(Duration::from_secs(60), "the event is counted", || async {
        let answer = branch.root.get(&stats).await;
        match answer.body["by_kind"]["member.activated"].as_i64() {
            Some(1) => Ok(()),
            _ => Err(format!("{answer:?}")),
        }
    })
    .await;
    let body = branch.root.get(&stats).await.ok().body;
    assert_eq!(body["merchant_id"], merchant.as_str(), "{body}");
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        body["now_ms"]
            .as_i64()
            .is_some_and(|t| (t - now).abs() < 60_000),
        "the host's clock: {body}"
    );
    assert!(
        body["dice"].as_i64().is_some_and(|d| (1..=6).contains(&d)),
        "{body}"
    );
    drop(engine);
    db.cleanup().await;
}
