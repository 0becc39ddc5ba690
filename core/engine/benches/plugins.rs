//! The plugin runtime: a full invocation of `plugins/hello`, loading a precompiled plugin, and
//! how 1,000 concurrent looping invocations affect a well-behaved plugin's latency.
//!
//! Run: `make plugins && cargo bench -p trellis-engine --bench plugins` (release). Prints
//! medians, p99s and ratios; results are recorded in `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_engine::harness::{Harness, HarnessOptions};
use trellis_engine::plugins::archive::{self, Archive};
use trellis_engine::plugins::{Call, Error, Event, HttpRequest, Outcome, Request};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pack(dir: &str, component: &str) -> Archive {
    let wasm = root()
        .join("target/wasm32-wasip2/plugin")
        .join(format!("{component}.wasm"));
    assert!(
        wasm.is_file(),
        "{} is missing: run `make plugins` first",
        wasm.display()
    );
    archive::pack_dir(&root().join(dir), &wasm).unwrap().0
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

fn event(kind: &str, payload: serde_json::Value) -> Call {
    Call::Event(Event {
        id: uuid::Uuid::now_v7().to_string(),
        kind: kind.into(),
        occurred_at: chrono::Utc::now(),
        payload,
    })
}

fn small_page() -> Call {
    Call::Http(HttpRequest {
        method: "GET".into(),
        path: "/small".into(),
        ..HttpRequest::default()
    })
}

fn kv_micros(outcome: &Outcome) -> f64 {
    outcome
        .host_calls
        .iter()
        .filter(|c| c.interface == "kv")
        .map(|c| c.micros as f64)
        .sum()
}

async fn quick_latencies(
    h: &Harness,
    plugin: &Arc<trellis_engine::plugins::Loaded>,
    n: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut request: Request = h.request(small_page());
        request.tenant.installation_id = "quick".into();
        let started = Instant::now();
        let outcome = h.runtime.invoke(plugin, request).await;
        out.push(micros(started.elapsed()));
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hello = pack("plugins/hello", "trellis_plugin_hello");
        let abuse = pack("tests/plugins/abuse", "trellis_fixture_abuse");
        let options = HarnessOptions {
            max_concurrency: 2_000,
            breaker_traps: u32::MAX,
            min_log_level: "info",
            ..HarnessOptions::default()
        };
        let (h, others) = Harness::start_with(&[&hello, &abuse], options).await.unwrap();
        let abuse_plugin = others[0].clone();
        println!("allocation: {}", h.runtime.allocation());
        // `-- floor N`: only the no-host-call route, N times (for profiling).
        let args: Vec<String> = std::env::args().collect();
        if let Some(at) = args.iter().position(|a| a == "floor") {
            let n = args.get(at + 1).and_then(|n| n.parse().ok()).unwrap_or(20_000);
            let (f50, f99) = summary(quick_latencies(&h, &abuse_plugin, n).await);
            println!("floor: median {f50:.1} µs, p99 {f99:.1} µs");
            return;
        }

        let only_hello = args.iter().any(|a| a == "hello");
        // `-- route PATH N`: a hello route N times, with guest CPU (for profiling).
        if let Some(at) = args.iter().position(|a| a == "route") {
            let path = args.get(at + 1).cloned().unwrap_or_else(|| "/stats".into());
            let n: usize = args.get(at + 2).and_then(|n| n.parse().ok()).unwrap_or(5_000);
            let (mut cpu, mut rest) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let request = h.request(Call::Http(HttpRequest { method: "GET".into(), path: path.clone(), ..HttpRequest::default() }));
                let started = Instant::now();
                let outcome = h.runtime.invoke(&h.plugin, request).await;
                let wall = micros(started.elapsed());
                assert!(outcome.result.is_ok(), "{:?}", outcome.result);
                cpu.push(micros(outcome.cpu));
                rest.push(wall - outcome.host_calls.iter().map(|c| c.micros as f64).sum::<f64>());
            }
            println!("{path}: guest cpu {:?}, wall minus host calls {:?}", summary(cpu), summary(rest));
            return;
        }
        // 1. A full invocation of hello: fresh store, instantiate, a 1 KB event, one kv write
        //    (an increment). The target leaves the database out, so the kv lives in memory here;
        //    the same on SQLite follows.
        let payload = json!({ "amount": 100, "buyer_id": "2088000000000001", "note": "x".repeat(960) });
        assert!((1000..1100).contains(&payload.to_string().len()));
        let memory = HarnessOptions {
            kv_in_memory: true,
            min_log_level: "info",
            ..HarnessOptions::default()
        };
        let hm = Harness::start(&hello, memory).await.unwrap();
        // `-- rounds N`: N separate rounds in this one process, to tell a slow process from a
        // slow moment.
        if let Some(at) = args.iter().position(|a| a == "rounds") {
            let n: usize = args.get(at + 1).and_then(|n| n.parse().ok()).unwrap_or(8);
            for round in 0..n {
                let (mut walls, mut fixed) = (Vec::new(), Vec::new());
                let block = vec![7u8; 16 << 10];
                let faults = || -> f64 {
                    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
                    let after = stat.rsplit(')').next().unwrap_or_default();
                    after.split_whitespace().nth(7).and_then(|v| v.parse().ok()).unwrap_or(0.0)
                };
                let before = faults();
                for _ in 0..3_000 {
                    let request = hm.request(event("payment.succeeded", payload.clone()));
                    let started = Instant::now();
                    let outcome = hm.runtime.invoke(&hm.plugin, request).await;
                    walls.push(micros(started.elapsed()));
                    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
                    // A fixed piece of pure CPU work, timed the same way: if it slows down in
                    // the same rounds, the machine is slow, not the invocation.
                    let started = Instant::now();
                    std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(std::hint::black_box(&block)));
                    fixed.push(micros(started.elapsed()));
                }
                let (r50, r99) = summary(walls);
                let (f50, _) = summary(fixed);
                let per_call = (faults() - before) / 3_000.0;
                println!("round {round}: median {r50:.1} µs, p99 {r99:.1} µs; fixed work {f50:.1} µs; {per_call:.2} minor faults per call");
            }
            return;
        }
        let mut in_memory = Vec::new();
        let mut in_memory_cpu = Vec::new();
        for i in 0..6_000 {
            let request = hm.request(event("payment.succeeded", payload.clone()));
            let started = Instant::now();
            let outcome = hm.runtime.invoke(&hm.plugin, request).await;
            let wall = micros(started.elapsed());
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            assert_eq!(outcome.host_calls.len(), 1, "one kv write: {:?}", outcome.host_calls);
            if i >= 1_000 {
                in_memory.push(wall);
                in_memory_cpu.push(micros(outcome.cpu));
            }
        }
        drop(hm);
        let (m50, m99) = summary(in_memory);
        println!("hello handle-event, 1 KB payload, 5,000 runs:");
        println!("  kv in memory (the database left out): median {m50:.1} µs, p99 {m99:.1} µs (targets 40 / 150)");
        let (c50, c99) = summary(in_memory_cpu);
        println!("    of which running the guest (from instantiation on): median {c50:.1} µs, p99 {c99:.1} µs");
        if only_hello {
            return;
        }
        let mut total = Vec::new();
        let mut without_kv = Vec::new();
        for i in 0..3_000 {
            let request = h.request(event("payment.succeeded", payload.clone()));
            let started = Instant::now();
            let outcome = h.runtime.invoke(&h.plugin, request).await;
            let wall = micros(started.elapsed());
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            if i >= 500 {
                total.push(wall);
                without_kv.push(wall - kv_micros(&outcome));
            }
        }
        let (t50, t99) = summary(total);
        let (x50, x99) = summary(without_kv);
        println!(
            "  kv on SQLite: median {t50:.1} µs, p99 {t99:.1} µs; minus the time inside the kv call: median {x50:.1} µs, p99 {x99:.1} µs"
        );

        // The floor: a route with no host calls.
        let floor = quick_latencies(&h, &abuse_plugin, 5_000).await;
        let (f50, f99) = summary(floor[500..].to_vec());
        println!("a route with no host calls (instantiate + call + drop): median {f50:.1} µs, p99 {f99:.1} µs");

        // 2. Loading a precompiled plugin (artifact cached on disk) versus compiling it.
        let mut loads = Vec::new();
        for _ in 0..300 {
            h.runtime.evict(&hello.digest);
            let started = Instant::now();
            h.runtime.load(&hello).unwrap();
            loads.push(micros(started.elapsed()));
        }
        let (l50, l99) = summary(loads);
        let mut compiles = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            trellis_engine::plugins::inspect_component(&hello.component).unwrap();
            compiles.push(micros(started.elapsed()));
        }
        let (c50, _) = summary(compiles);
        println!(
            "load precompiled hello: median {:.3} ms, p99 {:.3} ms (target 1 ms); compiling it: {:.1} ms ({:.0}×)",
            l50 / 1e3,
            l99 / 1e3,
            c50 / 1e3,
            c50 / l50
        );

        // 3. A well-behaved plugin's latency while 1,000 looping invocations are in flight.
        let baseline = quick_latencies(&h, &abuse_plugin, 3_000).await;
        let (b50, b99) = summary(baseline[500..].to_vec());
        let mut loopers = Vec::new();
        for _ in 0..1_000 {
            let runtime = h.runtime.clone();
            let plugin = abuse_plugin.clone();
            let mut request = h.request(event("abuse.loop", json!({})));
            request.tenant.installation_id = "looper".into();
            loopers.push(tokio::spawn(async move { runtime.invoke(&plugin, request).await }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let started = Instant::now();
        let loaded = quick_latencies(&h, &abuse_plugin, 8_000).await;
        let window = started.elapsed();
        let still_running = loopers.iter().filter(|l| !l.is_finished()).count();
        let (u50, u99) = summary(loaded);
        let mut ends = std::collections::BTreeMap::<String, usize>::new();
        for looper in loopers {
            let outcome = looper.await.unwrap();
            let key = match outcome.result {
                Err(Error::Trap { reason, .. }) => format!("trap {}", reason.as_str()),
                Err(Error::Timeout { .. }) => "wall-clock timeout".into(),
                Err(Error::Busy { .. }) => "busy (never started)".into(),
                Err(e) => e.to_string(),
                Ok(_) => "finished?".into(),
            };
            *ends.entry(key).or_default() += 1;
        }
        println!("well-behaved route, idle: median {b50:.1} µs, p99 {b99:.1} µs");
        println!(
            "well-behaved route, 1,000 looping invocations in flight ({} still in flight at the end of the {:.2} s window): median {u50:.1} µs, p99 {u99:.1} µs",
            still_running,
            window.as_secs_f64()
        );
        println!("  p99 ratio {:.2} (target ≤ 2), median ratio {:.2}", u99 / b99, u50 / b50);
        println!("  how the loopers ended: {ends:?}");
    });
}
