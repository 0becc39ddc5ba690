//! The membership plugin at scale: one merchant with 100,000 members in the plugin's kv (on
//! SQLite, the embedded default), then full invocations of its routes — search by mobile (the
//! target: under 20 ms median), search by a mobile prefix, the first and a deep page of the
//! list, a member's detail, and an adjustment — each with the number of kv calls it made, which
//! stays flat as members grow (no full scan).
//!
//! Run: `make plugins && cargo bench -p trellis-engine --bench membership` (release); add
//! `-- N` after the command for another size. Results are recorded in `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_engine::harness::{Harness, HarnessOptions};
use trellis_engine::plugins::archive::{self, Archive};
use trellis_engine::plugins::{Outcome, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pack() -> Archive {
    let wasm = root().join("target/wasm32-wasip2/plugin/trellis_plugin_membership.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run `make plugins` first",
        wasm.display()
    );
    archive::pack_dir(&root().join("plugins/membership"), &wasm)
        .unwrap()
        .0
}

fn body(outcome: &Outcome) -> Value {
    match &outcome.result {
        Ok(Output::Http(response)) => {
            assert!(
                response.status < 300,
                "{}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
            serde_json::from_slice(&response.body).unwrap()
        }
        other => panic!("{other:?}"),
    }
}

fn kv_calls(outcome: &Outcome) -> usize {
    outcome
        .host_calls
        .iter()
        .filter(|c| c.interface == "kv")
        .count()
}

fn mobile(i: usize) -> String {
    format!("139{:08}", i * 7919 % 100_000_000)
}

/// (median, p99) in ms.
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Times `rounds` invocations of the route `request(i)` names: (method, target, body).
async fn measure<F>(h: &Harness, name: &str, rounds: usize, mut request: F)
where
    F: FnMut(usize) -> (&'static str, String, Vec<u8>),
{
    let mut samples = Vec::with_capacity(rounds);
    let mut kv = 0;
    for i in 0..rounds {
        let (method, target, payload) = request(i);
        let started = Instant::now();
        let outcome = h.http(method, &target, payload).await;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        body(&outcome);
        kv = kv.max(kv_calls(&outcome));
    }
    let (median, p99) = summary(samples);
    println!("{name:<34} median {median:>7.2} ms   p99 {p99:>7.2} ms   kv calls ≤ {kv}");
}

fn main() {
    // `cargo bench … -- N` for another size; cargo's own flags (`--bench`) are not numbers.
    let members: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let h = Harness::start(&pack(), HarnessOptions::default())
            .await
            .unwrap();
        let levels = json!({"levels": [
            {"name": "普通", "kind": "normal", "threshold": 0},
            {"name": "银卡", "kind": "normal", "threshold": 1000},
            {"name": "金卡", "kind": "normal", "threshold": 5000},
        ]});
        body(&h.http("PUT", "/levels", levels.to_string().into_bytes()).await);

        let started = Instant::now();
        for batch in (0..members).collect::<Vec<_>>().chunks(50) {
            let rows: Vec<Value> = batch
                .iter()
                .map(|&i| {
                    json!({"mobile": mobile(i), "name": format!("会员{i}"), "experience": i % 6000, "points": i % 500})
                })
                .collect();
            let imported = body(
                &h.http(
                    "POST",
                    "/members/import",
                    json!({ "members": rows }).to_string().into_bytes(),
                )
                .await,
            );
            assert_eq!(
                imported["created"].as_array().unwrap().len(),
                batch.len(),
                "{imported}"
            );
        }
        println!(
            "imported {members} members in {:.1} s (50 per call)",
            started.elapsed().as_secs_f64()
        );

        let pick = |i: usize| (i * 104_729) % members;
        let get = |target: String| ("GET", target, Vec::new());
        measure(&h, "search by mobile (exact)", 300, |i| {
            get(format!("/members?q={}", mobile(pick(i))))
        })
        .await;
        measure(&h, "search by mobile prefix (7 digits)", 300, |i| {
            get(format!("/members?q={}&limit=20", &mobile(pick(i))[..7]))
        })
        .await;
        measure(&h, "list, first page of 50", 100, |_| {
            get("/members?limit=50".into())
        })
        .await;
        let deep = format!("{:010}", members / 2);
        measure(&h, "list, page of 50 in the middle", 100, |_| {
            get(format!("/members?limit=50&after={deep}"))
        })
        .await;
        measure(&h, "member detail with ledger", 300, |i| {
            get(format!("/members/{:010}", pick(i) + 1))
        })
        .await;
        measure(&h, "adjust points and experience", 300, |i| {
            let adjust = json!({"points": 10, "experience": 25, "reason": "bench"});
            (
                "POST",
                format!("/members/{:010}/adjustments", pick(i) + 1),
                adjust.to_string().into_bytes(),
            )
        })
        .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
}
