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
    // The data folder differs per run; everything else must be the documented default.
    let strip = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with("data_dir") && !l.starts_with("url"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&with_example), strip(&defaults));
}
