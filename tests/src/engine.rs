//! Test engines: built in this process by the composition root, or the real `trellis serve`
//! binary where a test needs a process (signals, kill -9, its log).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{TEST_MASTER_KEY, tempdir, trellis_bin, workspace_root};

/// The `TRELLIS_*` settings of every test engine, in-process or not: data in `data_dir`, themes
/// from the repository, a free port, the test master key, the shared compiled-plugin cache, and
/// the offline sandbox on loopback reachable as a custom gateway.
fn engine_variables(data_dir: &Path, database_url: &str) -> Vec<(String, String)> {
    let root = workspace_root();
    [
        ("TRELLIS_DATA_DIR", data_dir.display().to_string()),
        ("TRELLIS_DATABASE__URL", database_url.to_owned()),
        (
            "TRELLIS_THEMES__DIR",
            root.join("themes").display().to_string(),
        ),
        ("TRELLIS_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        ("TRELLIS_LOG__FORMAT", "json".to_owned()),
        // A test-only master key: merchant secrets are sealed under it in every test database.
        ("TRELLIS_SECRETS__MASTER_KEY", TEST_MASTER_KEY.to_owned()),
        ("TRELLIS_LOG__LEVEL", "info".to_owned()),
        // Compiled plugins are keyed by content and engine configuration, so every test
        // engine can share one cache instead of compiling the same component again.
        (
            "TRELLIS_PLUGINS__CACHE_DIR",
            root.join("target/test-plugin-cache").display().to_string(),
        ),
        // The offline sandbox the tests use is the engine itself, on loopback: merchants may
        // point a custom gateway at it. Tests of the gateway rules override or remove these.
        ("TRELLIS_ALIPAY__ALLOW_CUSTOM_GATEWAY", "true".to_owned()),
        (
            "TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS",
            r#"["127.0.0.0/8", "::1"]"#.to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `base` with `overrides` applied: an empty value removes the variable (e.g. to run without a
/// master key).
fn with_overrides(
    mut base: Vec<(String, String)>,
    overrides: &[(&str, &str)],
) -> Vec<(String, String)> {
    for (key, value) in overrides {
        base.retain(|(k, _)| k != key);
        if !value.is_empty() {
            base.push(((*key).to_owned(), (*value).to_owned()));
        }
    }
    base
}

/// A `trellis` command with a clean `TRELLIS_*` environment, themes from the repository and
/// data in `data_dir`.
pub fn trellis_command(data_dir: &Path, database_url: &str) -> Command {
    let mut command = Command::new(trellis_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRELLIS_") {
            command.env_remove(key);
        }
    }
    command.current_dir(data_dir);
    for (key, value) in engine_variables(data_dir, database_url) {
        // The CLI compiles nothing and talks to no gateway: only the engine's own settings.
        if key != "TRELLIS_PLUGINS__CACHE_DIR" && !key.starts_with("TRELLIS_ALIPAY__") {
            command.env(key, value);
        }
    }
    command
}

/// A running engine: in this process ([`Engine::start`]) or a `trellis serve` process
/// ([`Engine::spawn`]).
pub struct Engine {
    pub base_url: String,
    pub data_dir: tempfile::TempDir,
    run: Run,
}

enum Run {
    /// The real binary, with everything it writes to stderr.
    Process {
        child: Child,
        stderr: std::sync::Arc<std::sync::Mutex<String>>,
    },
    /// Built by the composition root on a runtime of its own, so a test that blocks its own
    /// runtime cannot stall the engine; dropping the sender stops it.
    InProcess {
        _stop: tokio::sync::oneshot::Sender<()>,
    },
}

impl Engine {
    /// Builds and serves an engine in this process on the given database, with the settings a
    /// `trellis serve` process would get from [`engine_variables`] and `env`.
    pub fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        use trellis_engine::app::{App, Build};
        let data_dir = tempdir();
        let variables = with_overrides(engine_variables(data_dir.path(), database_url), env);
        let config = trellis_engine::config::Config::load_with_variables(
            None,
            variables.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap_or_else(|e| panic!("test engine configuration: {e}"));
        let (ready, started) = std::sync::mpsc::channel::<Result<String, String>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let build = Build::of(&config);
                let listen = config.http.listen;
                let app = match App::build(config, build).await {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready.send(Err(format!("listen: {e}")));
                        return;
                    }
                };
                let address = listener.local_addr().map(|a| format!("http://{a}"));
                let _ = ready.send(address.map_err(|e| e.to_string()));
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(error) = app.serve_on(listener, shutdown).await {
                    eprintln!("in-process engine: {error}");
                }
            });
        });
        let base_url = match started.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(url)) => url,
            Ok(Err(error)) => panic!("the in-process engine did not start: {error}"),
            Err(_) => panic!("the in-process engine did not start within 60 s"),
        };
        Self {
            base_url,
            data_dir,
            run: Run::InProcess { _stop: stop },
        }
    }

    /// Starts `trellis serve` (the real binary) on the given database with extra environment,
    /// and waits until it prints the address it listens on.
    pub fn spawn(database_url: &str, env: &[(&str, &str)]) -> Self {
        let data_dir = tempdir();
        let mut command = Command::new(trellis_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TRELLIS_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(data_dir.path())
            .envs(with_overrides(
                engine_variables(data_dir.path(), database_url),
                env,
            ))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start trellis: {e}"));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            let echo = trellis_engine::config::test_log_from_env();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[trellis] {line}");
                    }
                    if let Ok(mut text) = sink.lock() {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            });
        }
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("Trellis is listening on ") {
                    let _ = tx.send(address.trim().to_owned());
                }
            }
        });
        let base_url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!("trellis did not start within 60 s; its log:\n{log}");
            }
        };
        Self {
            base_url,
            data_dir,
            run: Run::Process { child, stderr },
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn process(&mut self) -> &mut Child {
        match &mut self.run {
            Run::Process { child, .. } => child,
            Run::InProcess { .. } => {
                panic!("an in-process engine is no process: start it with Engine::spawn")
            }
        }
    }

    /// Everything the engine process has logged so far.
    pub fn log(&self) -> String {
        match &self.run {
            Run::Process { stderr, .. } => stderr.lock().map(|s| s.clone()).unwrap_or_default(),
            Run::InProcess { .. } => panic!("an in-process engine keeps no log: use Engine::spawn"),
        }
    }

    pub fn pid(&mut self) -> u32 {
        self.process().id()
    }

    /// Sends `signal` (e.g. "TERM") and waits up to `within` for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str, within: Duration) -> ExitStatus {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success(), "kill -{signal} failed");
        self.wait(within)
    }

    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.process().try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.process().kill();
                panic!(
                    "trellis did not exit within {within:?}; log:\n{}",
                    self.log()
                );
            }
            // A synchronous harness helper, never called from inside the runtime.
            #[allow(
                clippy::disallowed_methods,
                reason = "synchronous polling in the test harness"
            )]
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Run::Process { child, .. } = &mut self.run
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
