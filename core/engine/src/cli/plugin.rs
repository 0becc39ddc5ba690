//! `trellis plugin …`: build, pack, sign, inspect and run plugins locally. Everything but `run`
//! works on files alone; `run` starts a throwaway tenant (temporary SQLite, offline sandbox).
//! Exit 0 on success, 1 when a plugin is refused or an invocation fails, 2 on bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Subcommand;
use serde_json::{Value, json};

use super::Failure;
use crate::harness::{self, Harness, HarnessOptions};
use crate::plugins::archive::{self, Archive};
use crate::plugins::{self, Call};

const WASM_TARGET: &str = "wasm32-wasip2";

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Build the plugin in DIR into DIR/plugin.wasm: a Rust crate for wasm32-wasip2, or a Python
    /// plugin (DIR/app.py) with componentize-py against the capabilities plugin.toml declares.
    Build {
        dir: PathBuf,
        /// Cargo profile to build with.
        #[arg(long, default_value = "release")]
        profile: String,
        /// The plugin's stack, in KiB. Rust's default is 1 MiB; the engine keeps a plugin's
        /// first 256 KiB of memory resident between calls, so a small stack makes calls faster.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=8192))]
        stack_kib: u32,
        /// Cargo features of the plugin crate to build with (comma-separated or repeated), as
        /// `cargo build --features`.
        #[arg(long, short = 'F', value_delimiter = ',')]
        features: Vec<String>,
        /// Build without the crate's default features.
        #[arg(long)]
        no_default_features: bool,
    },
    /// Pack DIR (plugin.toml, the component, templates/, assets/) into a .tplug archive,
    /// refusing a component whose imports exceed its declared capabilities.
    Pack {
        dir: PathBuf,
        /// The archive to write.
        #[arg(short, long, value_name = "FILE.tplug")]
        output: PathBuf,
        /// The component to pack (default: DIR/plugin.wasm, written by `plugin build`).
        #[arg(long, value_name = "FILE.wasm")]
        wasm: Option<PathBuf>,
    },
    /// Create an Ed25519 publisher key pair: NAME.key (keep it secret) and NAME.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// Sign an archive with a publisher key.
    Sign {
        archive: PathBuf,
        #[arg(long, value_name = "NAME.key")]
        key: PathBuf,
        /// Where to write the signed archive (default: in place).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Show an archive's manifest, capabilities, the imports its component really uses, sizes
    /// and signature; exit 1 if the engine would refuse it.
    Inspect {
        archive: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Install archives for a partner of the engine's database (as the first platform
    /// administrator): validated, compiled, stored, and their install hook run.
    Install {
        /// `.tplug` archives to install.
        files: Vec<PathBuf>,
        /// The partner that installs them.
        #[arg(long)]
        partner: String,
        /// Also install every first-party plugin: each folder of `plugins/` whose component
        /// `make plugins` built under `target/wasm32-wasip2/plugin/`.
        #[arg(long)]
        first_party: bool,
        /// Move the partner's merchants to the new versions at once.
        #[arg(long)]
        activate: bool,
        /// Let the partner's agents put them in packages.
        #[arg(long)]
        offer: bool,
    },
    /// Write a working plugin into a new folder NAME: manifest, configuration schema, a member
    /// page, a staff view, an event handler and a unit test, ready for `plugin build`.
    New {
        /// The plugin's name: lower-case letters, digits and dashes (its id is com.example.NAME).
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK: the host-api folder of a Trellis checkout (default: one found in or above
        /// the folder).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Lift an installed plugin's suspensions after repeated failures (as the first platform
    /// administrator, audited), for every merchant; running engines see it on the plugin's next
    /// call.
    ResetBreaker {
        /// The plugin's id, such as com.trellis.membership.
        plugin: String,
        /// The partner that installed it.
        #[arg(long)]
        partner: String,
    },
    /// Run one call of a plugin against a throwaway merchant (temporary SQLite database, the
    /// offline Alipay sandbox) and print the result, logs, host calls, memory and time.
    Run {
        archive: PathBuf,
        /// Deliver an event of this kind.
        #[arg(long, conflicts_with_all = ["http", "configure", "install"])]
        event: Option<String>,
        /// The event's JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Send a request to a route: `--http GET /stats?x=1` (or one quoted "GET /stats").
        #[arg(long, num_args = 1..=2, value_names = ["METHOD", "PATH"])]
        http: Option<Vec<String>>,
        /// The request body.
        #[arg(long, default_value = "")]
        body: String,
        /// Run the configure hook with this JSON.
        #[arg(long, value_name = "JSON")]
        configure: Option<String>,
        /// Run the install hook.
        #[arg(long)]
        install: bool,
        /// The installation's configuration (JSON) for this call (the schema's defaults filled
        /// in); default: the state's, else `{}`.
        #[arg(long, value_name = "JSON")]
        plugin_config: Option<String>,
        /// Keep the throwaway merchant, its kv data and the configuration `--configure` set in
        /// this folder from one run to the next.
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// The caller's locale: zh-CN or en.
        #[arg(long, default_value = "zh-CN")]
        locale: String,
        /// Freeze the plugin's clocks and randomness.
        #[arg(long)]
        frozen: bool,
        /// Folder of themes to wrap rendered pages in (default: ./themes when present).
        #[arg(long)]
        themes: Option<PathBuf>,
    },
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

fn refused(error: impl std::fmt::Display) -> Failure {
    Failure::Runtime(error.to_string())
}

impl PluginCommand {
    /// Whether the command works on the engine's database (and so needs its configuration).
    pub fn needs_engine(&self) -> bool {
        matches!(self, Self::Install { .. } | Self::ResetBreaker { .. })
    }
}

/// The first-party plugins: `(folder name, packed archive)` for each folder of `plugins_dir`
/// with a built component in `wasm_dir` (`trellis_plugin_<name>.wasm`).
pub fn first_party_archives(
    plugins_dir: &Path,
    wasm_dir: &Path,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(plugins_dir) else {
        return Ok(out);
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("plugin.toml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let wasm = wasm_dir.join(format!("trellis_plugin_{}.wasm", name.replace('-', "_")));
        if !wasm.is_file() {
            tracing::warn!(plugin = %name, "not built (run `make plugins`); skipped");
            continue;
        }
        let (_, bytes) = archive::pack_dir(&dir, &wasm).map_err(refused)?;
        out.push((name, bytes));
    }
    Ok(out)
}

pub fn run(command: PluginCommand) -> Result<(), Failure> {
    match command {
        PluginCommand::Install { .. } | PluginCommand::ResetBreaker { .. } => {
            Err(usage("this command needs the engine"))
        }
        PluginCommand::Build {
            dir,
            profile,
            stack_kib,
            features,
            no_default_features,
        } => build(
            &dir,
            &BuildOptions {
                profile,
                stack_kib,
                features,
                no_default_features,
            },
        ),
        PluginCommand::Pack { dir, output, wasm } => pack(&dir, &output, wasm.as_deref()),
        PluginCommand::New { name, dir, sdk } => {
            let written = super::skeleton::write(&dir, &name, sdk.as_deref())?;
            println!(
                "wrote {}: next, in that folder, `trellis plugin build .`, `trellis plugin pack . -o {name}.tplug` and `trellis plugin run {name}.tplug --http GET /stats`; `cargo test` runs its unit test",
                written.display()
            );
            Ok(())
        }
        PluginCommand::Keygen { out } => {
            let (private, public) = archive::keygen().map_err(refused)?;
            let key = with_suffix(&out, "key");
            let public_path = with_suffix(&out, "pub");
            if key.exists() {
                return Err(usage(format!(
                    "{} exists; refusing to overwrite a key",
                    key.display()
                )));
            }
            write_private(&key, &private)?;
            std::fs::write(&public_path, format!("{public}\n"))
                .map_err(|e| usage(format!("{}: {e}", public_path.display())))?;
            println!(
                "private key: {} (keep it secret)\npublic key:  {}\n{public}",
                key.display(),
                public_path.display()
            );
            Ok(())
        }
        PluginCommand::Sign {
            archive: path,
            key,
            output,
        } => {
            let bytes = read(&path)?;
            let pem = std::fs::read_to_string(&key)
                .map_err(|e| usage(format!("{}: {e}", key.display())))?;
            let signed = archive::sign(&bytes, &pem).map_err(refused)?;
            let target = output.unwrap_or(path);
            archive::write_atomically(&target, &signed)
                .map_err(|e| refused(format!("{}: {e}", target.display())))?;
            let status = Archive::read(&signed).map_err(refused)?.signature;
            println!("signed {}: {status}", target.display());
            Ok(())
        }
        PluginCommand::Inspect {
            archive: path,
            json,
        } => inspect(&path, json),
        PluginCommand::Run {
            archive: path,
            event,
            payload,
            http,
            body,
            configure,
            install,
            plugin_config,
            locale,
            frozen,
            themes,
            state,
        } => {
            let call = if let Some(kind) = event {
                let payload: Value = serde_json::from_str(&payload)
                    .map_err(|e| usage(format!("--payload is not JSON: {e}")))?;
                Call::Event(plugins::Event {
                    id: uuid::Uuid::now_v7().to_string(),
                    kind,
                    occurred_at: chrono::Utc::now(),
                    payload,
                })
            } else if let Some(parts) = http {
                let line = parts.join(" ");
                let (method, target) = line
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| usage("--http takes a method and a path: --http GET /path"))?;
                let (path, query) = target.trim().split_once('?').unwrap_or((target.trim(), ""));
                Call::Http(plugins::HttpRequest {
                    method: method.to_ascii_uppercase(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    headers: Vec::new(),
                    body: body.into_bytes(),
                })
            } else if let Some(text) = configure {
                let config: Value = serde_json::from_str(&text)
                    .map_err(|e| usage(format!("--configure is not JSON: {e}")))?;
                Call::Configure { config }
            } else if install {
                Call::Install {
                    previous_version: None,
                }
            } else {
                return Err(usage(
                    "say what to run: --event KIND, --http \"GET /path\", --configure JSON or --install",
                ));
            };
            let config: Option<Value> = plugin_config
                .map(|text| {
                    serde_json::from_str(&text)
                        .map_err(|e| usage(format!("--plugin-config is not JSON: {e}")))
                })
                .transpose()?;
            let bytes = read(&path)?;
            let archive = Archive::read(&bytes).map_err(refused)?;
            let themes = themes
                .or_else(|| Some(PathBuf::from("themes")).filter(|p| p.join("default").is_dir()));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| refused(format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(async move {
                let options = HarnessOptions {
                    frozen_clock: frozen.then(chrono::Utc::now),
                    themes_dir: themes,
                    state_dir: state,
                    ..HarnessOptions::default()
                };
                let mut harness = Harness::start(&archive, options).await.map_err(refused)?;
                if let Some(config) = config {
                    harness.config = crate::plugins::catalog::configuration::with_defaults(
                        archive.manifest.config.schema.as_ref(),
                        config,
                    );
                }
                harness.locale = locale;
                println!(
                    "{} {} on a throwaway merchant {} ({} allocation)",
                    archive.manifest.id,
                    archive.manifest.version,
                    harness.merchant.id,
                    harness.runtime.allocation()
                );
                let outcome = match call {
                    // Through the schema, as the server does.
                    Call::Configure { config } => harness.configure(config).await,
                    call => harness.call(call).await,
                };
                print!("{}", harness::report(&outcome));
                match outcome.result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(refused(format!("the invocation failed: {e}"))),
                }
            })
        }
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| usage(format!("{}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| usage(format!("{}: {e}", path.display())))
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| usage(format!("{}: {e}", path.display())))
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// How `trellis plugin build` builds: what it passes to cargo besides the crate and target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuildOptions {
    profile: String,
    stack_kib: u32,
    features: Vec<String>,
    no_default_features: bool,
}

impl BuildOptions {
    /// The arguments of `cargo` for the crate at `manifest_path`.
    fn cargo_args(&self, manifest_path: &Path) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "build".into(),
            "--manifest-path".into(),
            manifest_path.into(),
            "--target".into(),
            WASM_TARGET.into(),
            "--profile".into(),
            self.profile.clone().into(),
            "--lib".into(),
        ];
        let features: Vec<&str> = self
            .features
            .iter()
            .map(|f| f.trim())
            .filter(|f| !f.is_empty())
            .collect();
        if !features.is_empty() {
            args.push("--features".into());
            args.push(features.join(",").into());
        }
        if self.no_default_features {
            args.push("--no-default-features".into());
        }
        // Added to (not replacing) the crate's own rustflags; RUSTFLAGS, when set, still wins.
        args.push("--config".into());
        args.push(
            format!(
                "target.{WASM_TARGET}.rustflags=[\"-C\", \"link-arg=-zstack-size={}\"]",
                u64::from(self.stack_kib) * 1024
            )
            .into(),
        );
        args.push("--message-format=json-render-diagnostics".into());
        args
    }
}

fn build(dir: &Path, options: &BuildOptions) -> Result<(), Failure> {
    if super::python::is_python(dir) {
        let manifest = archive::read_manifest(dir).map_err(refused)?;
        return super::python::build(dir, &manifest);
    }
    let manifest_path = dir.join("Cargo.toml");
    if !manifest_path.is_file() {
        return Err(usage(format!(
            "{} has neither a Cargo.toml (Rust) nor an app.py (Python)",
            dir.display()
        )));
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        eprintln!("installing the {WASM_TARGET} target with rustup");
        let status = Command::new("rustup")
            .args(["target", "add", WASM_TARGET])
            .status()
            .map_err(|e| refused(format!("cannot run rustup: {e}")))?;
        if !status.success() {
            return Err(refused(format!("rustup target add {WASM_TARGET} failed")));
        }
    }
    let output = Command::new("cargo")
        .args(options.cargo_args(&manifest_path))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| refused(format!("cannot run cargo: {e}")))?;
    if !output.status.success() {
        return Err(refused("cargo build failed"));
    }
    let mut component = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|v| v == "cdylib"));
        let manifest_matches = message["manifest_path"]
            .as_str()
            .is_some_and(|p| Path::new(p).canonicalize().ok() == manifest_path.canonicalize().ok());
        if is_cdylib && manifest_matches {
            component = message["filenames"].as_array().and_then(|f| {
                f.iter()
                    .filter_map(Value::as_str)
                    .find(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from)
            });
        }
    }
    let component = component.ok_or_else(|| {
        refused("the build produced no component: the crate needs [lib] crate-type = [\"cdylib\"]")
    })?;
    let target = dir.join("plugin.wasm");
    std::fs::copy(&component, &target)
        .map_err(|e| refused(format!("{}: {e}", target.display())))?;
    let size = std::fs::metadata(&target)
        .map(|m| m.len())
        .unwrap_or_default();
    println!("built {} ({size} bytes)", target.display());
    Ok(())
}

fn pack(dir: &Path, output: &Path, wasm: Option<&Path>) -> Result<(), Failure> {
    let wasm_path = wasm
        .map(Path::to_owned)
        .unwrap_or_else(|| dir.join("plugin.wasm"));
    if !dir.join("plugin.toml").is_file() {
        return Err(usage(format!("{} has no plugin.toml", dir.display())));
    }
    if !wasm_path.is_file() {
        return Err(usage(format!(
            "{} does not exist: run `trellis plugin build {}` first, or pass --wasm",
            wasm_path.display(),
            dir.display()
        )));
    }
    let (archive, bytes) = archive::pack_dir(dir, &wasm_path).map_err(refused)?;
    archive::write_atomically(output, &bytes)
        .map_err(|e| refused(format!("{}: {e}", output.display())))?;
    println!(
        "packed {} {} into {} ({} bytes; component sha256 {})",
        archive.manifest.id,
        archive.manifest.version,
        output.display(),
        bytes.len(),
        archive.component_sha256
    );
    Ok(())
}

fn inspect(path: &Path, as_json: bool) -> Result<(), Failure> {
    let bytes = read(path)?;
    let archive = Archive::read(&bytes).map_err(refused)?;
    let imports = plugins::inspect_component(&archive.component).map_err(refused)?;
    let verdict = plugins::check_imports(&archive.manifest, &imports);
    let m = &archive.manifest;
    if as_json {
        let report = json!({
            "manifest": m,
            "component_sha256": archive.component_sha256,
            "sizes": archive.sizes(),
            "archive_bytes": bytes.len(),
            "imports": imports,
            "signature": archive.signature.to_string(),
            "host_api": { "wanted": m.host_api.to_string(), "provided": plugins::host_api_versions() },
            "accepted": verdict.is_ok(),
            "refusal": verdict.as_ref().err().map(ToString::to_string),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{} {} — {} ({})", m.id, m.version, m.name, m.publisher);
        if !m.description.is_empty() {
            println!("{}", m.description);
        }
        println!(
            "host-api: {} (this engine provides {})",
            m.host_api,
            plugins::host_api_versions()
        );
        println!("signature: {}", archive.signature);
        println!("component: sha256 {}", archive.component_sha256);
        println!("imports actually used:");
        for import in &imports {
            println!("  {import}");
        }
        let caps = &m.capabilities;
        println!("capabilities requested:");
        match caps.kv {
            Some(q) => println!(
                "  kv: up to {} keys, {} bytes per merchant",
                q.max_keys, q.max_bytes
            ),
            None => println!("  kv: none"),
        }
        let methods: Vec<&str> = caps
            .alipay
            .iter()
            .flat_map(|a| a.methods.iter().map(String::as_str))
            .collect();
        println!(
            "  alipay: {}",
            if methods.is_empty() {
                "none".to_owned()
            } else {
                methods.join(", ")
            }
        );
        println!("  templates: {}", join_or_none(caps.templates.iter()));
        println!("  emit: {}", join_or_none(caps.emit.iter()));
        println!("subscribes to: {}", join_or_none(m.subscribe.iter()));
        println!("routes:");
        for r in &m.routes {
            println!("  {} {} ({:?})", r.method, r.path, r.audience);
        }
        let l = m.limits;
        println!(
            "limits: memory {} MiB, cpu {} ms, wall {} ms, output {} KiB",
            l.memory_mib, l.cpu_ms, l.wall_ms, l.output_kib
        );
        println!("sizes (archive {} bytes):", bytes.len());
        for (name, size) in archive.sizes() {
            println!("  {size:>9}  {name}");
        }
        match &verdict {
            Ok(()) => println!("check: accepted (imports within the declared capabilities)"),
            Err(e) => println!("check: REFUSED: {e}"),
        }
    }
    verdict.map_err(refused)
}

fn join_or_none<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = items.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(options: &BuildOptions) -> Vec<String> {
        options
            .cargo_args(Path::new("p/Cargo.toml"))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn plugin_build_passes_the_chosen_features_to_cargo() {
        let plain = BuildOptions {
            profile: "release".into(),
            stack_kib: 64,
            features: Vec::new(),
            no_default_features: false,
        };
        let plain_args = args(&plain);
        assert!(!plain_args.iter().any(|a| a.contains("features")));
        assert!(plain_args.iter().any(|a| a.contains("-zstack-size=65536")));

        let chosen = BuildOptions {
            features: vec!["stamps".into(), " rewards ".into(), String::new()],
            no_default_features: true,
            ..plain
        };
        let chosen_args = args(&chosen);
        let at = chosen_args.iter().position(|a| a == "--features").unwrap();
        assert_eq!(chosen_args[at + 1], "stamps,rewards");
        assert!(chosen_args.contains(&"--no-default-features".to_owned()));
    }

    #[test]
    fn the_command_line_takes_features_comma_separated_or_repeated() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            command: PluginCommand,
        }
        let parsed = Cli::try_parse_from([
            "plugin",
            "build",
            "dir",
            "--features",
            "a,b",
            "-F",
            "c",
            "--no-default-features",
        ])
        .unwrap();
        let PluginCommand::Build {
            features,
            no_default_features,
            ..
        } = parsed.command
        else {
            panic!("not a build");
        };
        assert_eq!(features, ["a", "b", "c"]);
        assert!(no_default_features);
    }
}
