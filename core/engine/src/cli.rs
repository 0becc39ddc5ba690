//! The `trellis` command line: parses arguments, loads configuration, starts logging and runs
//! one command.
//!
//! Invariant: the process exits 0 on success, 1 on a runtime failure and 2 on a usage or
//! configuration error, always with one clear line on stderr when it fails.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::config::{self, Config, LogFormat};
use crate::db::Db;
use crate::http;
use crate::rbac::Rbac;
use crate::themes::Themes;

#[derive(Debug, Parser)]
#[command(name = "trellis", version, about = "The Trellis payment SaaS engine")]
pub struct Cli {
    /// Configuration file (TOML); defaults to $TRELLIS_CONFIG, else built-in defaults only.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies pending migrations first unless told not to).
    Serve {
        /// Do not apply pending migrations at start, whatever `database.auto_migrate` says.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations.
    Migrate {
        /// Only report how many migrations are pending; exit 1 if any are.
        #[arg(long)]
        check: bool,
    },
    /// Manage platform administrators.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Alipay signature tools for integrators: key generation, signing, verification, SNs, AES.
    Alipay {
        #[command(subcommand)]
        command: crate::cli::alipay::AlipayCommand,
    },
    /// Plugin tools: build, pack, sign, inspect, run in a local harness.
    Plugin {
        #[command(subcommand)]
        command: crate::cli::plugin::PluginCommand,
    },
    /// Run the offline Alipay sandbox alone (state in the configured database).
    Sandbox {
        /// Address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Secrets at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Demo data for trying the engine out.
    Demo {
        #[command(subcommand)]
        command: DemoCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a platform administrator.
    Create {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input (required: passwords are
        /// never taken as arguments, where `ps` and shell history would keep them).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Re-seal every stored secret under `secrets.master_key`; earlier keys must be listed in
    /// `secrets.previous_master_keys` until this has run.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Create a demo tree (a partner on `localhost`, an agent, a merchant with a store and an
    /// account of every role) unless one exists; prints the generated passwords once.
    Seed,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration with secrets redacted.
    Show,
}

mod alipay;
mod plugin;
/// `trellis plugin new`: the files of a working plugin.
mod skeleton;
/// `trellis plugin build` for Python plugins, with componentize-py.
mod python;

/// Failures sorted by exit code.
#[derive(Debug)]
enum Failure {
    /// Exit 2: the command line, its input or the configuration is wrong.
    Usage(String),
    /// Exit 1: the command was right but could not be carried out.
    Runtime(String),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Runtime(format!("{error:#}"))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap prints help and version itself (exit 0) and usage errors (exit 2).
        Err(error) => error.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    // The Alipay tools work on files and stdin only: no configuration, database or runtime.
    if let Command::Alipay { command } = cli.command {
        return alipay::run(command);
    }
    // So do the plugin tools; `run` makes its own throwaway database.
    let command = match cli.command {
        Command::Plugin { command } if !command.needs_engine() => return plugin::run(command),
        other => other,
    };
    let file = cli.config.or_else(config::config_file_from_env);
    let config = Config::load(file.as_deref()).map_err(|e| Failure::Usage(e.to_string()))?;
    init_tracing(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(execute(command, config))
}

/// The first platform administrator, who acts for the command line, and partner `partner`.
async fn operator_at(
    db: &crate::db::Db,
    partner: &str,
) -> Result<(crate::auth::Principal, crate::tenancy::Place), Failure> {
    let actor = crate::demo::operator(&db.conn).await.map_err(runtime)?;
    let place = crate::tenancy::find_in_scope(
        &db.conn,
        &actor.place,
        Some(crate::tenancy::NodeKind::Partner),
        partner,
    )
    .await
    .map_err(|e| Failure::Usage(e.to_string()))?
    .place();
    Ok((actor, place))
}

async fn execute(command: Command, config: Config) -> Result<(), Failure> {
    match command {
        Command::Alipay { command } => alipay::run(command),
        Command::Plugin {
            command:
                plugin::PluginCommand::Install {
                    files,
                    partner,
                    first_party,
                    activate,
                    offer,
                },
        } => {
            let db = connect(&config).await?;
            db.migrate().await.map_err(runtime)?;
            let catalog = engine_catalog(&config, &db, None).await?;
            let mut archives = Vec::new();
            for file in &files {
                let bytes = std::fs::read(file)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
                archives.push((file.display().to_string(), bytes));
            }
            if first_party {
                archives.extend(plugin::first_party_archives(
                    std::path::Path::new("plugins"),
                    std::path::Path::new("target/wasm32-wasip2/plugin"),
                )?);
            }
            if archives.is_empty() {
                return Err(Failure::Usage(
                    "name .tplug files, or --first-party (after `make plugins`)".into(),
                ));
            }
            let (actor, place) = operator_at(&db, &partner).await?;
            let rbac = Rbac::load(db.conn.clone()).await.map_err(runtime)?;
            let grant = rbac
                .authorize(&actor, crate::rbac::Action::PluginManage, &place)
                .await
                .map_err(runtime)?;
            let mut failed = false;
            for (name, bytes) in archives {
                match catalog.install(&grant, &bytes, activate).await {
                    Ok(installed) => {
                        if offer {
                            catalog
                                .offer(&grant, &installed.plugin_id, true)
                                .await
                                .map_err(runtime)?;
                        }
                        println!(
                            "{name}: {} {} installed (active {}{})",
                            installed.plugin_id,
                            installed
                                .versions
                                .last()
                                .map(|v| v.version.as_str())
                                .unwrap_or_default(),
                            installed.active_version,
                            if offer { ", offered to agents" } else { "" }
                        );
                    }
                    Err(error) => {
                        failed = true;
                        eprintln!("{name}: refused: {error}");
                    }
                }
            }
            db.close().await;
            if failed {
                Err(Failure::Runtime("some archives were refused".into()))
            } else {
                Ok(())
            }
        }
        Command::Plugin {
            command: plugin::PluginCommand::ResetBreaker { plugin, partner },
        } => {
            let db = connect(&config).await?;
            db.migrate().await.map_err(runtime)?;
            let catalog = engine_catalog(&config, &db, None).await?;
            let (actor, place) = operator_at(&db, &partner).await?;
            let rbac = Rbac::load(db.conn.clone()).await.map_err(runtime)?;
            let grant = rbac
                .authorize(&actor, crate::rbac::Action::PluginManage, &place)
                .await
                .map_err(runtime)?;
            let reset = catalog.reset_breaker(&grant, &plugin).await;
            crate::rbac::audit::record(
                &db.conn,
                crate::rbac::audit::Entry {
                    actor: Some(&actor),
                    place: Some(&place),
                    action: "plugin.breaker_reset",
                    target_type: "plugin",
                    target_id: Some(&plugin),
                    request_id: None,
                    outcome: if reset.is_ok() {
                        crate::rbac::audit::Outcome::Success
                    } else {
                        crate::rbac::audit::Outcome::Failed
                    },
                    detail: Some("trellis plugin reset-breaker (command line)".into()),
                },
            )
            .await
            .map_err(runtime)?;
            db.close().await;
            let installed = reset.map_err(|e| Failure::Runtime(e.to_string()))?;
            println!(
                "{} of partner {partner}: suspensions lifted; running engines see it within database.recent_reads_ms",
                installed.plugin_id
            );
            Ok(())
        }
        Command::Plugin { command } => plugin::run(command),
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            print!("{}", config.redacted_toml());
            Ok(())
        }
        Command::Migrate { check } => {
            let db = connect(&config).await?;
            if check {
                let pending = db.pending_migrations().await.map_err(runtime)?;
                println!("{pending} migration(s) pending");
                db.close().await;
                return if pending == 0 {
                    Ok(())
                } else {
                    Err(Failure::Runtime(format!("{pending} migration(s) pending")))
                };
            }
            let applied = db.migrate().await.map_err(runtime)?;
            println!("applied {applied} migration(s); the schema is current");
            db.close().await;
            Ok(())
        }
        Command::Sandbox { listen } => {
            let db = connect(&config).await?;
            db.migrate().await.map_err(runtime)?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| Failure::Runtime(format!("cannot listen on {listen}: {e}")))?;
            let local = listener.local_addr().map_err(runtime)?;
            let base = format!("http://{local}");
            let sandbox = crate::alipay::sandbox::Sandbox::open(
                db.conn.clone(),
                &base,
                config.sandbox.time_scale,
                None,
            )
            .await
            .map_err(runtime)?;
            http::announce(&format!(
                "Offline Alipay sandbox listening on {base}/gateway.do"
            ));
            http::announce(&format!(
                "Alipay public key: {}",
                sandbox.public_key().to_base64()
            ));
            let serve = axum::serve(listener, sandbox.router()).with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            let result = serve.await.map_err(|e| Failure::Runtime(e.to_string()));
            db.close().await;
            result
        }
        Command::Secrets {
            command: SecretsCommand::Rotate,
        } => {
            let vault = crate::secrets::Vault::from_config(&config.secrets)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            if !vault.is_configured() {
                return Err(Failure::Usage("secrets.master_key is not set".to_owned()));
            }
            let db = connect(&config).await?;
            db.migrate().await.map_err(runtime)?;
            let changed = crate::alipay::credentials::rotate_all(&db.conn, &vault)
                .await
                .map_err(runtime)?;
            println!(
                "re-sealed {changed} secret(s) under key {}",
                vault.current_key_id().unwrap_or_default()
            );
            db.close().await;
            Ok(())
        }
        Command::Demo {
            command: DemoCommand::Seed,
        } => {
            let db = connect(&config).await?;
            db.migrate().await.map_err(runtime)?;
            let vault = crate::secrets::Vault::from_config(&config.secrets)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let sandbox = config
                .sandbox
                .enabled
                .then(|| format!("http://{}/sandbox", config.http.listen));
            let port = config.http.listen.port();
            let seeded = crate::demo::seed(&db.conn, &vault, sandbox.as_deref(), port)
                .await
                .map_err(runtime)?;
            match seeded {
                Some(text) => print!("{text}"),
                None => println!(
                    "demo data already present (its passwords were printed when it was created)"
                ),
            }
            let archives = plugin::first_party_archives(
                std::path::Path::new("plugins"),
                std::path::Path::new("target/wasm32-wasip2/plugin"),
            )?;
            if archives.is_empty() {
                // Run outside the repository (or before `make plugins`): say so rather than
                // leave a demo without plugins unexplained.
                println!(
                    "no first-party plugins installed: none built under ./plugins \
                     (target/wasm32-wasip2/plugin). Run `make plugins` in the Trellis repository \
                     and seed again from there, or install plugins through the API"
                );
            } else {
                let catalog = engine_catalog(&config, &db, None).await?;
                let text = crate::demo::seed_plugins(&catalog, &archives)
                    .await
                    .map_err(runtime)?;
                print!("{text}");
            }
            db.close().await;
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    password_stdin: _,
                },
        } => {
            let password = read_password_line()?;
            let email =
                crate::auth::normalize_email(&email).map_err(|e| Failure::Usage(e.to_string()))?;
            crate::auth::validate_password(&password).map_err(|e| Failure::Usage(e.to_string()))?;
            let db = connect(&config).await?;
            db.migrate().await.map_err(runtime)?;
            let user = crate::auth::create_platform_admin(&db.conn, &email, &password)
                .await
                .map_err(runtime)?;
            println!(
                "created platform administrator {} ({})",
                user.email, user.id
            );
            db.close().await;
            Ok(())
        }
        Command::Serve { no_migrate } => {
            let mut build = crate::app::Build::of(&config);
            build.migrate &= !no_migrate;
            let app = crate::app::App::build(config, build)
                .await
                .map_err(app_failure)?;
            app.serve().await.map_err(app_failure)
        }
    }
}

/// The plugin runtime and catalog of the engine, for commands that act on installed plugins.
async fn engine_catalog(
    config: &Config,
    db: &Db,
    themes: Option<Themes>,
) -> Result<crate::plugins::catalog::Catalog, Failure> {
    let vault = crate::secrets::Vault::from_config(&config.secrets)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    crate::app::catalog(
        config,
        db,
        themes,
        Arc::new(vault),
        crate::config::Clock::system(),
    )
    .map_err(app_failure)
}

/// A configuration the application cannot start with is a usage error; anything else a
/// runtime failure.
fn app_failure(error: crate::app::Error) -> Failure {
    match error {
        crate::app::Error::Config(message) => Failure::Usage(message),
        other => runtime(other),
    }
}

async fn connect(config: &Config) -> Result<Db, Failure> {
    Db::connect(config).await.map_err(runtime)
}

fn runtime(error: impl std::fmt::Display) -> Failure {
    Failure::Runtime(error.to_string())
}

/// The first line of stdin, without its line ending; the password is never echoed or logged.
fn read_password_line() -> Result<SecretString, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Usage(format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(Failure::Usage("no password on stdin".to_owned()));
    }
    Ok(SecretString::from(password))
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // `Config::load` validated the filter already; the fallback only guards against a race.
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Compact => builder.compact().with_ansi(false).try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("warning: logging was already initialised: {error}");
    }
}
