//! What a component imports, and whether the engine will link it: every import must be an
//! interface the engine provides and, for a capability, one the manifest declares.
//!
//! Invariant: a component importing a host API this engine does not provide (or newer than its
//! manifest says), a capability its manifest does not declare, or anything but WASI 0.2 is
//! refused here, before it is linked or run. WASI files, sockets and timers link — an
//! interpreter imports them unasked — but grant nothing (`runtime::wasi`).

use serde::Serialize;
use sha2::Digest as _;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::Error;
use super::engine::engine_config;
use super::manifest::{HOST_API_VERSIONS, Manifest, host_api_versions};

/// One interface a component imports, with the functions it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Import {
    pub name: String,
    pub functions: Vec<String>,
}

impl std::fmt::Display for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.name, self.functions.join(", "))
    }
}

fn interface_of(import: &str) -> (&str, &str) {
    // "trellis:plugin/kv@0.1.0" → ("trellis:plugin/kv", "0.1.0")
    import.split_once('@').unwrap_or((import, ""))
}

/// Checks a component's imports against its manifest: every import must be an interface the
/// engine provides and, for capabilities, one the manifest declares.
pub fn check_imports(manifest: &Manifest, imports: &[Import]) -> Result<(), Error> {
    let caps = &manifest.capabilities;
    for import in imports {
        let (interface, version) = interface_of(&import.name);
        let shown = import.to_string();
        if let Some(name) = interface.strip_prefix("trellis:plugin/") {
            let version =
                semver::Version::parse(version).map_err(|_| Error::UnsupportedImport {
                    import: shown.clone(),
                    reason: "trellis:plugin imports must carry a version".into(),
                })?;
            // A provided version serves its own patch releases and older ones, never newer.
            let provided = HOST_API_VERSIONS
                .iter()
                .find(|v| v.major == version.major && v.minor == version.minor && version <= **v);
            let Some(provided) = provided else {
                return Err(Error::HostApi {
                    wanted: format!("{version} (imported as {})", import.name),
                    provided: host_api_versions(),
                });
            };
            let introduced = if matches!(name, "tenant" | "kv-batch" | "plugins" | "payments") {
                (0, 2)
            } else {
                (0, 1)
            };
            if introduced != (version.major, version.minor) {
                return Err(Error::UnsupportedImport {
                    import: shown,
                    reason: format!(
                        "not an interface of trellis:plugin@{}.{}",
                        version.major, version.minor
                    ),
                });
            }
            if !manifest.host_api.matches(provided) && *provided > HOST_API_VERSIONS[0] {
                return Err(Error::UndeclaredImport {
                    import: shown,
                    reason: format!(
                        "plugin.toml declares host_api = \"{}\"; this interface needs \"^{}.{}\"",
                        manifest.host_api, provided.major, provided.minor
                    ),
                });
            }
            let undeclared = |reason: &str| Error::UndeclaredImport {
                import: shown.clone(),
                reason: reason.to_owned(),
            };
            match name {
                "types" | "log" | "config" | "tenant" => {}
                "kv" | "kv-batch" if caps.kv.is_none() => {
                    return Err(undeclared("plugin.toml declares no [capabilities] kv"));
                }
                "payments" if caps.payments.is_empty() => {
                    return Err(undeclared(
                        "plugin.toml declares no [capabilities] payments",
                    ));
                }
                "plugins" if caps.calls.is_empty() => {
                    return Err(undeclared("plugin.toml declares no [[capabilities.calls]]"));
                }
                "alipay" => {
                    let methods = caps.alipay.as_ref().map(|a| &a.methods);
                    if methods.is_none_or(|m| m.is_empty()) {
                        return Err(undeclared(
                            "plugin.toml declares no [capabilities] alipay methods",
                        ));
                    }
                    if import.functions.iter().any(|f| f == "upload-image")
                        && !methods
                            .is_some_and(|m| m.contains("alipay.offline.material.image.upload"))
                    {
                        return Err(undeclared(
                            "upload-image needs alipay.offline.material.image.upload in [capabilities] alipay methods",
                        ));
                    }
                }
                "templates" if caps.templates.is_empty() => {
                    return Err(undeclared(
                        "plugin.toml declares no [capabilities] templates",
                    ));
                }
                "events" if caps.emit.is_empty() => {
                    return Err(undeclared("plugin.toml declares no [capabilities] emit"));
                }
                "kv" | "kv-batch" | "templates" | "events" | "payments" | "plugins" => {}
                _ => {
                    return Err(Error::UnsupportedImport {
                        import: shown,
                        reason: "not an interface of trellis:plugin".into(),
                    });
                }
            }
        } else if let Some(rest) = interface.strip_prefix("wasi:") {
            // An interpreter's runtime imports files, sockets and timers whether the plugin
            // uses them or not: they link, and find nothing (no preopened directory, no network)
            // or stop the call (a timer; see runtime::wasi).
            let allowed = [
                "io/",
                "clocks/",
                "random/",
                "cli/",
                "filesystem/",
                "sockets/",
            ]
            .iter()
            .any(|p| rest.starts_with(p));
            if !allowed || !version.starts_with("0.2.") {
                return Err(Error::UnsupportedImport {
                    import: shown,
                    reason: "plugins get WASI 0.2 io, clocks, random, stdio, and files and sockets with nothing open; nothing else".into(),
                });
            }
        } else {
            return Err(Error::UnsupportedImport {
                import: shown,
                reason: "only trellis:plugin and basic wasi interfaces are provided".into(),
            });
        }
    }
    Ok(())
}

pub(super) fn imports_of(engine: &Engine, component: &Component) -> Vec<Import> {
    let ty = component.component_type();
    let mut out: Vec<Import> = ty
        .imports(engine)
        .map(|(name, item)| {
            let functions = match item.ty {
                ComponentItem::ComponentInstance(instance) => {
                    let mut f: Vec<String> = instance
                        .exports(engine)
                        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
                        .map(|(n, _)| n.to_owned())
                        .collect();
                    f.sort();
                    f
                }
                _ => Vec::new(),
            };
            Import {
                name: name.to_owned(),
                functions,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reads a component's imports with a throwaway engine (packing and inspecting run without a
/// database or runtime).
pub fn inspect_component(wasm: &[u8]) -> Result<Vec<Import>, Error> {
    // Reading the imports compiles the whole component. Packing often sees the same component
    // again (several manifests, versions or copies of one plugin), so the answers of this
    // process are kept by the component's digest; compile errors are not kept.
    const KEPT: usize = 32;
    type Seen = Vec<([u8; 32], Vec<Import>)>;
    static SEEN: std::sync::Mutex<Seen> = std::sync::Mutex::new(Vec::new());
    let seen = || {
        SEEN.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let digest: [u8; 32] = sha2::Sha256::digest(wasm).into();
    if let Some((_, imports)) = seen().iter().find(|(d, _)| *d == digest) {
        return Ok(imports.clone());
    }
    let engine = Engine::new(&engine_config(None)).map_err(|e| Error::Engine(e.to_string()))?;
    let component = Component::new(&engine, wasm).map_err(|e| Error::Compile(format!("{e:#}")))?;
    let imports = imports_of(&engine, &component);
    let mut kept = seen();
    if kept.len() >= KEPT {
        kept.remove(0);
    }
    kept.push((digest, imports.clone()));
    Ok(imports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(name: &str, functions: &[&str]) -> Import {
        Import {
            name: name.into(),
            functions: functions.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn the_0_2_interfaces_need_a_0_2_manifest_and_their_capabilities() {
        let manifest = |caps: &str| {
            Manifest::parse(
                &format!("id = \"com.example.a\"\nversion = \"1.0.0\"\nhost_api = \"^0.2\"\nname = \"A\"\npublisher = \"E\"\n[capabilities]\n{caps}"),
                None,
            )
            .unwrap()
        };
        let bare = manifest("");
        let ok = [
            import("trellis:plugin/tenant@0.2.0", &["current"]),
            import("trellis:plugin/log@0.1.0", &["log"]),
        ];
        assert!(check_imports(&bare, &ok).is_ok());
        for (name, needle) in [
            ("trellis:plugin/kv-batch@0.2.0", "[capabilities] kv"),
            ("trellis:plugin/payments@0.2.0", "[capabilities] payments"),
            ("trellis:plugin/plugins@0.2.0", "[[capabilities.calls]]"),
        ] {
            let err = check_imports(&bare, &[import(name, &["x"])])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
        let full = manifest(
            "kv = { max_keys = 1, max_bytes = 1 }\npayments = [\"precreate\"]\n[[capabilities.calls]]\nplugin = \"com.example.b\"\nroutes = [\"GET /x\"]",
        );
        let all = [
            import("trellis:plugin/kv-batch@0.2.0", &["get-many"]),
            import("trellis:plugin/payments@0.2.0", &["precreate"]),
            import("trellis:plugin/plugins@0.2.0", &["call"]),
            import("trellis:plugin/kv@0.1.0", &["get"]),
        ];
        assert!(check_imports(&full, &all).is_ok());
    }

    #[test]
    fn imports_are_checked_against_the_manifest_and_the_host() {
        let manifest = Manifest::parse(
            "id = \"com.example.a\"\nversion = \"1.0.0\"\nhost_api = \"^0.1\"\nname = \"A\"\npublisher = \"E\"\n[capabilities]\nkv = { max_keys = 1, max_bytes = 1 }\n",
            None,
        )
        .unwrap();
        let ok = [
            import("trellis:plugin/kv@0.1.0", &["get"]),
            import("trellis:plugin/log@0.1.0", &["log"]),
            import("wasi:io/streams@0.2.6", &[]),
            import(
                "wasi:clocks/monotonic-clock@0.2.6",
                &["now", "subscribe-duration"],
            ),
            import("wasi:filesystem/types@0.2.9", &[]),
            import("wasi:sockets/tcp@0.2.9", &[]),
        ];
        assert!(check_imports(&manifest, &ok).is_ok());
        for (bad, needle) in [
            (
                import("trellis:plugin/alipay@0.1.0", &["call"]),
                "declares no [capabilities] alipay",
            ),
            (
                import("trellis:plugin/events@0.1.0", &["emit"]),
                "declares no [capabilities] emit",
            ),
            (import("trellis:plugin/kv@0.3.0", &["get"]), "host-api"),
            (
                import("trellis:plugin/kv@0.2.0", &["get"]),
                "not an interface of trellis:plugin@0.2",
            ),
            (
                import("trellis:plugin/tenant@0.1.0", &["current"]),
                "not an interface of trellis:plugin@0.1",
            ),
            (
                import("trellis:plugin/tenant@0.2.0", &["current"]),
                "needs \"^0.2\"",
            ),
            (
                import("trellis:plugin/payments@0.2.0", &["precreate"]),
                "needs \"^0.2\"",
            ),
            (import("wasi:http/types@0.2.6", &[]), "nothing else"),
            (import("wasi:filesystem/types@0.3.0", &[]), "WASI 0.2"),
            (import("acme:evil/x@1.0.0", &[]), "only trellis:plugin"),
        ] {
            let err = check_imports(&manifest, std::slice::from_ref(&bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(
                err.contains(bad.name.as_str()),
                "the message names the import: {err}"
            );
        }
    }
}
