//! The composition root: the one place the application is put together — configuration →
//! database → services → background tasks → router — and the owner of its clock. `trellis
//! serve`, the other CLI commands that need the engine's services, and the tests build it here.
//!
//! Invariant: every running application has exactly the services this module wires, with the
//! settings of its `Config`; nothing else constructs `AppState`, the plugin runtime or the
//! catalog, and stopping an application stops its background tasks before the database closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alipay::client::AlipayClient;
use crate::alipay::gateway::GatewayPolicy;
use crate::alipay::sandbox::Sandbox;
use crate::auth::Hasher;
use crate::config::{Clock, Config};
use crate::db::Db;
use crate::http::{self, AppState};
use crate::plugins::catalog::Catalog;
use crate::plugins::dispatch::{Dispatcher, DispatcherOptions};
use crate::plugins::{Runtime, RuntimeOptions, Services, kv};
use crate::rbac::Rbac;
use crate::secrets::Vault;
use crate::themes::Themes;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work (themes folder, master key): a usage error, exit 2.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error(transparent)]
    Rbac(#[from] crate::rbac::Error),
    #[error("cannot start the plugin runtime: {0}")]
    Plugins(#[from] crate::plugins::Error),
    #[error("cannot build the Alipay client: {0}")]
    Alipay(#[from] crate::alipay::Error),
    #[error("cannot start the offline Alipay sandbox: {0}")]
    Sandbox(#[from] crate::alipay::sandbox::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error(transparent)]
    Serve(#[from] anyhow::Error),
}

/// How to build an application.
#[derive(Debug, Clone)]
pub struct Build {
    /// Apply pending migrations first (`database.auto_migrate`, unless `serve --no-migrate`).
    pub migrate: bool,
    /// The application's clock: the system's, or one a test moves.
    pub clock: Clock,
}

impl Build {
    pub fn of(config: &Config) -> Self {
        Self {
            migrate: config.database.auto_migrate,
            clock: Clock::system(),
        }
    }
}

/// A built application: its shared state and the background tasks it runs.
pub struct App {
    pub state: AppState,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    dispatcher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// Builds the application `config` describes and starts its background tasks: the
    /// permission-cache sync, the event dispatcher (when `events.dispatcher`) and audit pruning.
    pub async fn build(config: Config, build: Build) -> Result<Self, Error> {
        let themes = Themes::load(&config.themes.dir, config.themes.reload)
            .map_err(|e| Error::Config(format!("themes.dir: {e}")))?;
        let db = Db::connect(&config).await?;
        if build.migrate {
            let applied = db.migrate().await?;
            if applied > 0 {
                tracing::info!(applied, "migrations applied");
            }
        }
        let rbac = Rbac::load(db.conn.clone()).await?;
        let vault = Arc::new(
            Vault::from_config(&config.secrets).map_err(|e| Error::Config(e.to_string()))?,
        );
        if !vault.is_configured() {
            tracing::warn!("secrets.master_key is not set: merchant Alipay keys cannot be stored");
        }
        let catalog = catalog(
            &config,
            &db,
            Some(themes.clone()),
            vault.clone(),
            build.clock,
        )?;
        let (stop, stopped) = watch::channel(false);
        let mut background = vec![rbac.spawn_sync(Duration::from_millis(500))];
        background.push(tokio::spawn(crate::rbac::audit::prune_periodically(
            db.conn.clone(),
            config.audit.retention_days,
            stopped.clone(),
        )));
        let recent_reads = Duration::from_millis(config.database.recent_reads_ms);
        let payments = crate::payments::Payments::new(
            db.clone(),
            vault.clone(),
            catalog.runtime.services().alipay.clone(),
            catalog.clone(),
            &config.http.public_scheme,
            crate::payments::codes::Waiting {
                deadline: Duration::from_secs(config.payments.pay_wait_secs.max(1)),
                poll: Duration::from_millis(config.payments.pay_poll_ms.max(100)),
            },
        )
        .keeping_reads(recent_reads);
        let (payments, writer) = payments.group_commit(
            crate::payments::GroupCommit {
                max_batch: config.payments.ingest_batch as usize,
                queue: config.payments.ingest_queue as usize,
            },
            stopped.clone(),
        );
        background.push(writer);
        if config.payments.reconcile {
            background.push(tokio::spawn(crate::payments::reconcile::run(
                payments.clone(),
                crate::payments::reconcile::Options::from_config(&config.payments),
                stopped.clone(),
            )));
        }
        let outside = crate::doors::outside::Outside {
            db: db.conn.clone(),
            catalog: catalog.clone(),
            payments: payments.clone(),
            public_scheme: config.http.public_scheme.clone(),
        }
        .attach();
        let dispatcher = config.events.dispatcher.then(|| {
            let options = DispatcherOptions::from_config(&config.events);
            tokio::spawn(Dispatcher::new(catalog.clone(), options).run(stopped))
        });
        let state = AppState {
            hosts: crate::db::Recent::new(recent_reads, 10_000),
            payments,
            hasher: Hasher::new(config.auth.hash_threads, config.auth.hash_queue),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                config.http.max_concurrent_uploads as usize,
            )),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(config.http.max_buffered_body_bytes / 1024)
                    .unwrap_or(usize::MAX >> 4),
            )),
            outside,
            config: Arc::new(config),
            db,
            themes,
            rbac,
            vault,
            catalog,
        };
        Ok(Self {
            state,
            stop,
            background,
            dispatcher,
        })
    }

    /// The router of this application reached at `local`; the offline sandbox (when
    /// `sandbox.enabled`) answers under `/sandbox` there.
    pub async fn router(&self, local: SocketAddr) -> Result<Router, Error> {
        let config = &self.state.config;
        let mut sandbox = None;
        if config.sandbox.enabled {
            let opened = Sandbox::open(
                self.state.db.conn.clone(),
                &sandbox_base(local),
                config.sandbox.time_scale,
                Some(local),
            )
            .await?;
            sandbox = Some(opened.router());
        }
        Ok(http::router(self.state.clone(), sandbox))
    }

    /// Binds `http.listen`, announces the address on stdout (`make run` and the process tests
    /// read that line) and serves until SIGINT or SIGTERM.
    pub async fn serve(self) -> Result<(), Error> {
        let listen = self.state.config.http.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Listen(listen, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Listen(listen, e))?;
        http::announce(&format!("Trellis is listening on http://{local}"));
        if self.state.config.sandbox.enabled {
            let base = sandbox_base(local);
            http::announce(&format!(
                "Offline Alipay sandbox at {base}/gateway.do (Alipay public key: GET {base}/alipay-public-key)"
            ));
        }
        let shutdown = async {
            http::shutdown_signal().await;
            tracing::info!("shutdown requested; finishing in-flight requests");
        };
        self.serve_on(listener, shutdown).await
    }

    /// Serves on `listener` until `shutdown` resolves, then stops the background tasks.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let listen = self.state.config.http.listen;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Listen(listen, e))?;
        tracing::info!(address = %local, "listening");
        let router = self.router(local).await?;
        let served = http::serve(&self.state.config, listener, router, shutdown).await;
        self.stop().await;
        Ok(served?)
    }

    /// Stops the background tasks (in-flight deliveries get ten seconds, else their leases
    /// expire and another process retries them: nothing is lost) and closes the database.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(dispatcher) = self.dispatcher {
            let _ = tokio::time::timeout(Duration::from_secs(10), dispatcher).await;
        }
        for task in self.background {
            task.abort();
        }
        self.state.db.close().await;
    }
}

/// A plugin runtime over `db`, with `vault` and an Alipay client held to `gateways`: the
/// engine's (through [`catalog`]) and the plugin harness's, wired the same way.
pub fn plugin_runtime(
    options: RuntimeOptions,
    db: &Db,
    kv: kv::Store,
    vault: Arc<Vault>,
    gateways: GatewayPolicy,
    themes: Option<Themes>,
) -> Result<Runtime, Error> {
    let alipay =
        AlipayClient::with_policy(gateways, Duration::from_secs(5), Duration::from_secs(15))?;
    let services = Services {
        db: db.conn.clone(),
        kv,
        vault,
        alipay,
        themes,
        outside: Arc::default(),
    };
    Ok(Runtime::new(options, services)?)
}

/// Where the embedded sandbox is reached when the engine listens at `local`.
fn sandbox_base(local: SocketAddr) -> String {
    format!("http://{local}/sandbox")
}

/// The plugin runtime and the catalog over it, as the engine runs them: for the application
/// and for commands that act on installed plugins.
pub fn catalog(
    config: &Config,
    db: &Db,
    themes: Option<Themes>,
    vault: Arc<Vault>,
    clock: Clock,
) -> Result<Catalog, Error> {
    let plugins = plugin_runtime(
        RuntimeOptions::from_config(&config.plugins),
        db,
        kv::Store::database(db.conn.clone())
            .remembering(config.plugins.kv_recent_namespaces as usize),
        vault,
        config.alipay.gateway_policy(),
        themes,
    )?;
    Ok(Catalog::new(db.conn.clone(), Arc::new(plugins), clock)
        .with_event_limits(crate::events::Limits::from_config(&config.events))
        .keeping_reads(Duration::from_millis(config.database.recent_reads_ms)))
}
