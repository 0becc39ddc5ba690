//! The plugin sandbox with real components built from `plugins/` and `tests/plugins/`: every
//! abuse is contained with its own error, within its limit, while other plugins keep working.

use std::time::{Duration, Instant};

use serde_json::json;
use trellis_engine::harness::{Harness, HarnessOptions};
use trellis_engine::plugins::archive::{self, Archive};
use trellis_engine::plugins::manifest::Allowance;
use trellis_engine::plugins::{Error, Output, PluginError, TrapReason};
use trellis_tests::{pack_plugin, plugin_wasm, workspace_root};

/// The sandbox's limits.
mod limits;

fn hello() -> Archive {
    pack_plugin("plugins/hello", "trellis_plugin_hello")
}

fn abuse() -> Archive {
    pack_plugin("tests/plugins/abuse", "trellis_fixture_abuse")
}

fn options() -> HarnessOptions {
    HarnessOptions {
        themes_dir: Some(workspace_root().join("themes")),
        cache_dir: Some(workspace_root().join("target/test-plugin-cache")),
        ..HarnessOptions::default()
    }
}

fn trap_of(result: &Result<Output, Error>) -> (TrapReason, String) {
    match result {
        Err(Error::Trap {
            reason, message, ..
        }) => (*reason, message.clone()),
        other => panic!("expected a trap, got {other:?}"),
    }
}

fn plugin_error(result: &Result<Output, Error>) -> PluginError {
    match result {
        Err(Error::Plugin(e)) => e.clone(),
        other => panic!("expected a plugin error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_counts_events_per_merchant_and_serves_its_page() {
    let mut h = Harness::start(&hello(), options()).await.unwrap();
    let configured = h
        .configure(json!({ "greeting": "  欢迎光临  ", "milestone": 2 }))
        .await;
    assert_eq!(
        configured.result.unwrap(),
        Output::Config(json!({ "greeting": "欢迎光临", "milestone": 2 }))
    );

    let first = h.event("payment.succeeded", json!({ "amount": 100 })).await;
    assert!(first.result.is_ok(), "{:?}", first.result);
    assert!(first.emitted.is_empty());
    assert_eq!(first.logs[0].message, "counted payment.succeeded");
    let second = h.event("payment.succeeded", json!({ "amount": 200 })).await;
    assert_eq!(
        second.emitted.len(),
        1,
        "a milestone every 2 events of a kind"
    );
    assert_eq!(second.emitted[0].kind, "hello.milestone");
    assert_eq!(
        second.emitted[0].payload,
        json!({ "kind": "payment.succeeded", "count": 2 })
    );
    let third = h.event("member.activated", json!({})).await;
    assert!(
        third.result.is_ok() && third.emitted.is_empty(),
        "{:?}",
        third.result
    );

    let page = h.http("GET", "/", Vec::new()).await;
    let Ok(Output::Http(response)) = page.result else {
        panic!("{:?}", page.result)
    };
    let html = String::from_utf8(response.body).unwrap();
    assert_eq!(response.status, 200);
    assert!(html.contains("<h1>欢迎光临</h1>"), "{html}");
    assert!(html.contains("本店已处理 3 个事件"), "{html}");
    assert!(
        html.contains("<!doctype html>"),
        "wrapped in the theme: {html}"
    );

    let stats = h.http("GET", "/stats", Vec::new()).await;
    let Ok(Output::Http(response)) = stats.result else {
        panic!("{:?}", stats.result)
    };
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        body,
        json!({ "total": 3, "by_kind": { "member.activated": 1, "payment.succeeded": 2 } })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_merchant_has_its_own_counters() {
    let h = Harness::start(&hello(), options()).await.unwrap();
    let event = |id: &str| {
        trellis_engine::plugins::Call::Event(trellis_engine::plugins::Event {
            id: id.into(),
            kind: "payment.succeeded".into(),
            occurred_at: chrono::Utc::now(),
            payload: json!({}),
        })
    };
    for i in 0..3 {
        let out = h.call(event(&format!("a-{i}"))).await;
        assert!(out.result.is_ok(), "{:?}", out.result);
    }
    // The same installation for another merchant: the host binds kv to that merchant.
    let mut other = h.request(event("b-0"));
    other.tenant.merchant_id = Some("another-merchant".into());
    let out = h.runtime.invoke(&h.plugin, other.clone()).await;
    assert_eq!(
        out.logs[0].fields,
        vec![("count".to_owned(), "1".to_owned())]
    );

    other.call = trellis_engine::plugins::Call::Http(trellis_engine::plugins::HttpRequest {
        method: "GET".into(),
        path: "/stats".into(),
        ..Default::default()
    });
    let out = h.runtime.invoke(&h.plugin, other).await;
    let Ok(Output::Http(response)) = out.result else {
        panic!("{:?}", out.result)
    };
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["total"], 1);
    let mine = h.http("GET", "/stats", Vec::new()).await;
    let Ok(Output::Http(response)) = mine.result else {
        panic!("{:?}", mine.result)
    };
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_reports_the_plugins_field_error() {
    let mut h = Harness::start(&hello(), options()).await.unwrap();
    let out = h.configure(json!({ "greeting": "   " })).await;
    assert_eq!(
        plugin_error(&out.result),
        PluginError::InvalidField {
            field: "/greeting".into(),
            message: "must not be blank".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_undeclared_capabilities_are_denied_by_name() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    for (kind, needle) in [
        (
            "abuse.emit_undeclared",
            "event payment.refunded is not declared",
        ),
        (
            "abuse.template_undeclared",
            "template secret.hbs is not declared",
        ),
        (
            "abuse.alipay_outside",
            "Alipay method alipay.trade.refund is not declared",
        ),
    ] {
        let out = h.event(kind, json!({})).await;
        match plugin_error(&out.result) {
            PluginError::Denied { message } => {
                assert!(message.contains(needle), "{kind}: {message}")
            }
            other => panic!("{kind}: {other:?}"),
        }
        assert!(
            out.host_calls.is_empty(),
            "{kind} reached no service: {:?}",
            out.host_calls
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_capability_the_tenant_was_not_granted_is_denied() {
    let mut h = Harness::start(&abuse(), options()).await.unwrap();
    h.grant = Some(Allowance::none());
    let out = h.event("abuse.ok", json!({})).await;
    match plugin_error(&out.result) {
        PluginError::Denied { message } => {
            assert!(message.contains("kv is not granted"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let out = h.event("abuse.alipay_allowed", json!({})).await;
    match plugin_error(&out.result) {
        PluginError::Denied { message } => {
            assert!(message.contains("not granted to this tenant"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_alipay_method_is_signed_by_the_host_and_answered_by_the_sandbox() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.event("abuse.alipay_allowed", json!({})).await;
    // The sandbox checked the engine's signature; its answer reaches the plugin, which
    // succeeds or reports Alipay's own business error — never a denial.
    match &out.result {
        Ok(_) => {}
        Err(Error::Plugin(PluginError::Upstream { code, .. })) => assert_ne!(code, "network"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.host_calls.len(), 1);
    assert_eq!(out.host_calls[0].interface, "alipay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_quota_exhaustion_is_an_error_the_plugin_sees() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.event("abuse.kv_flood", json!({})).await;
    match plugin_error(&out.result) {
        PluginError::QuotaExceeded { message } => {
            assert!(message.contains("kv quota"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Nothing past the quota was stored: 4096 bytes hold 36 values of ~113 bytes at most.
    let stored = out
        .host_calls
        .iter()
        .filter(|c| c.function == "compare-and-swap" && c.ok)
        .count();
    assert!((1..=36).contains(&stored), "{stored} writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_host_calls_or_events_break_a_host_limit() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.event("abuse.kv_ops", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::HostLimit);
    assert!(message.contains("kv operations"), "{message}");
    let out = h.event("abuse.emit_flood", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::HostLimit);
    assert!(message.contains("events emitted"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_traps_suspend_only_that_installation_for_that_merchant() {
    let options = HarnessOptions {
        breaker_traps: 3,
        ..options()
    };
    let mut h = Harness::start(&abuse(), options).await.unwrap();
    for _ in 0..3 {
        let out = h.event("abuse.panic", json!({})).await;
        trap_of(&out.result);
    }
    let suspended = h.event("abuse.ok", json!({})).await;
    assert!(
        matches!(suspended.result, Err(Error::Suspended { .. })),
        "{:?}",
        suspended.result
    );
    assert!(
        suspended.host_calls.is_empty(),
        "a suspended installation does not run"
    );
    let metrics = h.runtime.metrics();
    assert_eq!(metrics.traps.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(
        metrics.suspended.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Another merchant of the same installation is unaffected.
    let merchant = h.merchant.clone();
    h.merchant.merchant_id = Some("another-merchant".into());
    let ok = h.event("abuse.ok", json!({})).await;
    assert!(ok.result.is_ok(), "{:?}", ok.result);
    h.merchant = merchant;

    // Another installation of the same plugin is unaffected.
    let first = h.installation_id.clone();
    h.installation_id = "another-installation".into();
    let ok = h.event("abuse.ok", json!({})).await;
    assert!(ok.result.is_ok(), "{:?}", ok.result);

    // An operator lifts the suspension.
    h.runtime.reset_breaker(&first);
    h.installation_id = first;
    let ok = h.event("abuse.ok", json!({})).await;
    assert!(ok.result.is_ok(), "{:?}", ok.result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_does_not_stop_other_plugins_from_being_served() {
    let (h, others) = Harness::start_with(&[&abuse(), &hello()], options())
        .await
        .unwrap();
    let hello = others[0].clone();
    let runtime = h.runtime.clone();
    let mut abusers = Vec::new();
    for kind in [
        "abuse.loop",
        "abuse.loop",
        "abuse.memory",
        "abuse.recurse",
        "abuse.panic",
        "abuse.loop",
    ] {
        let runtime = runtime.clone();
        let plugin = h.plugin.clone();
        let request = h.request(trellis_engine::plugins::Call::Event(
            trellis_engine::plugins::Event {
                id: uuid::Uuid::now_v7().to_string(),
                kind: kind.into(),
                occurred_at: chrono::Utc::now(),
                payload: json!({}),
            },
        ));
        abusers.push(tokio::spawn(async move {
            runtime.invoke(&plugin, request).await
        }));
    }
    let mut request = h.request(trellis_engine::plugins::Call::Event(
        trellis_engine::plugins::Event {
            id: String::new(),
            kind: "payment.succeeded".into(),
            occurred_at: chrono::Utc::now(),
            payload: json!({}),
        },
    ));
    request.tenant.installation_id = "hello-installation".into();
    let mut served = 0;
    for i in 0..50 {
        let mut r = request.clone();
        if let trellis_engine::plugins::Call::Event(e) = &mut r.call {
            e.id = format!("evt-{i}");
        }
        let out = runtime.invoke(&hello, r).await;
        assert!(out.result.is_ok(), "{:?}", out.result);
        served += 1;
    }
    assert_eq!(served, 50);
    for abuser in abusers {
        let out = abuser.await.unwrap();
        assert!(out.result.is_err());
    }
}

#[test]
fn an_archive_whose_imports_exceed_its_capabilities_is_refused_naming_the_import() {
    // The abuse component imports alipay; a manifest without the capability must not pass.
    let dir = trellis_tests::tempdir();
    let source = workspace_root().join("tests/plugins/abuse");
    let manifest = std::fs::read_to_string(source.join("plugin.toml")).unwrap();
    let stripped = manifest.replace(
        "alipay = { methods = [\"alipay.marketing.card.template.create\"] }\n",
        "",
    );
    assert_ne!(manifest, stripped);
    std::fs::write(dir.path().join("plugin.toml"), stripped).unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::copy(
        source.join("templates/page.hbs"),
        dir.path().join("templates/page.hbs"),
    )
    .unwrap();
    let err = archive::pack_dir(dir.path(), &plugin_wasm("trellis_fixture_abuse")).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("trellis:plugin/alipay@0.1.0"), "{message}");
    assert!(
        message.contains("declares no [capabilities] alipay"),
        "{message}"
    );

    // Built by hand past the packer, the same archive is refused when the engine loads it.
    let mut m = abuse().manifest;
    m.capabilities.alipay = None;
    let component = std::fs::read(plugin_wasm("trellis_fixture_abuse")).unwrap();
    let files = [("templates/page.hbs".to_owned(), b"<p></p>".to_vec())].into();
    let bytes = archive::pack(&m, &component, &files).unwrap();
    let archive = Archive::read(&bytes).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(Harness::start(&archive, options()))
        .err()
        .expect("the engine must refuse it");
    assert!(
        err.to_string().contains("trellis:plugin/alipay@0.1.0"),
        "{err}"
    );
}

#[test]
fn a_component_built_against_a_newer_host_api_is_refused() {
    let dir = workspace_root().join("tests/plugins/future-api");
    let err = archive::pack_dir(&dir, &plugin_wasm("trellis_fixture_future_api")).unwrap_err();
    assert!(
        err.to_string()
            .contains("needs host-api ^0.9, this engine provides 0.1.0, 0.2.0"),
        "{err}"
    );
    // A manifest that claims 0.1 does not help: the imports say 0.9.0.
    let tmp = trellis_tests::tempdir();
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    std::fs::write(
        tmp.path().join("plugin.toml"),
        manifest.replace("^0.9", "^0.1"),
    )
    .unwrap();
    let err =
        archive::pack_dir(tmp.path(), &plugin_wasm("trellis_fixture_future_api")).unwrap_err();
    assert!(
        err.to_string()
            .contains("0.9.0 (imported as trellis:plugin/log@0.9.0)"),
        "{err}"
    );
}

/// Writes every code block of host-api/README.md that carries `title="FILE"` into `dir`.
fn write_tutorial(dir: &std::path::Path) -> usize {
    let readme = std::fs::read_to_string(workspace_root().join("host-api/README.md")).unwrap();
    let host_api = workspace_root().join("host-api");
    let mut written = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(title) = line
            .strip_prefix("```")
            .and_then(|info| info.split_once("title=\""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(t, _)| t.to_owned())
        else {
            continue;
        };
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        let body = body.replace("../trellis/host-api", &host_api.display().to_string());
        let path = dir.join(&title);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
        written += 1;
    }
    written
}

fn trellis(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(trellis_tests::trellis_bin())
        .current_dir(dir)
        // Its own target folder: the test run holds the workspace's build lock.
        .env("CARGO_TARGET_DIR", workspace_root().join("target/tutorial"))
        // As on a reader's machine: no lint wrapper (CI builds the workspace through one).
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn the_host_api_tutorial_builds_packs_inspects_and_runs_as_written() {
    let tmp = trellis_tests::tempdir();
    let dir = tmp.path().join("stamps");
    std::fs::create_dir(&dir).unwrap();
    assert_eq!(
        write_tutorial(&dir),
        5,
        "Cargo.toml, lib.rs, plugin.toml, schema, template"
    );

    let (code, out) = trellis(&dir, &["plugin", "build", "."]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = trellis(&dir, &["plugin", "pack", ".", "-o", "stamps.tplug"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = trellis(&dir, &["plugin", "inspect", "stamps.tplug"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("trellis:plugin/kv@0.1.0 [compare-and-swap, get, increment]"),
        "{out}"
    );
    assert!(out.contains("check: accepted"), "{out}");
    assert!(out.contains("signature: unsigned"), "{out}");

    let (code, out) = trellis(&dir, &["plugin", "keygen", "--out", "example"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = trellis(
        &dir,
        &["plugin", "sign", "stamps.tplug", "--key", "example.key"],
    );
    assert_eq!(code, 0, "{out}");
    let public = std::fs::read_to_string(dir.join("example.pub")).unwrap();
    let (code, out) = trellis(&dir, &["plugin", "inspect", "stamps.tplug"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("signature: valid, by {}", public.trim())),
        "{out}"
    );

    let (code, out) = trellis(
        &dir,
        &[
            "plugin",
            "run",
            "stamps.tplug",
            "--event",
            "payment.succeeded",
            "--payload",
            r#"{"buyer_id": "2088000000000001"}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("info  stamped buyer=2088000000000001 stamps=1"),
        "{out}"
    );
    assert!(out.contains("kv.increment ok"), "{out}");

    let (code, out) = trellis(
        &dir,
        &[
            "plugin",
            "run",
            "stamps.tplug",
            "--http",
            "GET",
            "/card/2088000000000001",
            "--plugin-config",
            r#"{"goal": 8}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("result: HTTP 200") && out.contains("<h1>0 / 8</h1>"),
        "{out}"
    );

    let (code, out) = trellis(
        &dir,
        &[
            "plugin",
            "run",
            "stamps.tplug",
            "--configure",
            r#"{"goal": 80}"#,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/goal: a card holds at most 50 stamps"),
        "{out}"
    );

    // Using a capability it did not declare: the packer names the import.
    let source = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    let greedy = source.replace(
        "        Ok(config)\n    }",
        "        let _ = alipay::call(\"alipay.trade.query\", &serde_json::json!({}));\n        Ok(config)\n    }",
    );
    assert_ne!(source, greedy);
    std::fs::write(dir.join("src/lib.rs"), greedy).unwrap();
    let (code, out) = trellis(&dir, &["plugin", "build", "."]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = trellis(&dir, &["plugin", "pack", ".", "-o", "greedy.tplug"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("trellis:plugin/alipay@0.1.0 [call]"), "{out}");
    assert!(!dir.join("greedy.tplug").exists());
}

#[test]
fn a_new_plugin_builds_tests_and_runs_and_the_harness_keeps_its_state_between_runs() {
    let tmp = trellis_tests::tempdir();
    let sdk = workspace_root().join("host-api");
    let (code, out) = trellis(
        tmp.path(),
        &[
            "plugin",
            "new",
            "stamp-card",
            "--sdk",
            sdk.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let dir = tmp.path().join("stamp-card");
    let (code, out) = trellis(&dir, &["plugin", "build", "."]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = trellis(&dir, &["plugin", "pack", ".", "-o", "card.tplug"]);
    assert_eq!(code, 0, "{out}");
    // Its logic is unit-tested natively, with no wasm build.
    let tested = std::process::Command::new(env!("CARGO"))
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", workspace_root().join("target/tutorial"))
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args(["test", "--quiet"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
    assert!(tested.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");

    let run = |args: &[&str]| {
        let mut all = vec!["plugin", "run", "card.tplug", "--state", "state"];
        all.extend_from_slice(args);
        trellis(&dir, &all)
    };
    // Two payments in two runs: the state folder keeps the merchant and its kv data.
    for _ in 0..2 {
        let (code, out) = run(&["--event", "payment.succeeded"]);
        assert_eq!(code, 0, "{out}");
    }
    let (code, out) = run(&["--http", "GET", "/stats"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#"{"payments":2}"#), "{out}");
    // Unconfigured, the page has the schema's default greeting.
    let (code, out) = run(&["--http", "GET", "/"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("<h1>Hello</h1>") && out.contains("2 payments so far"),
        "{out}"
    );
    // The schema is applied as on the server, naming the field, and nothing is kept.
    let (code, out) = run(&["--configure", r#"{"greeting": ""}"#]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("greeting"), "{out}");
    let (code, out) = run(&["--configure", r#"{"greeting": "你好"}"#]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["--http", "GET", "/"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("<h1>你好</h1>"), "{out}");
    // Without the state folder, every run starts from an empty merchant.
    let (code, out) = trellis(
        &dir,
        &["plugin", "run", "card.tplug", "--http", "GET", "/stats"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#"{"payments":0}"#), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_stamp_card_example_runs_in_the_real_runtime_as_its_native_tests_say() {
    let card = pack_plugin("host-api/examples/stamp-card", "trellis_example_stamp_card");
    let routes: Vec<String> = card
        .manifest
        .routes
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        routes,
        [
            "GET /card/{buyer}",
            "GET /cards/{buyer}",
            "POST /cards/{buyer}/stamps",
            "DELETE /cards/{buyer}"
        ],
        "the routes written in the code reach the manifest"
    );
    let mut h = Harness::start(&card, options()).await.unwrap();
    let configured = h.configure(json!({ "goal": 3 })).await;
    assert!(configured.result.is_ok(), "{:?}", configured.result);
    assert_eq!(
        h.config["min_fen"], 0,
        "the schema's defaults: {}",
        h.config
    );
    let paid = json!({ "payment_id": "p1", "merchant_id": "m", "store_id": null,
        "device_id": null, "amount_fen": 500, "buyer_id": "2088000000000001",
        "buyer_open_id": null, "purpose": "sale", "plugin_id": null, "out_trade_no": "T1",
        "trade_no": "2026", "paid_at": null });
    let event = trellis_engine::plugins::Event {
        id: "e1".into(),
        kind: "payment.succeeded".into(),
        occurred_at: chrono::Utc::now(),
        payload: paid,
    };
    for _ in 0..2 {
        let outcome = h
            .call(trellis_engine::plugins::Call::Event(event.clone()))
            .await;
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    }
    let shown = h.http("GET", "/cards/2088000000000001", Vec::new()).await;
    let Ok(Output::Http(response)) = shown.result else {
        panic!("{:?}", shown.result);
    };
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&response.body).unwrap(),
        json!({ "stamps": 1, "rewards": 0 })
    );
}

#[test]
fn a_tampered_archive_fails_inspection() {
    let tmp = trellis_tests::tempdir();
    let (_, bytes) = archive::pack_dir(
        &workspace_root().join("plugins/hello"),
        &plugin_wasm("trellis_plugin_hello"),
    )
    .unwrap();
    // Flip one byte inside the compressed stream: gzip's CRC or the SHA-256 list catches it.
    let mut broken = bytes.clone();
    let middle = broken.len() / 2;
    broken[middle] ^= 0x55;
    std::fs::write(tmp.path().join("broken.tplug"), broken).unwrap();
    let (code, out) = trellis(tmp.path(), &["plugin", "inspect", "broken.tplug"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid archive"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_and_randomness_come_from_the_host_and_can_be_frozen() {
    let field = |out: &trellis_engine::plugins::Outcome, name: &str| -> String {
        out.logs[0]
            .fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
        .unwrap()
        .to_utc();
    let frozen = HarnessOptions {
        frozen_clock: Some(at),
        ..options()
    };
    let h = Harness::start(&abuse(), frozen).await.unwrap();
    let a = h.event("abuse.clock", json!({})).await;
    let b = h.event("abuse.clock", json!({})).await;
    assert_eq!(field(&a, "now_ms"), at.timestamp_millis().to_string());
    assert_eq!(
        field(&a, "random"),
        field(&b, "random"),
        "frozen randomness repeats"
    );

    let live = Harness::start(&abuse(), options()).await.unwrap();
    let a = live.event("abuse.clock", json!({})).await;
    let b = live.event("abuse.clock", json!({})).await;
    let now: i64 = field(&a, "now_ms").parse().unwrap();
    assert!((now - chrono::Utc::now().timestamp_millis()).abs() < 60_000);
    assert_ne!(field(&a, "random"), field(&b, "random"));
}
