//! The `trellis` command line's contract: exit 0 on success, 1 on a runtime failure, 2 on a
//! usage or configuration error, with one clear line on stderr.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking, with the value in the message"
)]

use std::process::{Command, Output};

fn trellis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRELLIS_") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(dir.path())
        .env("TRELLIS_DATA_DIR", dir.path())
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_prints_the_crate_version_and_exits_zero() {
    let output = trellis(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let output = trellis(&["frobnicate"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("frobnicate"));
}

#[test]
fn a_bad_config_value_exits_two_naming_the_key_on_one_line() {
    let output = trellis(&["config", "show"], &[("TRELLIS_HTTP__LISTEN", "nowhere")]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("http.listen"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn a_missing_config_file_exits_two() {
    let output = trellis(
        &["--config", "/nonexistent/trellis.toml", "config", "show"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/trellis.toml"));
}

#[test]
fn the_config_file_comes_from_trellis_config_when_no_flag_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom.toml");
    std::fs::write(&file, "[http]\nlisten = \"127.0.0.1:7777\"\n").unwrap();
    let output = trellis(
        &["config", "show"],
        &[("TRELLIS_CONFIG", file.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("127.0.0.1:7777"));
}

#[test]
fn an_unreachable_database_is_a_runtime_failure() {
    let output = trellis(
        &["migrate"],
        &[(
            "TRELLIS_DATABASE__URL",
            "postgres://nobody@127.0.0.1:9/none",
        )],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).starts_with("error: "));
}

#[test]
fn the_example_config_file_loads_and_matches_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let with_example = trellis(&["--config", example, "config", "show"], &[]);
    assert_eq!(
        with_example.status.code(),
        Some(0),
        "{}",
        stderr(&with_example)
    );
    let defaults = trellis(&["config", "show"], &[]);
    // The data folder (and what derives from it) differs per run; everything else must be the
    // documented default.
    let strip = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| {
                !["data_dir", "url", "cache_dir"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&with_example), strip(&defaults));
}

mod alipay {
    use std::io::Write;
    use std::process::{Command, Output, Stdio};

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../alipay/tests/vectors/");

    fn run(args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .arg("alipay")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn vectors(name: &str) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(format!("{VECTORS}{name}")).unwrap()).unwrap()
    }

    fn form(case: &serde_json::Value) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in case["form_params"].as_object().unwrap() {
            form.append_pair(k, v.as_str().unwrap());
        }
        form.finish()
    }

    #[test]
    fn sign_prints_the_string_to_sign_and_the_official_sign() {
        let case = &vectors("requests.json")["cases"][0];
        let args: Vec<String> = case["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect();
        let key = format!("{VECTORS}keys/app_private_pkcs1.pem");
        let mut all = vec!["sign", "--private-key", &key];
        all.extend(args.iter().map(String::as_str));
        let output = run(&all, b"");
        assert_eq!(output.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(case["sign_content"].as_str().unwrap()));
        assert!(stdout.contains(&format!("sign: {}", case["sign"].as_str().unwrap())));
        assert_eq!(
            run(
                &["sign", "--private-key", &key, "--sign-type", "SM2", "a=b"],
                b""
            )
            .status
            .code(),
            Some(2)
        );
        assert_eq!(
            run(&["sign", "--private-key", "/nonexistent", "a=b"], b"")
                .status
                .code(),
            Some(2)
        );
    }

    #[test]
    fn verify_notify_exits_zero_valid_one_invalid_two_bad_input() {
        let case = &vectors("notifications.json")["cases"][0];
        let key = format!("{VECTORS}keys/alipay_public.pem");
        let body = form(case);
        assert_eq!(
            run(
                &["verify-notify", "--alipay-public-key", &key],
                body.as_bytes()
            )
            .status
            .code(),
            Some(0)
        );
        let tampered = body.replace("total_amount=0.10", "total_amount=9.10");
        assert_ne!(tampered, body);
        assert_eq!(
            run(
                &["verify-notify", "--alipay-public-key", &key],
                tampered.as_bytes()
            )
            .status
            .code(),
            Some(1)
        );
        assert_eq!(
            run(
                &["verify-notify", "--alipay-public-key", &key, "--v2"],
                body.as_bytes()
            )
            .status
            .code(),
            Some(1)
        );
        assert_eq!(
            run(
                &["verify-notify", "--alipay-public-key", &key],
                b"no-sign-here=1"
            )
            .status
            .code(),
            Some(2)
        );
        let app_key = format!("{VECTORS}keys/app_private_pkcs8.pem");
        assert_eq!(
            run(
                &["verify-notify", "--alipay-public-key", &app_key],
                body.as_bytes()
            )
            .status
            .code(),
            Some(2)
        );
    }

    #[test]
    fn verify_response_cert_sns_and_aes_round_trip() {
        let responses = vectors("responses.json");
        let key = format!("{VECTORS}keys/alipay_public.pem");
        for case in responses["cases"].as_array().unwrap() {
            let sign_type = case["sign_type"].as_str().unwrap();
            let output = run(
                &[
                    "verify-response",
                    "--method",
                    case["method"].as_str().unwrap(),
                    "--alipay-public-key",
                    &key,
                    "--sign-type",
                    sign_type,
                ],
                case["body"].as_str().unwrap().as_bytes(),
            );
            let expected = if case["expected_valid"].as_bool().unwrap() {
                0
            } else {
                1
            };
            assert_eq!(output.status.code(), Some(expected), "{}", case["name"]);
        }
        assert_eq!(
            run(
                &[
                    "verify-response",
                    "--method",
                    "m",
                    "--alipay-public-key",
                    &key
                ],
                b"not json"
            )
            .status
            .code(),
            Some(2)
        );

        let certs = vectors("certs.json");
        let sn = run(&["cert-sn", &format!("{VECTORS}certs/app_cert.pem")], b"");
        assert_eq!(
            String::from_utf8_lossy(&sn.stdout).trim(),
            certs["app_cert_sn"].as_str().unwrap()
        );
        let root = run(
            &["root-cert-sn", &format!("{VECTORS}certs/root_bundle.pem")],
            b"",
        );
        assert_eq!(
            String::from_utf8_lossy(&root.stdout).trim(),
            certs["root_cert_sn"].as_str().unwrap()
        );
        assert_eq!(
            run(&["cert-sn", &key], b"").status.code(),
            Some(2),
            "a public key is not a certificate"
        );

        let aes = &vectors("aes.json")["cases"][0];
        let k = aes["key"].as_str().unwrap();
        let enc = run(
            &["aes-encrypt", "--key", k],
            aes["plaintext"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&enc.stdout).trim(),
            aes["ciphertext"].as_str().unwrap()
        );
        let dec = run(
            &["aes-decrypt", "--key", k],
            aes["ciphertext"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&dec.stdout).trim(),
            aes["plaintext"].as_str().unwrap()
        );
        assert_eq!(
            run(&["aes-decrypt", "--key", "c2hvcnQ="], b"AAAA")
                .status
                .code(),
            Some(2)
        );
    }

    #[test]
    fn keygen_prints_a_usable_pair() {
        for flag in ["--pkcs1", "--pkcs8"] {
            let output = run(&["keygen", flag], b"");
            assert_eq!(output.status.code(), Some(0));
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .collect();
            assert_eq!(lines.len(), 2, "{text}");
            let dir = tempfile::tempdir().unwrap();
            let key_file = dir.path().join("key");
            std::fs::write(&key_file, lines[0]).unwrap();
            assert!(lines[1].starts_with("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
            let signed = run(
                &["sign", "--private-key", key_file.to_str().unwrap(), "a=1"],
                b"",
            );
            assert_eq!(signed.status.code(), Some(0));
        }
    }
}
