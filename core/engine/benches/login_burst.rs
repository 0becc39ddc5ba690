//! `/healthz` latency while a burst of sign-ins hits the engine: the real `trellis` binary on a
//! fresh SQLite database, probed 200 times while idle (the anchor) and 200 times during a burst
//! of 200 concurrent sign-ins with wrong passwords from ten addresses. Argon2 runs on a bounded blocking pool, so
//! the target is a burst p99 under 50 ms.
//!
//! Run: `cargo bench -p trellis-engine --bench login_burst` (release). Results are recorded in
//! `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "a bench-only password";
const PROBES: usize = 200;
const BURST: usize = 200;

fn trellis(data: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
    command
        .env("TRELLIS_DATA_DIR", data)
        .env(
            "TRELLIS_THEMES__DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../themes"),
        )
        .env("TRELLIS_HTTP__LISTEN", "127.0.0.1:0")
        .env("TRELLIS_LOG__LEVEL", "warn");
    command
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn probe(client: &reqwest::Client, url: &str, count: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let reply = client.get(url).send().await.unwrap();
        assert!(reply.status().is_success());
        out.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out.sort();
    out
}

fn main() {
    let data = tempfile::tempdir().unwrap();
    let mut admin = trellis(data.path())
        .args([
            "admin",
            "create",
            "--email",
            "bench@platform.test",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(admin.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(admin.wait().unwrap().success());
    let mut server = trellis(data.path())
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(address) = line.strip_prefix("Trellis is listening on ") {
            break address.trim().to_owned();
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let health = format!("{base}/healthz");
        probe(&client, &health, 20).await;
        let idle = probe(&client, &health, PROBES).await;
        let login = format!("{base}/api/v1/auth/login");
        // Ten source addresses (127.0.0.2–11), so the per-address limit (20 in 15 minutes)
        // lets every sign-in of the burst reach the password check or the hashing queue.
        let senders: Vec<reqwest::Client> = (2..12)
            .map(|n| {
                reqwest::Client::builder()
                    .no_proxy()
                    .local_address(std::net::IpAddr::from([127, 0, 0, n]))
                    .build()
                    .unwrap()
            })
            .collect();
        let mut burst = tokio::task::JoinSet::new();
        for n in 0..BURST {
            let client = senders[n % senders.len()].clone();
            let login = login.clone();
            burst.spawn(async move {
                let reply = client
                    .post(&login)
                    .json(&serde_json::json!({
                        "email": format!("guess{n}@bench.test"),
                        "password": "not the password",
                    }))
                    .send()
                    .await
                    .unwrap();
                reply.status().as_u16()
            });
        }
        let started = Instant::now();
        let during = probe(&client, &health, PROBES).await;
        let statuses = burst.join_all().await;
        let burst_time = started.elapsed();
        let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
        println!(
            "burst of {BURST} sign-ins from 10 addresses: {} checked (401), {} refused (429), over {burst_time:.2?}",
            count(401),
            count(429)
        );
        for (name, sample) in [("idle", &idle), ("during burst", &during)] {
            println!(
                "/healthz {name:>13}: median {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
                percentile(sample, 0.5),
                percentile(sample, 0.99),
                sample[sample.len() - 1]
            );
        }
        let ratio = percentile(&during, 0.99).as_secs_f64() / percentile(&idle, 0.99).as_secs_f64();
        println!("p99 ratio burst/idle: {ratio:.2} (target: burst p99 under 50 ms)");
    });
    let _ = server.kill();
    let _ = server.wait();
}
