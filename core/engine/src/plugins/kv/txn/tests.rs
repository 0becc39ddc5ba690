use super::super::MemoryKv;
use super::*;
use crate::plugins::manifest::KvQuota;

fn ns() -> Namespace {
    Namespace {
        installation_id: "i".into(),
        scope_id: "m".into(),
        quota: KvQuota {
            max_keys: 10,
            max_bytes: 10_000,
        },
    }
}

fn memory() -> (Store, Arc<Mutex<MemoryKv>>) {
    let kv = Arc::new(Mutex::new(MemoryKv::default()));
    (Store::Memory(kv.clone()), kv)
}

fn put(key: &str, value: &[u8], expected: Expect) -> BatchWrite {
    BatchWrite {
        key: key.into(),
        value: Some(value.to_vec()),
        expected,
    }
}

#[tokio::test]
async fn a_batch_of_writes_is_made_whole_or_not_at_all() {
    let (store, kv) = memory();
    let mut txn = Txn::new(ns());
    let Batch::Stored(first) = txn
        .write_many(
            &store,
            &[put("a", b"1", Expect::Absent), put("b", b"2", Expect::Any)],
        )
        .await
        .unwrap()
    else {
        panic!("stored");
    };
    assert!(first[0] > 0 && first[1] > first[0]);
    // The second write's expectation fails: the first is not made either.
    let refused = txn
        .write_many(
            &store,
            &[
                put("c", b"3", Expect::Absent),
                put("a", b"x", Expect::Version(first[0] + 100)),
            ],
        )
        .await
        .unwrap();
    let Batch::Conflict(1, Some(found)) = refused else {
        panic!("a conflict at index 1: {refused:?}");
    };
    assert_eq!(found.value, b"1");
    assert_eq!(txn.get(&store, "c").await.unwrap(), None);
    // A batch over the quota writes nothing (ten keys at most; two are used).
    let many: Vec<BatchWrite> = (0..9)
        .map(|i| put(&format!("k{i}"), b"v", Expect::Any))
        .collect();
    assert!(matches!(
        txn.write_many(&store, &many).await,
        Err(KvError::Quota(_))
    ));
    assert_eq!(txn.get(&store, "k0").await.unwrap(), None);
    // Duplicates are refused; a delete and a conditional write pass together.
    assert!(matches!(
        txn.write_many(
            &store,
            &[put("d", b"1", Expect::Any), put("d", b"2", Expect::Any)]
        )
        .await,
        Err(KvError::Invalid(_))
    ));
    let deleted = txn
        .write_many(
            &store,
            &[
                BatchWrite {
                    key: "b".into(),
                    value: None,
                    expected: Expect::Version(first[1]),
                },
                put("a", b"one", Expect::Version(first[0])),
            ],
        )
        .await
        .unwrap();
    assert!(matches!(&deleted, Batch::Stored(v) if v[0] == 0 && v[1] > first[1]));
    let got = txn
        .get_many(&store, &["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, b"one");
    assert!(got[1].is_none() && got[2].is_none());
    txn.commit_memory(&kv).unwrap();
    assert_eq!(store.get(&ns(), "a").await.unwrap().unwrap().value, b"one");
    assert_eq!(store.get(&ns(), "b").await.unwrap(), None);
}

#[tokio::test]
async fn a_transaction_reads_its_own_writes_and_nobody_else_does_until_it_commits() {
    let (store, kv) = memory();
    let mut txn = Txn::new(ns());
    let Cas::Stored(v) = txn
        .compare_and_swap(&store, "seen/1", None, b"x")
        .await
        .unwrap()
    else {
        panic!("stored");
    };
    assert_eq!(txn.get(&store, "seen/1").await.unwrap().unwrap().version, v);
    assert_eq!(txn.increment(&store, "n", 2).await.unwrap(), 2);
    assert_eq!(txn.increment(&store, "n", 3).await.unwrap(), 5);
    let (listed, _) = txn.list(&store, "", None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(store.get(&ns(), "seen/1").await.unwrap(), None);
    txn.commit_memory(&kv).unwrap();
    assert_eq!(
        store.get(&ns(), "seen/1").await.unwrap().unwrap().version,
        v
    );
    assert_eq!(store.usage(&ns()).await.unwrap(), (2, 9));
}

#[tokio::test]
async fn a_batched_read_answers_in_order_and_guards_the_commit_like_single_reads() {
    let (store, kv) = memory();
    store
        .compare_and_swap(&ns(), "a", None, b"1")
        .await
        .unwrap();
    store
        .compare_and_swap(&ns(), "b", None, b"2")
        .await
        .unwrap();
    let mut txn = Txn::new(ns());
    txn.compare_and_swap(&store, "mine", None, b"w")
        .await
        .unwrap();
    let keys: Vec<String> = ["b", "missing", "mine", "a", "b"]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    let got = txn.get_many(&store, &keys).await.unwrap();
    let values: Vec<Option<&[u8]>> = got
        .iter()
        .map(|e| e.as_ref().map(|e| e.value.as_slice()))
        .collect();
    assert_eq!(
        values,
        [
            Some(&b"2"[..]),
            None,
            Some(&b"w"[..]),
            Some(&b"1"[..]),
            Some(&b"2"[..])
        ]
    );
    assert!(matches!(
        txn.get_many(&store, &["bad\u{0}key".into()]).await,
        Err(KvError::Invalid(_))
    ));
    // A key the batch found absent is guarded too: another writer creating it meanwhile
    // fails this commit.
    store
        .compare_and_swap(&ns(), "missing", None, b"x")
        .await
        .unwrap();
    assert!(matches!(
        txn.commit_memory(&kv),
        Err(KvError::Changed(k)) if k == "missing"
    ));
    assert_eq!(store.get(&ns(), "mine").await.unwrap(), None);
}

#[tokio::test]
async fn adding_nothing_to_a_counter_reads_it_without_writing() {
    let (store, kv) = memory();
    store.increment(&ns(), "n", 4).await.unwrap();
    let mut reader = Txn::new(ns());
    assert_eq!(reader.increment(&store, "n", 0).await.unwrap(), 4);
    assert_eq!(reader.increment(&store, "absent", 0).await.unwrap(), 0);
    assert!(!reader.writes());
    // Still guarded: a change meanwhile fails the reader's commit.
    store.increment(&ns(), "n", 1).await.unwrap();
    assert!(matches!(
        reader.commit_memory(&kv),
        Err(KvError::Changed(k)) if k == "n"
    ));
    assert_eq!(store.get(&ns(), "absent").await.unwrap(), None);
}

#[tokio::test]
async fn a_transaction_whose_read_changed_commits_nothing() {
    let (store, kv) = memory();
    let mut first = Txn::new(ns());
    let mut second = Txn::new(ns());
    first.increment(&store, "n", 1).await.unwrap();
    second.increment(&store, "n", 1).await.unwrap();
    second
        .compare_and_swap(&store, "other", None, b"y")
        .await
        .unwrap();
    first.commit_memory(&kv).unwrap();
    assert!(matches!(
        second.commit_memory(&kv),
        Err(KvError::Changed(k)) if k == "n"
    ));
    assert_eq!(store.get(&ns(), "other").await.unwrap(), None);
    assert_eq!(store.usage(&ns()).await.unwrap(), (1, 2));
}

#[tokio::test]
async fn a_key_added_inside_a_listed_range_fails_the_commit() {
    let (store, kv) = memory();
    store
        .compare_and_swap(&ns(), "m/a", None, b"1")
        .await
        .unwrap();
    let mut lister = Txn::new(ns());
    let (items, next) = lister.list(&store, "m/", None, 10).await.unwrap();
    assert_eq!((items.len(), next), (1, None));
    lister
        .compare_and_swap(&store, "count", None, b"1")
        .await
        .unwrap();
    store
        .compare_and_swap(&ns(), "m/b", None, b"2")
        .await
        .unwrap();
    assert!(matches!(lister.commit_memory(&kv), Err(KvError::Changed(k)) if k == "m/b"));
    // Outside the range, a new key changes nothing the listing saw.
    let mut lister = Txn::new(ns());
    lister.list(&store, "m/", None, 10).await.unwrap();
    lister
        .compare_and_swap(&store, "count", None, b"1")
        .await
        .unwrap();
    store
        .compare_and_swap(&ns(), "z", None, b"3")
        .await
        .unwrap();
    lister.commit_memory(&kv).unwrap();
}

#[tokio::test]
async fn versions_handed_out_behind_a_later_commit_are_moved_above_it() {
    let (store, kv) = memory();
    let mut early = Txn::new(ns());
    let Cas::Stored(handed) = early
        .compare_and_swap(&store, "a", None, b"1")
        .await
        .unwrap()
    else {
        panic!("stored");
    };
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let Cas::Stored(later) = store
        .compare_and_swap(&ns(), "b", None, b"2")
        .await
        .unwrap()
    else {
        panic!("stored");
    };
    assert!(later > handed);
    early.commit_memory(&kv).unwrap();
    let committed = store.get(&ns(), "a").await.unwrap().unwrap().version;
    assert!(committed > later, "{committed} > {later}");
    // The version handed out matches nothing: a swap with it conflicts.
    assert!(matches!(
        store
            .compare_and_swap(&ns(), "a", Some(handed), b"x")
            .await
            .unwrap(),
        Cas::Conflict(_)
    ));
}

#[tokio::test]
async fn a_listing_hides_deleted_keys_and_shows_new_ones_in_order() {
    let (store, _) = memory();
    for key in ["p/1", "p/2", "p/3", "p/4"] {
        store
            .compare_and_swap(&ns(), key, None, b"v")
            .await
            .unwrap();
    }
    let mut txn = Txn::new(ns());
    assert!(txn.delete(&store, "p/1", None).await.unwrap());
    assert!(txn.delete(&store, "p/2", None).await.unwrap());
    txn.compare_and_swap(&store, "p/25", None, b"w")
        .await
        .unwrap();
    let (items, next) = txn.list(&store, "p/", None, 2).await.unwrap();
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["p/25", "p/3"]);
    assert_eq!(next.as_deref(), Some("p/3"));
    let (items, next) = txn.list(&store, "p/", next.as_deref(), 2).await.unwrap();
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!((keys, next), (vec!["p/4"], None));
}
