//! Authorization cost as the tenant tree grows: one check at 100 and at 10,000 merchants.
//!
//! Run: `cargo bench -p trellis-engine --bench rbac` (release). Results: `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::hint::black_box;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sea_orm::{EntityTrait, Set};
use trellis_engine::auth::{Principal, PrincipalKind};
use trellis_engine::config::Config;
use trellis_engine::db::Db;
use trellis_engine::db::entity::{nodes, users};
use trellis_engine::rbac::{Action, Rbac};
use trellis_engine::tenancy::{self, NodeKind, Place, Role};

struct Fixture {
    rbac: Rbac,
    owner: Principal,
    own_store: Place,
    foreign_store: Place,
    _dir: tempfile::TempDir,
}

fn node(kind: NodeKind, parent: &Place, n: usize) -> (nodes::ActiveModel, Place) {
    let id = uuid::Uuid::now_v7().to_string();
    let place = parent.child(kind, &id);
    let model = nodes::ActiveModel {
        id: Set(id),
        kind: Set(kind.as_str().to_owned()),
        parent_id: Set(Some(parent.id.clone())),
        partner_id: Set(place.partner_id.clone()),
        agent_id: Set(place.agent_id.clone()),
        merchant_id: Set(place.merchant_id.clone()),
        store_id: Set(place.store_id.clone()),
        name: Set(format!("{} {n}", kind.as_str())),
        theme: Set(None),
        status: Set("active".to_owned()),
        suspended_by_tier: Set(None),
        created_at: Set(Utc::now()),
        updated_at: Set(Utc::now()),
    };
    (model, place)
}

fn user(place: &Place, n: usize) -> users::ActiveModel {
    users::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        node_id: Set(place.id.clone()),
        partner_id: Set(place.partner_id.clone()),
        agent_id: Set(place.agent_id.clone()),
        merchant_id: Set(place.merchant_id.clone()),
        store_id: Set(place.store_id.clone()),
        email: Set(format!("u{n}@bench.test")),
        password_hash: Set("$argon2id$unused".to_owned()),
        role: Set(Role::for_kind(place.kind).as_str().to_owned()),
        status: Set("active".to_owned()),
        created_at: Set(Utc::now()),
        updated_at: Set(Utc::now()),
    }
}

/// 10 partners × 10 agents, `merchants` merchants spread over the agents, one store each, and
/// one account on every node.
async fn fixture(merchants: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::load(None).expect("config");
    config.database.url = secrecy::SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ));
    let db = Db::connect(&config).await.expect("db");
    db.migrate().await.expect("migrate");
    let platform = tenancy::ensure_platform(&db.conn).await.expect("platform");
    let (mut node_rows, mut user_rows) = (Vec::new(), Vec::new());
    let mut agents = Vec::new();
    for p in 0..10 {
        let (row, partner) = node(NodeKind::Partner, &platform, p);
        node_rows.push(row);
        user_rows.push(user(&partner, user_rows.len()));
        for a in 0..10 {
            let (row, agent) = node(NodeKind::Agent, &partner, a);
            node_rows.push(row);
            user_rows.push(user(&agent, user_rows.len()));
            agents.push(agent);
        }
    }
    let mut stores = Vec::new();
    let mut owners = Vec::new();
    for m in 0..merchants {
        let (row, merchant) = node(NodeKind::Merchant, &agents[m % agents.len()], m);
        node_rows.push(row);
        let owner = user(&merchant, user_rows.len());
        owners.push((owner.id.clone().unwrap(), merchant.clone()));
        user_rows.push(owner);
        let (row, store) = node(NodeKind::Store, &merchant, m);
        node_rows.push(row);
        user_rows.push(user(&store, user_rows.len()));
        stores.push(store);
    }
    // Parents before children: the rows were pushed in tree order.
    for chunk in node_rows.chunks(500) {
        nodes::Entity::insert_many(chunk.to_vec())
            .exec(&db.conn)
            .await
            .expect("nodes");
    }
    for chunk in user_rows.chunks(500) {
        users::Entity::insert_many(chunk.to_vec())
            .exec(&db.conn)
            .await
            .expect("users");
    }
    let rbac = Rbac::load(db.conn.clone()).await.expect("rbac");
    let (owner_id, owner_place) = owners[merchants / 2].clone();
    let owner = Principal {
        kind: PrincipalKind::User,
        id: owner_id,
        label: "owner".into(),
        role: Role::MerchantOwner,
        place: owner_place,
        session_id: None,
    };
    Fixture {
        rbac,
        owner,
        own_store: stores[merchants / 2].clone(),
        foreign_store: stores[merchants / 2 + 1].clone(),
        _dir: dir,
    }
}

fn authorization(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("rbac");
    for merchants in [100, 10_000] {
        let f = runtime.block_on(fixture(merchants));
        group.bench_with_input(
            BenchmarkId::new("authorize_allow", merchants),
            &f,
            |b, f| {
                b.iter(|| {
                    runtime
                        .block_on(f.rbac.authorize(
                            &f.owner,
                            Action::StoreUpdate,
                            black_box(&f.own_store),
                        ))
                        .is_ok()
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("authorize_deny", merchants), &f, |b, f| {
            b.iter(|| {
                runtime
                    .block_on(f.rbac.authorize(
                        &f.owner,
                        Action::StoreUpdate,
                        black_box(&f.foreign_store),
                    ))
                    .is_err()
            })
        });
        group.bench_with_input(BenchmarkId::new("check_deny", merchants), &f, |b, f| {
            b.iter(|| {
                runtime.block_on(f.rbac.check(
                    &f.owner,
                    Action::StoreUpdate,
                    black_box(&f.foreign_store),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, authorization);
criterion_main!(benches);
