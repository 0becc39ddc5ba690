//! Installing plugins: signature policies and first-party plugins in one command.

use super::*;

/// A partner that requires signatures installs only archives signed by a key it trusts.
#[tokio::test]
async fn a_partner_requiring_signatures_refuses_unsigned_and_untrusted_archives() {
    use trellis_engine::plugins::archive;
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    create_platform_admin(&db.url(), ROOT, PASSWORD);
    let root = Api::new(&engine, CONSOLE).login(ROOT, PASSWORD).await;
    let partner = node(
        &root,
        "partners",
        None,
        json!({"name": "P", "domains": ["p.test"]}),
    )
    .await;
    let (trusted_key, trusted_public) = archive::keygen().unwrap();
    let (other_key, _) = archive::keygen().unwrap();
    let policy = format!("/api/v1/partners/{partner}/plugin-policy");
    let bad = root
        .put(
            &policy,
            json!({"require_signature": true, "trusted_keys": []}),
        )
        .await;
    assert_eq!(bad.status, 422, "{bad:?}");
    assert_eq!(bad.body["field"], "trusted_keys");
    root.put(
        &policy,
        json!({"require_signature": true, "trusted_keys": [trusted_public]}),
    )
    .await
    .ok();
    let unsigned = plugin_archive_bytes("plugins/hello", "trellis_plugin_hello");
    let upload = format!("/api/v1/partners/{partner}/plugins");
    let refused = root.upload(&upload, unsigned.clone()).await;
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(refused.body["code"], "untrusted_publisher");
    let untrusted = archive::sign(&unsigned, &other_key).unwrap();
    let refused = root.upload(&upload, untrusted).await;
    assert_eq!(refused.body["code"], "untrusted_publisher", "{refused:?}");
    let signed = archive::sign(&unsigned, &trusted_key).unwrap();
    let installed = root.upload(&upload, signed).await;
    assert_eq!(installed.status, 201, "{installed:?}");
    drop(engine);
}

/// `trellis plugin install --first-party` installs every plugin built from `plugins/` for a
/// partner in one command; a broken archive is refused with its reason and exit code 1.
#[tokio::test]
async fn first_party_plugins_install_for_a_partner_in_one_command() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    create_platform_admin(&db.url(), ROOT, PASSWORD);
    let root = Api::new(&engine, CONSOLE).login(ROOT, PASSWORD).await;
    let partner = node(
        &root,
        "partners",
        None,
        json!({"name": "P", "domains": ["p.test"]}),
    )
    .await;
    let dir = trellis_tests::tempdir();
    let output = trellis_tests::trellis_command(dir.path(), &db.url())
        .current_dir(trellis_tests::workspace_root())
        .args([
            "plugin",
            "install",
            "--first-party",
            "--offer",
            "--partner",
            &partner,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(HELLO), "{stdout}");
    let listed = root
        .get(&format!("/api/v1/partners/{partner}/plugins"))
        .await
        .ok();
    let hello = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["plugin_id"] == HELLO)
        .cloned()
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(hello["offered"], true);

    let broken = dir.path().join("broken.tplug");
    std::fs::write(&broken, b"not an archive").unwrap();
    let output = trellis_tests::trellis_command(dir.path(), &db.url())
        .args(["plugin", "install", "--partner", &partner])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(engine);
}
