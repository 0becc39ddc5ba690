//! Themes: handlebars templates, strings and static assets under `themes/<name>/`, chosen per
//! partner, with `default` as the fallback for anything a theme does not override.
//!
//! Invariant: every theme renders every page (missing templates come from `default`), and
//! output is HTML-escaped unless a template opts out with triple braces. A render never parses a
//! template: templates are compiled at load and, in reload mode, again when their files change,
//! always on a thread of their own (see [`compile`]), so a page renders the same wherever it is
//! asked for — a request handler or a plugin's host call — and with reload on or off.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use handlebars::Handlebars;
use serde_json::{Map, Value};

/// The theme every other theme falls back to; it must exist.
pub const DEFAULT_THEME: &str = "default";

/// Template folders inside a theme, registered as `<folder>/<file stem>`.
const TEMPLATE_DIRS: &[&str] = &["layouts", "partials", "pages"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("theme folder {0} has no `default` theme")]
    NoDefaultTheme(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {name} in {path}: {message}")]
    Template {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("strings file {path}: {message}")]
    Strings { path: PathBuf, message: String },
    #[error("no template {0}")]
    MissingTemplate(String),
    #[error("cannot start the thread that compiles templates: {0}")]
    Compiler(std::io::Error),
    #[error("rendering {name} failed: {message}")]
    Render { name: String, message: String },
    #[error("asset not found")]
    AssetNotFound,
}

/// The languages themes carry strings for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Locale {
    ZhCn,
    En,
}

impl Locale {
    pub const ALL: [Locale; 2] = [Locale::ZhCn, Locale::En];

    pub fn tag(self) -> &'static str {
        match self {
            Self::ZhCn => "zh-CN",
            Self::En => "en",
        }
    }

    /// The best supported language for an `Accept-Language` header, by quality then order;
    /// Chinese when the header names none we carry, since that is who the platform serves.
    pub fn negotiate(accept_language: Option<&str>) -> Self {
        let Some(header) = accept_language else {
            return Self::ZhCn;
        };
        let mut best: Option<(f32, Locale)> = None;
        for item in header.split(',') {
            let mut parts = item.trim().split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let quality = parts
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            let locale = if tag == "zh" || tag.starts_with("zh-") {
                Locale::ZhCn
            } else if tag == "en" || tag.starts_with("en-") {
                Locale::En
            } else {
                continue;
            };
            if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, locale));
            }
        }
        best.map_or(Self::ZhCn, |(_, locale)| locale)
    }
}

/// A static file of a theme, ready to send.
#[derive(Debug)]
pub struct Asset {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    /// A validator derived from the file's size and modification time.
    pub etag: String,
}

/// Template sources by registered name (`pages/home`): the file and its text.
type Sources = BTreeMap<String, (PathBuf, String)>;

/// A theme's templates, compiled, with the sources they were compiled from.
struct Templates {
    sources: Sources,
    registry: Handlebars<'static>,
}

struct Theme {
    /// The theme's own folder; `None` for `default`, whose templates are everyone's base.
    overlay: Option<PathBuf>,
    /// Replaced in reload mode when the template files change.
    templates: Mutex<Arc<Templates>>,
    /// Strings per locale, already merged over `default`'s.
    strings: HashMap<Locale, Value>,
}

/// Every theme found under the themes folder, loaded once (and re-read per render in reload mode:
/// strings every time, templates recompiled when their files changed).
#[derive(Clone)]
pub struct Themes {
    dir: PathBuf,
    reload: bool,
    themes: Arc<HashMap<String, Theme>>,
}

impl std::fmt::Debug for Themes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Themes")
            .field("dir", &self.dir)
            .field("reload", &self.reload)
            .field("themes", &self.names())
            .finish()
    }
}

impl Themes {
    /// Loads every theme folder under `dir`; fails when `default` is missing or any template
    /// does not parse, so a broken theme is found at start-up rather than by a visitor.
    pub fn load(dir: &Path, reload: bool) -> Result<Self, Error> {
        let default_dir = dir.join(DEFAULT_THEME);
        if !default_dir.is_dir() {
            return Err(Error::NoDefaultTheme(dir.to_owned()));
        }
        let default_strings = load_strings(&default_dir, None)?;
        let mut themes = HashMap::new();
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() || !is_valid_name(&name) {
                continue;
            }
            let overlay = (name != DEFAULT_THEME).then(|| entry.path());
            let sources = read_sources(&default_dir, overlay.as_deref())?;
            let registry = compile(&sources)?;
            let strings = match &overlay {
                None => default_strings.clone(),
                Some(own) => load_strings(own, Some(&default_strings))?,
            };
            let templates = Mutex::new(Arc::new(Templates { sources, registry }));
            themes.insert(
                name,
                Theme {
                    overlay,
                    templates,
                    strings,
                },
            );
        }
        Ok(Self {
            dir: dir.to_owned(),
            reload,
            themes: Arc::new(themes),
        })
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.themes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The theme's own name if it exists, else `default`: a partner whose theme was removed
    /// still gets pages.
    pub fn resolve<'a>(&'a self, name: &'a str) -> &'a str {
        if self.themes.contains_key(name) {
            name
        } else {
            DEFAULT_THEME
        }
    }

    pub fn has_template(&self, theme: &str, name: &str) -> bool {
        self.theme(theme)
            .and_then(|t| self.templates(t).ok())
            .is_some_and(|t| t.registry.has_template(name))
    }

    /// Renders `pages/<page>` of `theme` for `locale`. The template sees `data`'s fields plus
    /// `t` (the strings), `lang`, `theme` and `assets` (the URL prefix of the theme's files).
    pub fn render_page(
        &self,
        theme: &str,
        page: &str,
        locale: Locale,
        data: Value,
    ) -> Result<String, Error> {
        let name = format!("pages/{page}");
        let theme_name = self.resolve(theme);
        let Some(theme) = self.theme(theme_name) else {
            return Err(Error::MissingTemplate(name));
        };
        let templates = self.templates(theme)?;
        if !templates.registry.has_template(&name) {
            return Err(Error::MissingTemplate(name));
        }
        let strings = if self.reload {
            self.reload_strings(theme_name, locale)?
        } else {
            theme.strings.get(&locale).cloned().unwrap_or(Value::Null)
        };
        let mut root = match data {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("data".to_owned(), other)]),
        };
        root.insert("t".into(), strings);
        root.insert("lang".into(), locale.tag().into());
        root.insert("theme".into(), theme_name.into());
        root.insert("assets".into(), format!("/static/{theme_name}").into());
        templates
            .registry
            .render(&name, &Value::Object(root))
            .map_err(|e| Error::Render {
                name,
                message: e.to_string(),
            })
    }

    /// A static file from `themes/<theme>/assets/`, falling back to `default`'s. The path is
    /// relative and may not climb out of the assets folder.
    pub async fn asset(&self, theme: &str, path: &str) -> Result<Asset, Error> {
        let relative = safe_relative(path).ok_or(Error::AssetNotFound)?;
        for name in [self.resolve(theme), DEFAULT_THEME] {
            let file = self.dir.join(name).join("assets").join(&relative);
            let Ok(meta) = tokio::fs::metadata(&file).await else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let bytes = tokio::fs::read(&file).await.map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            return Ok(Asset {
                content_type: content_type(&relative),
                etag: format!("\"{:x}-{:x}\"", meta.len(), modified),
                bytes,
            });
        }
        Err(Error::AssetNotFound)
    }

    fn theme(&self, name: &str) -> Option<&Theme> {
        self.themes.get(name)
    }

    /// The theme's compiled templates; in reload mode first re-read from disk and, when any file
    /// changed (or appeared, or went), compiled again.
    fn templates(&self, theme: &Theme) -> Result<Arc<Templates>, Error> {
        let current = Arc::clone(&lock(&theme.templates));
        if !self.reload {
            return Ok(current);
        }
        let sources = read_sources(&self.dir.join(DEFAULT_THEME), theme.overlay.as_deref())?;
        if sources == current.sources {
            return Ok(current);
        }
        let registry = compile(&sources)?;
        let fresh = Arc::new(Templates { sources, registry });
        *lock(&theme.templates) = Arc::clone(&fresh);
        Ok(fresh)
    }

    fn reload_strings(&self, theme: &str, locale: Locale) -> Result<Value, Error> {
        let defaults = load_strings(&self.dir.join(DEFAULT_THEME), None)?;
        let strings = if theme == DEFAULT_THEME {
            defaults
        } else {
            load_strings(&self.dir.join(theme), Some(&defaults))?
        };
        Ok(strings.get(&locale).cloned().unwrap_or(Value::Null))
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The templates of `default_dir`, with those of `overlay` (a partner theme's folder) replacing
/// the ones of the same name.
fn read_sources(default_dir: &Path, overlay: Option<&Path>) -> Result<Sources, Error> {
    let mut sources = Sources::new();
    read_templates(default_dir, &mut sources)?;
    if let Some(own) = overlay {
        read_templates(own, &mut sources)?;
    }
    Ok(sources)
}

/// Compiles `sources` into a registry, on a thread of its own.
///
/// The template parser (pest, under handlebars) guards its recursion by measuring how much of
/// the current thread's stack is left, and it can only measure the stack the thread was started
/// with. A plugin's host call runs on the plugin's wasmtime fiber, another stack altogether;
/// there the parser finds "no stack left" and refuses every template with `stack limit reached`.
/// Compiling on a fresh thread gives the parser a stack it can measure, whoever asks.
fn compile(sources: &Sources) -> Result<Handlebars<'static>, Error> {
    std::thread::scope(|scope| {
        let compiler = std::thread::Builder::new()
            .name("trellis-themes".into())
            .spawn_scoped(scope, || compile_here(sources))
            .map_err(Error::Compiler)?;
        compiler
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `{{china_time at}}`: an RFC 3339 instant as the minute it is in China (UTC+8), which every
/// tier of a Chinese payment platform reads its times in: `2026-12-06 08:31`. Anything that is
/// not an instant is shown as it is.
fn china_time(
    helper: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let text = helper
        .param(0)
        .and_then(|p| p.value().as_str())
        .unwrap_or_default();
    let china = chrono::FixedOffset::east_opt(8 * 3600);
    let shown = match (chrono::DateTime::parse_from_rfc3339(text), china) {
        (Ok(at), Some(china)) => at
            .with_timezone(&china)
            .format("%Y-%m-%d %H:%M")
            .to_string(),
        _ => text.to_owned(),
    };
    out.write(&handlebars::html_escape(&shown))?;
    Ok(())
}

fn compile_here(sources: &Sources) -> Result<Handlebars<'static>, Error> {
    let mut registry = Handlebars::new();
    registry.set_prevent_indent(true);
    registry.register_helper("china_time", Box::new(china_time));
    for (name, (path, text)) in sources {
        registry
            .register_template_string(name, text)
            .map_err(|e| Error::Template {
                name: name.clone(),
                path: path.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(registry)
}

/// Reads the `.hbs` files of a theme's template folders into `sources`, named
/// `<folder>/<file stem>`.
fn read_templates(theme_dir: &Path, sources: &mut Sources) -> Result<(), Error> {
    for folder in TEMPLATE_DIRS {
        let dir = theme_dir.join(folder);
        if !dir.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        collect_files(&dir, &mut files)?;
        for file in files {
            if file.extension().and_then(|e| e.to_str()) != Some("hbs") {
                continue;
            }
            let Ok(relative) = file.strip_prefix(&dir) else {
                continue;
            };
            let stem = relative.with_extension("");
            let name = format!("{folder}/{}", stem.to_string_lossy().replace('\\', "/"));
            let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?;
            sources.insert(name, (file, text));
        }
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads `locales/<tag>.toml` for every locale, each merged over `base` when given.
fn load_strings(
    theme_dir: &Path,
    base: Option<&HashMap<Locale, Value>>,
) -> Result<HashMap<Locale, Value>, Error> {
    let mut strings = HashMap::new();
    for locale in Locale::ALL {
        let path = theme_dir
            .join("locales")
            .join(format!("{}.toml", locale.tag()));
        let mut value = base
            .and_then(|b| b.get(&locale).cloned())
            .unwrap_or(Value::Object(Map::new()));
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| Error::Strings {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let own = serde_json::to_value(table).map_err(|e| Error::Strings {
                path: path.clone(),
                message: e.to_string(),
            })?;
            merge(&mut value, own);
        }
        strings.insert(locale, value);
    }
    Ok(strings)
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// `path` as a relative path of plain components, or `None` if it is absolute, empty or climbs.
fn safe_relative(path: &str) -> Option<PathBuf> {
    if path.is_empty() || path.contains('\\') || path.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    }
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, path: &str, text: &str) {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "default/layouts/base.hbs",
            "<main>{{> content}}</main>",
        );
        write(
            root,
            "default/pages/hello.hbs",
            "{{#> layouts/base}}{{#*inline \"content\"}}{{t.greeting}} {{name}}{{/inline}}{{/layouts/base}}",
        );
        write(root, "default/pages/other.hbs", "default other");
        write(
            root,
            "default/locales/en.toml",
            "greeting = \"Hello\"\nfarewell = \"Bye\"\n",
        );
        write(
            root,
            "default/locales/zh-CN.toml",
            "greeting = \"你好\"\nfarewell = \"再见\"\n",
        );
        write(root, "default/assets/site.css", "body{}");
        write(root, "acme/pages/other.hbs", "acme other {{t.farewell}}");
        write(root, "acme/locales/en.toml", "farewell = \"See you\"\n");
        dir
    }

    #[test]
    fn output_is_escaped_and_strings_follow_the_locale() {
        let dir = fixture();
        let themes = Themes::load(dir.path(), false).unwrap();
        let html = themes
            .render_page("default", "hello", Locale::En, json!({"name": "<b>x</b>"}))
            .unwrap();
        assert_eq!(html, "<main>Hello &lt;b&gt;x&lt;/b&gt;</main>");
        let html = themes
            .render_page("default", "hello", Locale::ZhCn, json!({"name": "y"}))
            .unwrap();
        assert_eq!(html, "<main>你好 y</main>");
    }

    #[test]
    fn a_theme_overrides_what_it_has_and_falls_back_for_the_rest() {
        let dir = fixture();
        let themes = Themes::load(dir.path(), false).unwrap();
        assert_eq!(
            themes
                .render_page("acme", "other", Locale::En, Value::Null)
                .unwrap(),
            "acme other See you"
        );
        assert_eq!(
            themes
                .render_page("acme", "other", Locale::ZhCn, Value::Null)
                .unwrap(),
            "acme other 再见"
        );
        let html = themes
            .render_page("acme", "hello", Locale::En, json!({"name": "z"}))
            .unwrap();
        assert_eq!(html, "<main>Hello z</main>");
        assert_eq!(themes.resolve("gone"), DEFAULT_THEME);
        assert_eq!(
            themes
                .render_page("gone", "other", Locale::En, Value::Null)
                .unwrap(),
            "default other"
        );
    }

    #[test]
    fn reload_mode_picks_up_edits_without_restart() {
        let dir = fixture();
        let themes = Themes::load(dir.path(), true).unwrap();
        assert_eq!(
            themes
                .render_page("default", "other", Locale::En, Value::Null)
                .unwrap(),
            "default other"
        );
        write(dir.path(), "default/pages/other.hbs", "edited");
        write(dir.path(), "default/locales/en.toml", "greeting = \"Hi\"\n");
        assert_eq!(
            themes
                .render_page("default", "other", Locale::En, Value::Null)
                .unwrap(),
            "edited"
        );
        let html = themes
            .render_page("default", "hello", Locale::En, json!({"name": "n"}))
            .unwrap();
        assert_eq!(html, "<main>Hi n</main>");
    }

    /// The repository's own themes, as `make run` serves them.
    fn repo_themes() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../themes")
    }

    /// What a plugin's `templates.render` asks the theme for (see `plugins::host::templates`).
    fn plugin_page() -> Value {
        json!({"title": "Hello", "plugin_body": "<section class=\"hello\"><h1>你好</h1></section>"})
    }

    /// Runs `call` where a plugin's host calls run: inside a wasm function called with
    /// `call_async`, on the fiber stack wasmtime gives the instance.
    async fn in_a_host_call<R: Send + 'static>(call: impl Fn() -> R + Send + Sync + 'static) -> R {
        // (module (import "host" "call" (func)) (func (export "run") call 0))
        const MODULE: &[u8] = &[
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
            0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
            0x02, 0x0d, 0x01, 0x04, b'h', b'o', b's', b't', 0x04, b'c', b'a', b'l', b'l', 0x00,
            0x00, // import host.call
            0x03, 0x02, 0x01, 0x00, // one function
            0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x01, // export run
            0x0a, 0x06, 0x01, 0x04, 0x00, 0x10, 0x00, 0x0b, // run: call 0
        ];
        let engine = wasmtime::Engine::new(&wasmtime::Config::new()).unwrap();
        let module = wasmtime::Module::new(&engine, MODULE).unwrap();
        let mut linker = wasmtime::Linker::<Option<R>>::new(&engine);
        linker
            .func_wrap(
                "host",
                "call",
                move |mut caller: wasmtime::Caller<'_, Option<R>>| {
                    *caller.data_mut() = Some(call());
                },
            )
            .unwrap();
        let mut store = wasmtime::Store::new(&engine, None);
        let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
        let run = instance
            .get_typed_func::<(), ()>(&mut store, "run")
            .unwrap();
        run.call_async(&mut store, ()).await.unwrap();
        store.into_data().unwrap()
    }

    #[tokio::test]
    async fn a_plugin_page_renders_inside_a_host_call_with_reload_on_as_with_it_off() {
        let dir = repo_themes();
        let fixed = Themes::load(&dir, false).unwrap();
        for theme in ["default", "jade"] {
            let expected = fixed
                .render_page(theme, "plugin", Locale::ZhCn, plugin_page())
                .unwrap();
            assert!(
                expected.contains(
                    "<div class=\"plugin\">\n<section class=\"hello\"><h1>你好</h1></section>"
                ),
                "{theme}: {expected}"
            );
            assert!(expected.contains("<title>Hello · "), "{theme}: {expected}");
            assert!(
                expected.contains(&format!("/static/{theme}/theme.css")),
                "{theme}: {expected}"
            );
            for reload in [false, true] {
                let themes = Themes::load(&dir, reload).unwrap();
                let name = theme.to_owned();
                let html = in_a_host_call(move || {
                    themes
                        .render_page(&name, "plugin", Locale::ZhCn, plugin_page())
                        .map_err(|e| e.to_string())
                })
                .await;
                assert_eq!(
                    html.as_deref(),
                    Ok(expected.as_str()),
                    "{theme}, reload {reload}"
                );
            }
        }
        let jade = fixed
            .render_page("jade", "plugin", Locale::En, plugin_page())
            .unwrap();
        assert!(jade.contains("/static/jade/brand.css"), "{jade}");
    }

    #[test]
    fn every_page_of_the_repository_themes_renders_alike_with_reload_on_and_off() {
        let dir = repo_themes();
        let fixed = Themes::load(&dir, false).unwrap();
        let reloading = Themes::load(&dir, true).unwrap();
        let data = json!({"status": 500, "message": "m", "version": "v", "title": "t",
            "plugin_body": "<p>b</p>"});
        for theme in ["default", "jade"] {
            for page in ["home", "plugin", "404", "500", "error"] {
                for locale in Locale::ALL {
                    let expected = fixed
                        .render_page(theme, page, locale, data.clone())
                        .unwrap();
                    let html = reloading
                        .render_page(theme, page, locale, data.clone())
                        .unwrap();
                    assert_eq!(html, expected, "{theme} {page} {locale:?}");
                }
            }
        }
    }

    #[test]
    fn reload_mode_picks_up_new_and_removed_templates() {
        let dir = fixture();
        let themes = Themes::load(dir.path(), true).unwrap();
        assert!(matches!(
            themes.render_page("default", "new", Locale::En, Value::Null),
            Err(Error::MissingTemplate(_))
        ));
        write(
            dir.path(),
            "default/pages/new.hbs",
            "new {{> partials/bit}}",
        );
        write(dir.path(), "default/partials/bit.hbs", "bit");
        assert_eq!(
            themes
                .render_page("acme", "new", Locale::En, Value::Null)
                .unwrap(),
            "new bit"
        );
        std::fs::remove_file(dir.path().join("acme/pages/other.hbs")).unwrap();
        assert_eq!(
            themes
                .render_page("acme", "other", Locale::En, Value::Null)
                .unwrap(),
            "default other"
        );
        write(dir.path(), "default/pages/new.hbs", "{{#if}}");
        assert!(matches!(
            themes.render_page("default", "new", Locale::En, Value::Null),
            Err(Error::Template { .. })
        ));
    }

    #[test]
    fn a_missing_default_theme_is_a_start_up_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Themes::load(dir.path(), false),
            Err(Error::NoDefaultTheme(_))
        ));
    }

    #[tokio::test]
    async fn assets_fall_back_to_default_and_never_leave_the_folder() {
        let dir = fixture();
        write(dir.path(), "secret.txt", "nope");
        let themes = Themes::load(dir.path(), false).unwrap();
        let asset = themes.asset("acme", "site.css").await.unwrap();
        assert_eq!(asset.bytes, b"body{}");
        assert_eq!(asset.content_type, "text/css; charset=utf-8");
        for path in ["../../secret.txt", "/etc/passwd", "..", "", "a\\..\\b"] {
            assert!(
                matches!(themes.asset("acme", path).await, Err(Error::AssetNotFound)),
                "{path}"
            );
        }
    }

    #[test]
    fn accept_language_picks_the_best_supported_locale() {
        assert_eq!(Locale::negotiate(None), Locale::ZhCn);
        assert_eq!(Locale::negotiate(Some("en-US,en;q=0.9")), Locale::En);
        assert_eq!(
            Locale::negotiate(Some("fr, en;q=0.5, zh-CN;q=0.8")),
            Locale::ZhCn
        );
        assert_eq!(Locale::negotiate(Some("de")), Locale::ZhCn);
        assert_eq!(Locale::negotiate(Some("zh-TW;q=0, en")), Locale::En);
    }

    #[test]
    fn times_show_as_the_minute_they_are_in_china_and_anything_else_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default/pages/t.hbs", "{{china_time at}}");
        let themes = Themes::load(dir.path(), false).unwrap();
        let at = |value: &str| {
            themes
                .render_page("default", "t", Locale::En, json!({ "at": value }))
                .unwrap()
        };
        assert_eq!(at("2026-12-05T16:30:59Z"), "2026-12-06 00:30");
        assert_eq!(at("2026-12-06T08:31:00+08:00"), "2026-12-06 08:31");
        assert_eq!(at("<b>soon</b>"), "&lt;b&gt;soon&lt;/b&gt;");
    }
}
