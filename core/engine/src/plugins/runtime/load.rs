//! Loading a plugin: checking its archive, compiling its component into the on-disk cache
//! (keyed by content hash and engine configuration), linking it, and keeping it loaded.
//!
//! Invariant: the cache holds only what `precompile` wrote from a component that passed
//! validation — the only compiled code ever deserialised — and a plugin whose imports or
//! templates break the rules never becomes a `Loaded`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use handlebars::Handlebars;
use wasmtime::component::Component;

use super::Runtime;
use crate::plugins::Error;
use crate::plugins::archive::{self, Archive};
use crate::plugins::bindings;
use crate::plugins::host::State;
use crate::plugins::imports::{Import, check_imports, imports_of};
use crate::plugins::manifest::{Allowance, Manifest};

/// A plugin ready to run.
pub struct Loaded {
    /// The archive's digest (manifest, component, templates): the runtime's key for it.
    pub digest: String,
    pub manifest: Arc<Manifest>,
    /// Everything the manifest declares: the grant when a request names none.
    pub(super) full_grant: Arc<Allowance>,
    pub component_sha256: String,
    pub imports: Vec<Import>,
    pub precompiled_bytes: u64,
    pub(super) pre: bindings::PluginPre<State>,
    pub(super) templates: Arc<Handlebars<'static>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("id", &self.manifest.id)
            .field("version", &self.manifest.version.to_string())
            .field("sha256", &self.component_sha256)
            .finish()
    }
}

/// Plugin templates may not include other templates (a cycle would recurse without end in the
/// host) and may nest `each` at most twice (so a render's work is bounded by its data).
fn check_template(path: &str, text: &str) -> Result<(), Error> {
    let mut depth = 0usize;
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        let tag = rest[at + 2..].trim_start_matches(['{', '~', ' ']);
        let body = tag.trim_start_matches('#').trim_start();
        if tag.starts_with('>') || body.starts_with('>') {
            return Err(Error::Archive(format!(
                "{path}: templates may not include other templates ({{{{> …}}}})"
            )));
        }
        if tag.starts_with('#') && body.starts_with("each") {
            depth += 1;
            if depth > 2 {
                return Err(Error::Archive(format!(
                    "{path}: at most two nested {{{{#each}}}} blocks"
                )));
            }
        } else if tag.starts_with("/each") || tag.starts_with("/ each") {
            depth = depth.saturating_sub(1);
        }
        rest = &rest[at + 2..];
    }
    Ok(())
}

fn template_registry(archive: &Archive) -> Result<Handlebars<'static>, Error> {
    let mut registry = Handlebars::new();
    registry.set_prevent_indent(true);
    for (path, bytes) in &archive.files {
        let Some(name) = path.strip_prefix("templates/") else {
            continue;
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::Archive(format!("{path} is not UTF-8")))?;
        check_template(path, text)?;
        registry
            .register_template_string(name, text)
            .map_err(|e| Error::Archive(format!("{path}: {e}")))?;
    }
    Ok(registry)
}

impl Runtime {
    /// Compiles a component just to read its imports (packing and inspecting; never used to
    /// run anything).
    pub fn inspect_component(&self, wasm: &[u8]) -> Result<Vec<Import>, Error> {
        let component =
            Component::new(&self.engine, wasm).map_err(|e| Error::Compile(format!("{e:#}")))?;
        Ok(imports_of(&self.engine, &component))
    }

    fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.options
            .cache_dir
            .join(format!("{sha256}-{}.cwasm", self.engine_hash))
    }

    /// Makes sure the compiled artifact of a component is in the cache; true when it had to
    /// be compiled.
    pub fn precompile(&self, wasm: &[u8], sha256: &str) -> Result<bool, Error> {
        let path = self.artifact_path(sha256);
        if path.is_file() {
            return Ok(false);
        }
        let artifact = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        std::fs::create_dir_all(&self.options.cache_dir)
            .map_err(|e| Error::Cache(format!("{}: {e}", self.options.cache_dir.display())))?;
        archive::write_atomically(&path, &artifact)
            .map_err(|e| Error::Cache(format!("{}: {e}", path.display())))?;
        Ok(true)
    }

    #[allow(
        unsafe_code,
        reason = "deserialising our own precompiled artifact; see below"
    )]
    fn deserialize(&self, path: &Path) -> Result<Component, Error> {
        // SAFETY: `deserialize_file` trusts its input. Only `precompile` writes this cache, from
        // a component that passed validation, under a name carrying the engine's compatibility
        // hash; the archive's author never supplies compiled code.
        unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| Error::Cache(format!("{}: {e:#}", path.display())))
    }

    /// Loads an archive: checks it, compiles it into the cache if needed, links it. Done at
    /// install and start-up, never per request.
    pub fn load(&self, archive: &Archive) -> Result<Arc<Loaded>, Error> {
        if let Some(loaded) = self.get(&archive.digest) {
            return Ok(loaded);
        }
        archive.manifest.check_host_api()?;
        self.precompile(&archive.component, &archive.component_sha256)?;
        let path = self.artifact_path(&archive.component_sha256);
        let component = match self.deserialize(&path) {
            Ok(c) => c,
            Err(e) => {
                // A damaged cache entry is rebuilt once rather than failing the plugin.
                tracing::warn!("recompiling {}: {e}", archive.manifest.id);
                let _ = std::fs::remove_file(&path);
                self.precompile(&archive.component, &archive.component_sha256)?;
                self.deserialize(&path)?
            }
        };
        let imports = imports_of(&self.engine, &component);
        check_imports(&archive.manifest, &imports)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        let pre = bindings::PluginPre::new(pre).map_err(|e| Error::Compile(format!("{e:#}")))?;
        let loaded = Arc::new(Loaded {
            digest: archive.digest.clone(),
            full_grant: Arc::new(Allowance::all(&archive.manifest)),
            manifest: Arc::new(archive.manifest.clone()),
            component_sha256: archive.component_sha256.clone(),
            imports,
            precompiled_bytes: std::fs::metadata(&path)
                .map(|m| m.len())
                .unwrap_or_default(),
            pre,
            templates: Arc::new(template_registry(archive)?),
        });
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(archive.digest.clone(), loaded.clone());
        Ok(loaded)
    }

    /// A loaded plugin by archive digest.
    pub fn get(&self, digest: &str) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Forgets a loaded plugin (after an upgrade or uninstall); its compiled artifact stays in
    /// the cache, so loading it again is cheap.
    pub fn evict(&self, digest: &str) -> Option<Arc<Loaded>> {
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_may_not_include_others_or_nest_loops_deeply() {
        assert!(
            check_template(
                "t.hbs",
                "<p>{{x}}</p>{{#each a}}{{#each b}}{{this}}{{/each}}{{/each}}"
            )
            .is_ok()
        );
        for bad in [
            "{{> other.hbs}}",
            "{{#> layout}}x{{/layout}}",
            "{{~> x}}",
            "{{#*inline \"p\"}}{{> p}}{{/inline}}",
        ] {
            let err = check_template("t.hbs", bad).unwrap_err().to_string();
            assert!(err.contains("may not include"), "{bad}: {err}");
        }
        let deep = "{{#each a}}{{#each b}}{{#each c}}x{{/each}}{{/each}}{{/each}}";
        assert!(
            check_template("t.hbs", deep)
                .unwrap_err()
                .to_string()
                .contains("nested")
        );
        // Sequential loops are fine.
        let flat =
            "{{#each a}}x{{/each}}{{#each b}}{{#each c}}y{{/each}}{{/each}}{{#each d}}z{{/each}}";
        assert!(check_template("t.hbs", flat).is_ok());
    }
}
