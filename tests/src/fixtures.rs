//! Tenants and ledger rows for the benchmarks and the replay storm: one branch of the tree made
//! through the API, the protocol crate's test keys, and trades put straight into the ledger when
//! creating them through Alipay is not what is measured.

use sea_orm::{ConnectionTrait, Database};
use secrecy::SecretString;
use serde_json::json;
use trellis_engine::alipay::PrivateKey;

use crate::{Api, Engine, TEST_PASSWORD, create_node, create_partner};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../core/alipay/tests/vectors/keys/"
);

/// The platform administrator [`branch`] creates.
pub const ROOT: &str = "root@platform.test";

/// A PEM of the protocol crate's test key pairs (test keys only): `app_private_pkcs8.pem`, or
/// `alipay_private_pkcs8.pem`, which stands in for Alipay's own.
pub fn vector_pem(file: &str) -> String {
    std::fs::read_to_string(format!("{VECTORS}{file}"))
        .unwrap_or_else(|e| panic!("test key {file}: {e}"))
}

/// [`vector_pem`], parsed.
pub fn vector_key(file: &str) -> PrivateKey {
    PrivateKey::parse(&SecretString::from(vector_pem(file)))
        .unwrap_or_else(|e| panic!("test key {file}: {e}"))
}

/// One branch of the tenant tree: the platform administrator signed in on the console, and a
/// partner on its domain with an agent, a merchant and the merchant's store.
pub struct Branch {
    pub root: Api,
    pub partner: String,
    pub agent: String,
    pub merchant: String,
    pub store: String,
}

/// Makes a [`Branch`] on `engine`: the administrator straight in the database (as
/// `trellis admin create` does), the rest through the API.
pub async fn branch(engine: &Engine, database_url: &str, domain: &str) -> Branch {
    let db = Database::connect(database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    trellis_engine::auth::create_platform_admin(&db, ROOT, &SecretString::from(TEST_PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("platform admin: {e}"));
    db.close().await.ok();
    let root = Api::new(engine, "127.0.0.1")
        .login(ROOT, TEST_PASSWORD)
        .await;
    let partner = create_partner(&root, "P1", domain).await;
    let agent = create_node(&root, "agents", Some(&partner), json!({"name": "A1"})).await;
    let merchant = create_node(&root, "merchants", Some(&agent), json!({"name": "M1"})).await;
    let store = create_node(&root, "stores", Some(&merchant), json!({"name": "S1"})).await;
    Branch {
        root,
        partner,
        agent,
        merchant,
        store,
    }
}

/// `count` trades of `amount_fen` at the branch's store, waiting for their buyers, straight into
/// the ledger (`out_trade_no`s `{prefix}00000000`…), expiring in an hour; their `out_trade_no`s.
pub async fn waiting_trades(
    database_url: &str,
    branch: &Branch,
    app_id: &str,
    prefix: &str,
    count: usize,
    amount_fen: i64,
) -> Vec<String> {
    let db = Database::connect(database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let now = chrono::Utc::now().timestamp_millis();
    let expires = now + 3_600_000;
    let outs: Vec<String> = (0..count).map(|i| format!("{prefix}{i:08}")).collect();
    let Branch {
        partner,
        agent,
        merchant,
        store,
        ..
    } = branch;
    for chunk in outs.chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|out| {
                format!(
                    "('{}', '{partner}', '{agent}', '{merchant}', '{store}', '{app_id}', '{out}', \
                     'precreate', {amount_fen}, 0, 'fixture', 'sale', 'waiting', {expires}, {now}, {now})",
                    uuid::Uuid::now_v7(),
                )
            })
            .collect();
        db.execute_unprepared(&format!(
            "INSERT INTO payments (id, partner_id, agent_id, merchant_id, store_id, app_id, \
             out_trade_no, scene, amount_fen, refunded_fen, subject, purpose, status, expires_at, \
             created_at, updated_at) VALUES {}",
            rows.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("trades: {e}"));
    }
    db.close().await.ok();
    outs
}

/// Installs the test or first-party plugin built from `dir` (component `component`, id
/// `plugin_id`) for `partner`, and entitles `merchants` to it as [`offer_and_assign`] does;
/// returns the installation id.
pub async fn entitle(
    root: &Api,
    (partner, agent): (&str, &str),
    merchants: &[&str],
    (dir, component, plugin_id): (&str, &str, &str),
) -> String {
    let installation = root
        .upload(
            &format!("/api/v1/partners/{partner}/plugins"),
            crate::plugin_archive_bytes(dir, component),
        )
        .await
        .ok()
        .id();
    offer_and_assign(root, (partner, agent), merchants, &[plugin_id.to_owned()]).await;
    installation
}

/// Offers the partner's installed `plugins` to its agents, packages them in one published
/// package of `agent`, and assigns it to `merchants`.
pub async fn offer_and_assign(
    root: &Api,
    (partner, agent): (&str, &str),
    merchants: &[&str],
    plugins: &[String],
) {
    for plugin in plugins {
        root.post(
            &format!("/api/v1/partners/{partner}/plugins/{plugin}/offer"),
            json!({"offered": true}),
        )
        .await
        .ok();
    }
    let package = root
        .post(
            "/api/v1/packages",
            json!({"agent_id": agent, "name": "Test package", "plugins": plugins, "validity_days": 30}),
        )
        .await
        .ok()
        .id();
    root.post(&format!("/api/v1/packages/{package}/publish"), json!({}))
        .await
        .ok();
    root.post(
        &format!("/api/v1/packages/{package}/assignments"),
        json!({"merchant_ids": merchants}),
    )
    .await
    .ok();
}

/// `n` events of `kind` for the merchant at `place` (partner, agent, merchant), each with one
/// pending delivery to `installation` due at `due_ms`, straight into the outbox in batches: what
/// is measured or tested is their delivery, not recording them.
pub async fn queue_events(
    conn: &sea_orm::DatabaseConnection,
    (partner, agent, merchant): (&str, &str, &str),
    (installation, kind): (&str, &str),
    n: usize,
    due_ms: i64,
) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut events = Vec::new();
        let mut deliveries = Vec::new();
        for _ in chunk {
            let event = uuid::Uuid::now_v7();
            let delivery = uuid::Uuid::now_v7();
            events.push(format!(
                "('{event}', '{kind}', '{partner}', '{agent}', '{merchant}', '{{}}', 'test', {due_ms})"
            ));
            deliveries.push(format!(
                "('{delivery}', '{event}', '{installation}', '{partner}', '{agent}', '{merchant}', '{kind}', 'pending', 0, {due_ms}, {due_ms}, {due_ms})"
            ));
        }
        conn.execute_unprepared(&format!(
            "INSERT INTO events (id, kind, partner_id, agent_id, merchant_id, payload, source, occurred_at) VALUES {}",
            events.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("queueing events: {e}"));
        conn.execute_unprepared(&format!(
            "INSERT INTO event_deliveries (id, event_id, installation_id, partner_id, agent_id, merchant_id, kind, \
             status, attempts, next_attempt_at, created_at, updated_at) VALUES {}",
            deliveries.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("queueing deliveries: {e}"));
    }
}
