//! The consoles in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/console_journey.py`, installed in `target/browser` by `make browser`), every
//! page checked by axe-core.

use trellis_tests::{Engine, TEST_PASSWORD, create_platform_admin, sqlite, workspace_root};

const ROOT_EMAIL: &str = "root@platform.test";

/// Playwright's Python and Chromium, when this machine has both; CI says it must
/// (`TRELLIS_TEST_REQUIRE_BROWSER`).
fn browser() -> Option<(std::path::PathBuf, String)> {
    let python = workspace_root().join("target/browser/bin/python");
    let playwright = std::process::Command::new(&python)
        .args(["-c", "import playwright, axe_playwright_python"])
        .output()
        .is_ok_and(|o| o.status.success());
    let chromium = std::process::Command::new("sh")
        .args(["-c", "command -v chromium || command -v chromium-browser"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|path| !path.is_empty());
    match (playwright, chromium) {
        (true, Some(chromium)) => Some((python, chromium)),
        _ => {
            assert!(
                !trellis_engine::config::test_requires_browser(),
                "the browser test is required here: `make browser` installs Playwright, \
                 Debian's `chromium` package the browser"
            );
            eprintln!("skipped: no Playwright in target/browser or no chromium on the PATH");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_staffs_the_tier_below_in_chromium_with_no_serious_accessibility_faults() {
    let Some((python, chromium)) = browser() else {
        return;
    };
    let db = sqlite();
    // The offline sandbox plays Alipay: the merchant's app, the card, the consumer who claims it.
    // Plain HTTP, as `make run` serves: the member page's round trip through Alipay's
    // authorisation comes back to the scheme the engine names.
    let engine = Engine::start(
        &db.url(),
        &[
            ("TRELLIS_SANDBOX__ENABLED", "true"),
            ("TRELLIS_HTTP__PUBLIC_SCHEME", "http"),
        ],
    );
    create_platform_admin(&db.url(), ROOT_EMAIL, TEST_PASSWORD);
    let port = engine.base_url.rsplit(':').next().unwrap().to_owned();
    let scratch = trellis_tests::tempdir();
    let shots = trellis_engine::config::test_screenshots_dir()
        .map(|dir| workspace_root().join(dir))
        .unwrap_or_else(|| scratch.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    // In the order the journey installs them: hello, then membership.
    let mut plugins = Vec::new();
    for (dir, lib) in [
        ("plugins/hello", "trellis_plugin_hello"),
        ("plugins/membership", "trellis_plugin_membership"),
    ] {
        let path = scratch.path().join(format!("{lib}.tplug"));
        std::fs::write(&path, trellis_tests::plugin_archive_bytes(dir, lib)).unwrap();
        plugins.push(path);
    }
    let run = tokio::process::Command::new(python)
        .arg(workspace_root().join("tests/browser/console_journey.py"))
        .args([
            "--port",
            &port,
            "--chromium",
            &chromium,
            "--root-email",
            ROOT_EMAIL,
        ])
        .arg("--shots")
        .arg(&shots)
        .args(
            plugins
                .iter()
                .flat_map(|p| [std::ffi::OsStr::new("--plugin"), p.as_os_str()]),
        )
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the journey failed:\n{out}\n{err}");
    assert!(out.contains("checked "), "{out}");
    drop(engine);
    db.cleanup().await;
}
