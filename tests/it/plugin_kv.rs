//! The plugin key-value store on both databases: versions, compare-and-swap under concurrency,
//! quotas charged with the write, bytewise prefix listing, counters, and namespace isolation.

use sea_orm::Database;
use sea_orm_migration::MigratorTrait;
use trellis_core::plugins::kv::{Cas, KvError, Namespace};
use trellis_core::plugins::manifest::KvQuota;
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
        let leg = db.label();
        let a = ns("inst-1", "merchant-a", 5, 200);

        // Create only if absent; then only at the current version.
        let Cas::Stored(v1) = a.compare_and_swap(&conn, "k", None, b"one").await.unwrap() else {
            panic!("{leg}: first write");
        };
        match a
            .compare_and_swap(&conn, "k", None, b"again")
            .await
            .unwrap()
        {
            Cas::Conflict(Some(entry)) => assert_eq!(entry.value, b"one"),
            other => panic!("{leg}: {other:?}"),
        }
        let Cas::Stored(v2) = a
            .compare_and_swap(&conn, "k", Some(v1), b"two")
            .await
            .unwrap()
        else {
            panic!("{leg}: update at the right version");
        };
        assert!(v2 > v1);
        assert!(matches!(
            a.compare_and_swap(&conn, "k", Some(v1), b"stale")
                .await
                .unwrap(),
            Cas::Conflict(_)
        ));
        // A delete and re-create never hands out an old version again.
        assert!(a.delete(&conn, "k", Some(v2)).await.unwrap());
        let Cas::Stored(v3) = a
            .compare_and_swap(&conn, "k", None, b"three")
            .await
            .unwrap()
        else {
            panic!("{leg}: re-create");
        };
        assert!(v3 > v2, "{leg}: {v3} > {v2}");
        assert!(matches!(
            a.compare_and_swap(&conn, "k", Some(v2), b"x")
                .await
                .unwrap(),
            Cas::Conflict(_)
        ));

        // Another namespace (other merchant or other installation) sees nothing of it.
        for other in [
            ns("inst-1", "merchant-b", 5, 200),
            ns("inst-2", "merchant-a", 5, 200),
        ] {
            assert_eq!(other.get(&conn, "k").await.unwrap(), None, "{leg}");
            assert_eq!(
                other.list(&conn, "", None, 100).await.unwrap().0.len(),
                0,
                "{leg}"
            );
        }

        // Counters are atomic under concurrency: 2 × 25 increments from parallel tasks.
        let counter = ns("inst-1", "merchant-c", 10, 10_000);
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let conn = conn.clone();
            let counter = counter.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    counter.increment(&conn, "hits", 1).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            counter.increment(&conn, "hits", 0).await.unwrap(),
            50,
            "{leg}"
        );
        assert!(
            matches!(
                a.increment(&conn, "k", 1).await,
                Err(KvError::NotACounter(_))
            ),
            "{leg}"
        );

        // Quotas: keys and bytes, checked in the write's transaction; shrinking always passes.
        let q = ns("inst-1", "merchant-q", 3, 60);
        for key in ["q1", "q2", "q3"] {
            assert!(matches!(
                q.compare_and_swap(&conn, key, None, b"0123456789")
                    .await
                    .unwrap(),
                Cas::Stored(_)
            ));
        }
        assert!(
            matches!(q.compare_and_swap(&conn, "q4", None, b"x").await, Err(KvError::Quota(m)) if m.contains("3 keys")),
            "{leg}"
        );
        let v = q.get(&conn, "q1").await.unwrap().unwrap().version;
        assert!(
            matches!(q.compare_and_swap(&conn, "q1", Some(v), &[b'y'; 40]).await, Err(KvError::Quota(m)) if m.contains("60 bytes")),
            "{leg}"
        );
        assert_eq!(
            q.usage(&conn).await.unwrap(),
            (3, 36),
            "{leg}: nothing of the refused writes was charged"
        );
        assert!(q.delete(&conn, "q2", None).await.unwrap());
        assert_eq!(q.usage(&conn).await.unwrap(), (2, 24), "{leg}");

        // Listing: bytewise order, pages, and prefixes with LIKE's special characters.
        let l = ns("inst-1", "merchant-l", 100, 100_000);
        for key in ["m/b", "m/a", "m/%x", "m/_y", "m/会员", "m0", "n/a", "m"] {
            l.compare_and_swap(&conn, key, None, key.as_bytes())
                .await
                .unwrap();
        }
        let (items, next) = l.list(&conn, "m/", None, 3).await.unwrap();
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["m/%x", "m/_y", "m/a"], "{leg}");
        let (rest, end) = l.list(&conn, "m/", next.as_deref(), 3).await.unwrap();
        let keys: Vec<&str> = rest.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["m/b", "m/会员"], "{leg}");
        assert_eq!(end, None, "{leg}");
        let (under, _) = l.list(&conn, "m/%", None, 10).await.unwrap();
        assert_eq!(under.len(), 1, "{leg}: % is not a wildcard");
        assert_eq!(
            l.list(&conn, "", None, 100).await.unwrap().0.len(),
            8,
            "{leg}"
        );

        // Bad keys are refused before any SQL.
        for bad in ["", "a\nb", &"k".repeat(257)] {
            assert!(
                matches!(l.get(&conn, bad).await, Err(KvError::Invalid(_))),
                "{leg}: {bad:?}"
            );
        }
        conn.close().await.unwrap();
        db.cleanup().await;
    }
}
