//! Alipay RSA2 throughput, side by side with OpenSSL in the same run.
//!
//! Run: `cargo bench -p trellis-engine --bench alipay` (release). It measures the engine's sign,
//! verify and notification verification (aws-lc-rs), the `rsa` crate for reference, then runs
//! `openssl speed rsa2048` on the same core and prints the ratios. Results: `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use rsa::pkcs8::DecodePrivateKey;
use secrecy::SecretString;
use trellis_engine::alipay::notify::{Notification, NotifyRule};
use trellis_engine::alipay::{PrivateKey, SignType};

/// Median operations per second over `rounds` rounds of `batch` calls each.
fn ops_per_sec(rounds: usize, batch: usize, mut op: impl FnMut()) -> f64 {
    for _ in 0..batch {
        op();
    }
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                op();
            }
            batch as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// `openssl speed` sign/s and verify/s for RSA-2048 on one core, if openssl is installed.
fn openssl_speed() -> Option<(f64, f64)> {
    let output = Command::new("openssl")
        .args(["speed", "-seconds", "3", "rsa2048"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "rsa 2048 bits 0.000245s 0.000007s   4081.6 142857.1" (newer: "rsa  2048 bits …")
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("rsa") && l.contains("2048 bits"))?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [.., sign, verify] = numbers.as_slice() else {
        return None;
    };
    Some((*sign, *verify))
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, batch) = if quick { (3, 20) } else { (15, 400) };
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../alipay/tests/vectors/keys/app_private_pkcs8.pem"
    ))
    .unwrap();
    let key = PrivateKey::parse(&SecretString::from(pem.clone())).unwrap();
    let public = key.public_key().clone();
    let content = "app_id=2021004100000001&biz_content={\"out_trade_no\":\"T20240520-0001\",\"total_amount\":\"0.10\"}\
                   &charset=utf-8&format=json&method=alipay.trade.query&sign_type=RSA2&timestamp=2024-05-20 10:30:00&version=1.0";
    let sign = key.sign(SignType::Rsa2, content).unwrap();

    let ours_sign = ops_per_sec(rounds, batch / 4, || {
        black_box(key.sign(SignType::Rsa2, black_box(content)).unwrap());
    });
    let ours_verify = ops_per_sec(rounds, batch * 4, || {
        assert!(public.verify(SignType::Rsa2, black_box(content.as_bytes()), &sign));
    });

    let mut form = url::form_urlencoded::Serializer::new(String::new());
    let fields = [
        ("notify_type", "trade_status_sync"),
        ("notify_id", "2024052000222103000012345678901234"),
        ("app_id", "2021004100000001"),
        ("trade_no", "2024052022001400001"),
        ("out_trade_no", "T20240520-0001"),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", "0.10"),
        (
            "fund_bill_list",
            "[{\"amount\":\"0.10\",\"fundChannel\":\"ALIPAYACCOUNT\"}]",
        ),
        ("gmt_payment", "2024-05-20 10:31:00"),
        ("charset", "utf-8"),
        ("version", "1.0"),
    ];
    let unsigned = Notification {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let notify_sign = key
        .sign(SignType::Rsa2, &unsigned.signed_content(NotifyRule::V1))
        .unwrap();
    for (k, v) in fields {
        form.append_pair(k, v);
    }
    form.append_pair("sign_type", "RSA2")
        .append_pair("sign", &notify_sign);
    let body = form.finish();
    let ours_notify = ops_per_sec(rounds, batch * 2, || {
        let n = Notification::parse(black_box(body.as_bytes())).unwrap();
        n.verify(&public, NotifyRule::V1).unwrap();
    });

    // The pure-Rust `rsa` crate, for reference: it is what the engine would use without aws-lc-rs.
    let rsa_key = rsa::PrivateKey::from_pkcs8_pem(&pem).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content.as_bytes());
    let mut info = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    info.extend_from_slice(digest.as_ref());
    let rsa_sign = ops_per_sec(rounds.min(5), (batch / 40).max(2), || {
        black_box(
            rsa_key
                .sign(rsa::Pkcs1v15Sign::new_unprefixed(), &info)
                .unwrap(),
        );
    });

    println!("RSA2 (SHA256withRSA, 2048-bit), one core, median of {rounds} rounds");
    println!("  engine (aws-lc-rs) sign            {ours_sign:>10.0} /s");
    println!("  engine (aws-lc-rs) verify          {ours_verify:>10.0} /s");
    println!("  engine notification parse+verify   {ours_notify:>10.0} /s");
    println!("  rsa crate 0.10 sign (reference)    {rsa_sign:>10.0} /s");
    match openssl_speed() {
        Some((sign_s, verify_s)) => {
            println!("  openssl speed rsa2048 sign         {sign_s:>10.0} /s");
            println!("  openssl speed rsa2048 verify       {verify_s:>10.0} /s");
            println!(
                "  ratio sign   engine/openssl        {:>10.2}",
                ours_sign / sign_s
            );
            println!(
                "  ratio verify engine/openssl        {:>10.2}",
                ours_verify / verify_s
            );
        }
        None => println!("  openssl not available: no side-by-side ratio"),
    }
}
