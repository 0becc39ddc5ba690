//! A plugin that cannot leave its invocation runs optimistically: it starts from what the
//! engine last committed to its namespace and assumes that keys it inserts are absent. When an
//! assumption was wrong its commit says so and it runs again reading everything, so what it
//! answers and keeps is what a careful run would have: checked here with real components on
//! the harness's SQLite store, where another engine writes behind this one's back.

use serde_json::json;
use trellis_engine::harness::{Harness, HarnessOptions};
use trellis_engine::plugins::kv::{Namespace, Store};
use trellis_engine::plugins::manifest::KvQuota;
use trellis_engine::plugins::{Outcome, Output};
use trellis_tests::{pack_plugin, workspace_root};

fn options(dir: &std::path::Path) -> HarnessOptions {
    HarnessOptions {
        themes_dir: Some(workspace_root().join("themes")),
        cache_dir: Some(workspace_root().join("target/test-plugin-cache")),
        state_dir: Some(dir.to_path_buf()),
        ..HarnessOptions::default()
    }
}

fn json_of(outcome: &Outcome) -> serde_json::Value {
    match &outcome.result {
        Ok(Output::Http(response)) => serde_json::from_slice(&response.body).unwrap(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimistic_run_whose_assumption_failed_runs_again_and_answers_as_a_careful_one() {
    let dir = tempfile::tempdir().unwrap();
    let atomic = pack_plugin("tests/plugins/atomic", "trellis_fixture_atomic");
    let h = Harness::start(&atomic, options(dir.path())).await.unwrap();
    let conflicts = || {
        h.runtime
            .metrics()
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    // Another engine on the same database, with a memory of its own.
    let elsewhere = Store::database(
        sea_orm::Database::connect(format!(
            "sqlite://{}",
            dir.path().join("harness.db").display()
        ))
        .await
        .unwrap(),
    );
    let ns = Namespace {
        installation_id: h.installation_id.clone(),
        scope_id: h.merchant.id.clone(),
        quota: KvQuota {
            max_keys: 1000,
            max_bytes: 100_000,
        },
    };

    // The first application of an id marks it; the mark is assumed absent and is.
    let first = h.http("POST", "/apply/ok/x", Vec::new()).await;
    assert_eq!(json_of(&first), json!({ "applied": true }));
    assert_eq!(first.runs, 1);
    // The same id again: this engine knows the mark it committed, and applies nothing.
    let again = h.http("POST", "/apply/ok/x", Vec::new()).await;
    assert_eq!(json_of(&again), json!({ "applied": true }));
    assert_eq!(again.runs, 1);
    // An id the other engine marked: the mark is assumed absent and is not. The commit
    // refuses, and the run again finds the mark and applies nothing — not a conflict.
    elsewhere
        .compare_and_swap(&ns, "seen/y", None, b"null")
        .await
        .unwrap();
    let marked = h.http("POST", "/apply/ok/y", Vec::new()).await;
    assert_eq!(json_of(&marked), json!({ "applied": true }));
    assert_eq!(marked.runs, 2, "optimism failed once");
    assert_eq!(conflicts(), 0);
    let state = h.http("GET", "/state", Vec::new()).await;
    assert_eq!(json_of(&state)["applied"], 1, "applied once per id");
    assert_eq!(json_of(&state)["seen"], 2);

    // Counts start from what this engine committed last...
    for expected in 1..=3 {
        let counted = h.http("POST", "/count", Vec::new()).await;
        assert_eq!(json_of(&counted), json!(expected));
    }
    // ...until another engine moves the counter on behind its back: the run that started from
    // the stale count fails its commit, runs again on what is committed, and loses no update.
    let entry = elsewhere.get(&ns, "counter").await.unwrap().unwrap();
    assert_eq!(entry.value, b"3");
    elsewhere
        .compare_and_swap(&ns, "counter", Some(entry.version), b"10")
        .await
        .unwrap();
    let counted = h.http("POST", "/count", Vec::new()).await;
    assert_eq!(json_of(&counted), json!(11), "counted on what is committed");
    assert_eq!(counted.runs, 2);
    // A read answered from what this engine remembers is checked too.
    let entry = elsewhere.get(&ns, "counter").await.unwrap().unwrap();
    elsewhere
        .compare_and_swap(&ns, "counter", Some(entry.version), b"20")
        .await
        .unwrap();
    let state = h.http("GET", "/state", Vec::new()).await;
    assert_eq!(json_of(&state)["counter"], 20);
    assert_eq!(conflicts(), 0);

    // A failure decided on what was remembered stands only if that held: this engine
    // remembers the mark it made, the other engine removes it, and the refusal the memory
    // would give is checked, found stale, and the run goes again and applies.
    let once = h.http("POST", "/once/q", Vec::new()).await;
    assert_eq!(json_of(&once), json!({ "applied": "q" }));
    let refused = h.http("POST", "/once/q", Vec::new()).await;
    assert!(
        matches!(
            &refused.result,
            Err(trellis_engine::plugins::Error::Plugin(_))
        ),
        "{:?}",
        refused.result
    );
    assert_eq!(refused.runs, 1, "the mark is there: the refusal holds");
    let mark = elsewhere.get(&ns, "once/q").await.unwrap().unwrap();
    assert!(
        elsewhere
            .delete(&ns, "once/q", Some(mark.version))
            .await
            .unwrap()
    );
    let again = h.http("POST", "/once/q", Vec::new()).await;
    assert_eq!(json_of(&again), json!({ "applied": "q" }));
    assert_eq!(again.runs, 2);
    assert_eq!(conflicts(), 0);
}
