//! `trellis plugin new NAME`: the files of a working plugin — manifest, configuration schema,
//! a themed member page, a staff view, an event handler and a unit test — ready to build, pack
//! and run in the harness.
//!
//! Invariant: it writes only into a new folder of that name and never overwrites anything.

use std::path::{Path, PathBuf};

use super::Failure;

/// The files of a new plugin, with `{name}`, `{crate}`, `{type}` and `{sdk}` to fill in.
const FILES: [(&str, &str); 6] = [
    (
        "Cargo.toml",
        r#"[package]
name = "{crate}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
trellis-host-api = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

# Small components that keep function names, so a crash's backtrace is readable.
[profile.release]
opt-level = "s"
lto = true
strip = "debuginfo"
panic = "abort"

# This crate stands alone, not inside another workspace.
[workspace]
"#,
    ),
    (
        "plugin.toml",
        r#"id = "com.example.{name}"          # reverse-DNS; use a prefix you own
version = "0.1.0"
host_api = "^0.1"
name = "{name}"
description = "Counts the merchant's payments and greets its members."
publisher = "Example"
subscribe = ["payment.succeeded"]

[capabilities]
kv = { max_keys = 10000, max_bytes = 1048576 }
templates = ["page.hbs"]

# Its routes are declared in src/lib.rs (`routes!`); packing adds them here.

[config]
schema = "config.schema.json"

[limits]
memory_mib = 16
cpu_ms = 50
wall_ms = 1000

[i18n.en]
name = "{name}"

[i18n.zh-CN]
name = "{name}"
"#,
    ),
    (
        "config.schema.json",
        r#"{
  "type": "object",
  "properties": {
    "greeting": { "type": "string", "minLength": 1, "maxLength": 40, "default": "Hello" }
  },
  "additionalProperties": false
}
"#,
    ),
    (
        "templates/page.hbs",
        r#"<section>
  <h1>{{greeting}}</h1>
  <p>{{payments}}</p>
</section>
"#,
    ),
    (
        "src/lib.rs",
        r#"//! {name}: counts the merchant's payments once each and greets its members on a page.

use serde::Deserialize;
use trellis_host_api::prelude::*;

/// The configuration, with the schema's defaults already filled in by the engine.
#[derive(Deserialize)]
struct Config {
    greeting: String,
}

/// What the member page says about the count: plain logic, tested natively below.
fn payments_line(count: i64) -> String {
    match count {
        0 => "No payments yet".to_owned(),
        1 => "1 payment so far".to_owned(),
        n => format!("{n} payments so far"),
    }
}

fn payments() -> Result<i64> {
    Ok(kv::get("payments")?
        .and_then(|e| String::from_utf8_lossy(&e.value).parse().ok())
        .unwrap_or(0))
}

struct {type};

impl Plugin for {type} {
    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        // At least once: the mark and the count are kept together, or neither is.
        kv::once("payment", &event.id, || kv::increment("payments", 1))?;
        Ok(())
    }

    fn handle_http(ctx: &Tenant, request: &Request) -> Result<Response> {
        routes(ctx, request)
    }
}

// Each route once: method, path, who may call it, handler.
routes! {
    GET "/" member => page,
    GET "/stats" staff => stats,
}

/// A page for the merchant's members, on the partner's domain, in its theme.
fn page(_ctx: &Tenant, _request: &Request) -> Result<Response> {
    let config: Config = config::get()?;
    let html = templates::render(
        "page.hbs",
        &serde_json::json!({
            "title": config.greeting,
            "greeting": config.greeting,
            "payments": payments_line(payments()?),
        }),
    )?;
    Ok(Response::html(200, html))
}

/// A JSON view for the merchant's staff (and the owner).
fn stats(_ctx: &Tenant, _request: &Request) -> Result<Response> {
    Response::json(200, &serde_json::json!({ "payments": payments()? }))
}

export_plugin!({type});

#[cfg(test)]
mod tests {
    use super::payments_line;

    #[test]
    fn the_page_counts_payments_in_words() {
        assert_eq!(payments_line(0), "No payments yet");
        assert_eq!(payments_line(1), "1 payment so far");
        assert_eq!(payments_line(12), "12 payments so far");
    }
}
"#,
    ),
    (".gitignore", "/target\n/plugin.wasm\n*.tplug\n/state\n"),
];

/// Whether `name` makes a plugin folder, crate and id: lower-case letters, digits and dashes.
fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase()
        && !name.ends_with('-')
}

/// The SDK folder: `--sdk`, else a `host-api` folder of a Trellis checkout in or above `from`.
fn sdk_folder(sdk: Option<&Path>, from: &Path) -> Result<PathBuf, Failure> {
    if let Some(sdk) = sdk {
        if !sdk.join("Cargo.toml").is_file() {
            return Err(Failure::Usage(format!(
                "--sdk {}: no Cargo.toml there; name the host-api folder of a Trellis checkout",
                sdk.display()
            )));
        }
        return Ok(sdk.to_owned());
    }
    from.ancestors()
        .map(|dir| dir.join("host-api"))
        .find(|dir| dir.join("wit").is_dir() && dir.join("Cargo.toml").is_file())
        .ok_or_else(|| {
            Failure::Usage(
                "no host-api folder in or above this one: name the SDK with --sdk PATH (the host-api folder of a Trellis checkout)".into(),
            )
        })
}

/// Writes a new plugin named `name` into `parent/name`; returns its folder.
pub fn write(parent: &Path, name: &str, sdk: Option<&Path>) -> Result<PathBuf, Failure> {
    if !valid_name(name) {
        return Err(Failure::Usage(format!(
            "{name:?}: a plugin name is 1 to 40 lower-case letters, digits and dashes, starting with a letter"
        )));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(Failure::Usage(format!(
            "{} exists; choose another name or folder",
            dir.display()
        )));
    }
    let sdk = sdk_folder(sdk, parent)?;
    let sdk = std::fs::canonicalize(&sdk)
        .map_err(|e| Failure::Usage(format!("{}: {e}", sdk.display())))?;
    let crate_name = name.replace('-', "_");
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    for (file, text) in FILES {
        let path = dir.join(file);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .map_err(|e| Failure::Runtime(format!("{}: {e}", folder.display())))?;
        }
        let text = text
            .replace("{name}", name)
            .replace("{crate}", &crate_name)
            .replace("{type}", &type_name)
            .replace("{sdk}", &sdk.display().to_string());
        std::fs::write(&path, text)
            .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_plugin_is_written_once_under_a_valid_name_with_its_sdk() {
        let tmp = tempfile::tempdir().unwrap();
        let sdk = tmp.path().join("trellis/host-api");
        std::fs::create_dir_all(sdk.join("wit")).unwrap();
        std::fs::write(sdk.join("Cargo.toml"), "").unwrap();
        let parent = tmp.path().join("trellis/plugins");
        std::fs::create_dir_all(&parent).unwrap();
        let dir = write(&parent, "stamp-card", None).unwrap();
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"stamp_card\""), "{cargo}");
        assert!(cargo.contains("trellis/host-api"), "{cargo}");
        let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
        assert!(manifest.contains("id = \"com.example.stamp-card\""));
        assert!(dir.join("templates/page.hbs").is_file());
        let code = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(code.contains("export_plugin!(StampCard);"), "{code}");
        assert!(
            write(&parent, "stamp-card", None).is_err(),
            "never overwrites"
        );
        for bad in ["", "Stamp", "1card", "card-", "a/b", "../x"] {
            assert!(write(&parent, bad, None).is_err(), "{bad:?}");
        }
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(
            write(elsewhere.path(), "alone", None).is_err(),
            "no SDK found"
        );
    }
}
