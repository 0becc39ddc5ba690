//! The subtree rule as a property: over random tenant trees stored in the real database and
//! random (actor, action, target) triples, `Rbac::authorize` allows exactly what "the target is
//! at or below the actor's node, the actor is active, and the matrix allows the action" allows.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, Set};
use trellis_engine::auth::{Principal, PrincipalKind};
use trellis_engine::config::Config;
use trellis_engine::db::Db;
use trellis_engine::db::entity::users;
use trellis_engine::rbac::{Action, Rbac, allows};
use trellis_engine::tenancy::{self, NewNode, NodeKind, Place, Role};
use trellis_tests::databases;

const TREES: usize = 5;
const CHECKS_PER_TREE: usize = 2_000;

struct Actor {
    principal: Principal,
    active: bool,
}

async fn open(url: &str) -> Db {
    let mut config = Config::load(None).expect("default configuration");
    config.database.url = secrecy::SecretString::from(url.to_owned());
    let db = Db::connect(&config).await.expect("database");
    db.migrate().await.expect("migrations");
    db
}

/// A random tree under the platform, built through the real store functions.
async fn random_tree(
    db: &Db,
    rbac: &Rbac,
    rng: &mut fastrand::Rng,
    root: &Principal,
) -> Vec<Place> {
    let platform = tenancy::ensure_platform(&db.conn).await.unwrap();
    let mut places = vec![platform.clone()];
    let mut frontier = vec![platform];
    while let Some(parent) = frontier.pop() {
        let Some(kind) = NodeKind::ALL
            .into_iter()
            .find(|k| k.parent() == Some(parent.kind))
        else {
            continue;
        };
        let children = match kind {
            NodeKind::Partner => rng.usize(2..=3),
            NodeKind::Store => rng.usize(0..=2),
            _ => rng.usize(1..=3),
        };
        for n in 0..children {
            let grant = rbac
                .authorize(root, Action::create_node(kind), &parent)
                .await
                .unwrap();
            let input = NewNode {
                name: format!("{} {n}", kind.as_str()),
                ..NewNode::default()
            };
            let node = tenancy::create(&db.conn, &grant, kind, input, &[])
                .await
                .unwrap();
            places.push(node.place());
            frontier.push(node.place());
        }
    }
    places
}

/// One account on every node (a fifth of them disabled), inserted directly: hashing real
/// passwords would only slow the property down, and authentication is not under test here.
async fn accounts(
    db: &Db,
    places: &[Place],
    rng: &mut fastrand::Rng,
    tree: usize,
    all_active: bool,
) -> Vec<Actor> {
    let mut actors = Vec::new();
    for (i, place) in places.iter().enumerate() {
        let role = Role::for_kind(place.kind);
        let active = all_active || rng.u8(0..5) != 0;
        let id = uuid::Uuid::now_v7().to_string();
        users::ActiveModel {
            id: Set(id.clone()),
            node_id: Set(place.id.clone()),
            partner_id: Set(place.partner_id.clone()),
            agent_id: Set(place.agent_id.clone()),
            merchant_id: Set(place.merchant_id.clone()),
            store_id: Set(place.store_id.clone()),
            email: Set(format!("t{tree}-u{i}@prop.test")),
            password_hash: Set("$argon2id$unused".to_owned()),
            role: Set(role.as_str().to_owned()),
            status: Set(if active { "active" } else { "disabled" }.to_owned()),
            created_at: Set(Utc::now()),
            updated_at: Set(Utc::now()),
        }
        .insert(&db.conn)
        .await
        .unwrap();
        let principal = Principal {
            kind: PrincipalKind::User,
            id,
            label: String::new(),
            role,
            place: place.clone(),
            session_id: None,
        };
        actors.push(Actor { principal, active });
    }
    actors
}

#[tokio::test]
async fn authorization_allows_exactly_the_subtree_and_the_matrix_over_random_trees() {
    for leg in databases().await {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let db = open(&leg.url()).await;
        let root_place = tenancy::ensure_platform(&db.conn).await.unwrap();
        // The root account is inserted for real, so its authority comes from the database too.
        let root = accounts(&db, std::slice::from_ref(&root_place), &mut rng, 999, true)
            .await
            .remove(0)
            .principal;
        let mut checks = 0;
        let (mut allowed, mut denied) = (0, 0);
        for tree in 0..TREES {
            let rbac = Rbac::load(db.conn.clone()).await.unwrap();
            let places = random_tree(&db, &rbac, &mut rng, &root).await;
            let actors = accounts(&db, &places, &mut rng, tree, false).await;
            // A fresh load: every decision below comes from what the database holds.
            let rbac = Rbac::load(db.conn.clone()).await.unwrap();
            for _ in 0..CHECKS_PER_TREE {
                let actor = &actors[rng.usize(..actors.len())];
                // Half the targets come from inside the actor's subtree, so allows are well sampled.
                let inside: Vec<&Place> = places
                    .iter()
                    .filter(|p| actor.principal.place.contains(p))
                    .collect();
                let target = if rng.bool() {
                    inside[rng.usize(..inside.len())]
                } else {
                    &places[rng.usize(..places.len())]
                };
                let action = Action::ALL[rng.usize(..Action::ALL.len())];
                let expected = actor.active
                    && actor.principal.place.contains(target)
                    && allows(actor.principal.role, action);
                let actual = rbac
                    .authorize(&actor.principal, action, target)
                    .await
                    .is_ok();
                assert_eq!(
                    actual,
                    expected,
                    "seed {seed} on {}: {} at {:?} {} → {:?} {}",
                    leg.label(),
                    actor.principal.role.as_str(),
                    actor.principal.place.kind,
                    action.name(),
                    target.kind,
                    target.id
                );
                if actual {
                    allowed += 1
                } else {
                    denied += 1
                }
                checks += 1;
            }
        }
        assert!(checks >= 10_000, "{checks} cases");
        assert!(
            allowed > 1_000 && denied > 1_000,
            "both outcomes well covered: {allowed} allowed, {denied} denied"
        );
        db.close().await;
        leg.cleanup().await;
    }
}
