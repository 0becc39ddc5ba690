//! The plugin key-value store on both databases: versions, compare-and-swap under concurrency,
//! quotas charged with the write, bytewise prefix listing, counters, and namespace isolation.

use sea_orm::Database;
use sea_orm_migration::MigratorTrait;
use trellis_engine::plugins::kv::{Cas, KvError, Namespace, Store};
use trellis_engine::plugins::manifest::KvQuota;
use trellis_tests::databases;

fn ns(installation: &str, scope: &str, max_keys: u64, max_bytes: u64) -> Namespace {
    Namespace {
        installation_id: installation.into(),
        scope_id: scope.into(),
        quota: KvQuota {
            max_keys,
            max_bytes,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_versions_quotas_listing_and_isolation_hold_on_every_database() {
    for db in databases().await {
        let url = match db.label() {
            "sqlite" => format!("{}?mode=rwc", db.url()),
            _ => db.url(),
        };
        let conn = Database::connect(url).await.unwrap();
        trellis_migrations::Migrator::up(&conn, None).await.unwrap();
        exercise(&Store::database(conn.clone()), db.label()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_memory_store_behaves_like_the_database_one() {
    exercise(&Store::Memory(Default::default()), "memory").await;
}

async fn exercise(store: &Store, leg: &str) {
    {
        let a = ns("inst-1", "merchant-a", 5, 200);

        // Create only if absent; then only at the current version.
        let Cas::Stored(v1) = store.compare_and_swap(&a, "k", None, b"one").await.unwrap() else {
            panic!("{leg}: first write");
        };
        match store
            .compare_and_swap(&a, "k", None, b"again")
            .await
            .unwrap()
        {
            Cas::Conflict(Some(entry)) => assert_eq!(entry.value, b"one"),
            other => panic!("{leg}: {other:?}"),
        }
        let Cas::Stored(v2) = store
            .compare_and_swap(&a, "k", Some(v1), b"two")
            .await
            .unwrap()
        else {
            panic!("{leg}: update at the right version");
        };
        assert!(v2 > v1);
        assert!(matches!(
            store
                .compare_and_swap(&a, "k", Some(v1), b"stale")
                .await
                .unwrap(),
            Cas::Conflict(_)
        ));
        // A delete and re-create never hands out an old version again.
        assert!(store.delete(&a, "k", Some(v2)).await.unwrap());
        let Cas::Stored(v3) = store
            .compare_and_swap(&a, "k", None, b"three")
            .await
            .unwrap()
        else {
            panic!("{leg}: re-create");
        };
        assert!(v3 > v2, "{leg}: {v3} > {v2}");
        assert!(matches!(
            store
                .compare_and_swap(&a, "k", Some(v2), b"x")
                .await
                .unwrap(),
            Cas::Conflict(_)
        ));

        // Another namespace (other merchant or other installation) sees nothing of it.
        for other in [
            ns("inst-1", "merchant-b", 5, 200),
            ns("inst-2", "merchant-a", 5, 200),
        ] {
            assert_eq!(store.get(&other, "k").await.unwrap(), None, "{leg}");
            assert_eq!(
                store.list(&other, "", None, 100).await.unwrap().0.len(),
                0,
                "{leg}"
            );
        }

        // Counters are atomic under concurrency: 2 × 25 increments from parallel tasks.
        let counter = ns("inst-1", "merchant-c", 10, 10_000);
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let store = store.clone();
            let counter = counter.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    store.increment(&counter, "hits", 1).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            store.increment(&counter, "hits", 0).await.unwrap(),
            50,
            "{leg}"
        );
        assert!(
            matches!(
                store.increment(&a, "k", 1).await,
                Err(KvError::NotACounter(_))
            ),
            "{leg}"
        );

        // Quotas: keys and bytes, checked in the write's transaction; shrinking always passes.
        let q = ns("inst-1", "merchant-q", 3, 60);
        for key in ["q1", "q2", "q3"] {
            assert!(matches!(
                store
                    .compare_and_swap(&q, key, None, b"0123456789")
                    .await
                    .unwrap(),
                Cas::Stored(_)
            ));
        }
        assert!(
            matches!(store.compare_and_swap(&q, "q4", None, b"x").await, Err(KvError::Quota(m)) if m.contains("3 keys")),
            "{leg}"
        );
        let v = store.get(&q, "q1").await.unwrap().unwrap().version;
        assert!(
            matches!(store.compare_and_swap(&q, "q1", Some(v), &[b'y'; 40]).await, Err(KvError::Quota(m)) if m.contains("60 bytes")),
            "{leg}"
        );
        assert_eq!(
            store.usage(&q).await.unwrap(),
            (3, 36),
            "{leg}: nothing of the refused writes was charged"
        );
        assert!(store.delete(&q, "q2", None).await.unwrap());
        assert_eq!(store.usage(&q).await.unwrap(), (2, 24), "{leg}");

        // Listing: bytewise order, pages, and prefixes with LIKE's special characters.
        let l = ns("inst-1", "merchant-l", 100, 100_000);
        for key in ["m/b", "m/a", "m/%x", "m/_y", "m/会员", "m0", "n/a", "m"] {
            store
                .compare_and_swap(&l, key, None, key.as_bytes())
                .await
                .unwrap();
        }
        let (items, next) = store.list(&l, "m/", None, 3).await.unwrap();
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["m/%x", "m/_y", "m/a"], "{leg}");
        let (rest, end) = store.list(&l, "m/", next.as_deref(), 3).await.unwrap();
        let keys: Vec<&str> = rest.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["m/b", "m/会员"], "{leg}");
        assert_eq!(end, None, "{leg}");
        let (under, _) = store.list(&l, "m/%", None, 10).await.unwrap();
        assert_eq!(under.len(), 1, "{leg}: % is not a wildcard");
        assert_eq!(
            store.list(&l, "", None, 100).await.unwrap().0.len(),
            8,
            "{leg}"
        );

        // Bad keys are refused before any SQL.
        for bad in ["", "a\nb", &"k".repeat(257)] {
            assert!(
                matches!(store.get(&l, bad).await, Err(KvError::Invalid(_))),
                "{leg}: {bad:?}"
            );
        }
    }
}
