//! A plugin in Python (`host-api/examples/hello-py`, CPython inside) beside the same work in
//! Rust (`plugins/hello`): compiling it, its first invocation after loading (cold) and the ones
//! after (warm), on the real runtime with default settings.
//!
//! Run: `make plugins python`, then
//! `PATH=$PWD/target/python/bin:$PATH target/debug/trellis plugin build host-api/examples/hello-py`
//! and `CARGO_TARGET_DIR=target/bench cargo bench -p trellis-engine --bench python` (release).
//! Prints medians, p99s and the ratio to Rust; results are in `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_engine::harness::{Harness, HarnessOptions};
use trellis_engine::plugins::archive::{self, Archive};
use trellis_engine::plugins::{Call, Event, HttpRequest};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pack(dir: &str, wasm: &Path) -> Archive {
    assert!(
        wasm.is_file(),
        "{} is missing: see the header of this file",
        wasm.display()
    );
    archive::pack_dir(&root().join(dir), wasm).unwrap().0
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// (median, p99) in µs.
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn event() -> Call {
    Call::Event(Event {
        id: uuid::Uuid::now_v7().to_string(),
        kind: "payment.succeeded".into(),
        occurred_at: chrono::Utc::now(),
        payload: json!({ "amount": 100 }),
    })
}

fn stats() -> Call {
    Call::Http(HttpRequest {
        method: "GET".into(),
        path: "/stats".into(),
        ..HttpRequest::default()
    })
}

/// Starts a harness on `archive` (timing the load, which compiles it), then times its first
/// invocation and `n` more of each call.
async fn measure(name: &str, archive: &Archive, n: usize) -> (f64, f64) {
    let cache = tempfile::tempdir().unwrap();
    let options = HarnessOptions {
        kv_in_memory: true,
        min_log_level: "info",
        cache_dir: Some(cache.path().to_owned()),
        ..HarnessOptions::default()
    };
    let started = Instant::now();
    let h = Harness::start(archive, options).await.unwrap();
    println!(
        "{name}: load with compile {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let first = h.call(event()).await;
    assert!(first.result.is_ok(), "{:?}", first.result);
    println!(
        "{name}: cold (first invocation after loading) {:.0} µs",
        micros(started.elapsed())
    );
    let mut medians = (0.0, 0.0);
    for (label, call) in [
        ("event, one kv increment", event as fn() -> Call),
        ("route, kv list + tenant", stats),
    ] {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let outcome = h.call(call()).await;
            samples.push(micros(started.elapsed()));
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        }
        let (p50, p99) = summary(samples);
        println!("{name}: warm {label}: median {p50:.0} µs, p99 {p99:.0} µs");
        if label.starts_with("event") {
            medians.0 = p50;
        } else {
            medians.1 = p50;
        }
    }
    medians
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rust = pack(
            "plugins/hello",
            &root().join("target/wasm32-wasip2/plugin/trellis_plugin_hello.wasm"),
        );
        let python = pack(
            "host-api/examples/hello-py",
            &root().join("host-api/examples/hello-py/plugin.wasm"),
        );
        let (rust_event, _) = measure("rust", &rust, 2_000).await;
        let (python_event, _) = measure("python", &python, 500).await;
        println!(
            "python / rust, warm event: {:.1}×",
            python_event / rust_event
        );
    });
}
