//! The `kv` capability: the installation's key-value store, in the namespace the host bound to
//! this store (the tenant's merchant, which its stores share, else its agent or partner),
//! through the invocation's transaction: reads see its own writes, and writes wait for the
//! invocation to succeed.
//!
//! `kv-batch` (host-api 0.2) is the same store, many keys a call, each key counted as one
//! operation.
//!
//! Invariant: every kv function goes through `kv_calls`, so each one is counted against the
//! per-invocation cap, refused unless kv is declared and granted, cut off at the deadline and
//! journalled — none can skip a step.

use super::{State, bounded, denied};
use crate::plugins::admission::Turn;
use crate::plugins::bindings::trellis::plugin::{kv, types};
use crate::plugins::bindings::v02::trellis::plugin0_2_0::kv_batch;
use crate::plugins::kv::{Batch, BatchWrite, Cas, Entry, Expect, KvError, MAX_BATCH, Store, Txn};

/// kv operations one invocation may make; one more traps it.
const MAX_KV_OPS: u32 = 1_000;

impl State {
    /// Counts `ops` kv operations; the reason the plugin may not use kv here, if any.
    fn kv(&mut self, ops: u32) -> wasmtime::Result<Result<(), types::Error>> {
        self.kv_ops = self.kv_ops.saturating_add(ops);
        if self.kv_ops > MAX_KV_OPS {
            return Err(self.broke(format!(
                "more than {MAX_KV_OPS} kv operations in one invocation"
            )));
        }
        if self.txn.is_some() {
            return Ok(Ok(()));
        }
        Ok(Err(denied(
            if self.invocation.manifest.capabilities.kv.is_none() {
                "kv is not declared in the manifest".into()
            } else {
                "kv is not granted to this tenant".into()
            },
        )))
    }

    fn kv_error(&self, error: KvError) -> types::Error {
        match error {
            KvError::Invalid(m) => types::Error::InvalidInput(m),
            KvError::Quota(m) => types::Error::QuotaExceeded(m),
            KvError::NotACounter(k) => {
                types::Error::InvalidInput(format!("the value at {k} is not an integer counter"))
            }
            KvError::Contention(k) | KvError::Changed(k) => types::Error::Conflict(k),
            KvError::Db(e) => self.host_fault("kv", &e),
        }
    }

    /// Runs one kv operation in the invocation's transaction, on the path every kv function
    /// shares.
    async fn kv_call<T>(
        &mut self,
        function: &'static str,
        operation: impl AsyncFnOnce(&mut Txn, &Store) -> Result<T, KvError>,
    ) -> wasmtime::Result<Result<T, types::Error>> {
        self.kv_calls(function, 1, operation).await
    }

    /// [`Self::kv_call`] for a call that counts as `ops` operations (a batch).
    async fn kv_calls<T>(
        &mut self,
        function: &'static str,
        ops: u32,
        operation: impl AsyncFnOnce(&mut Txn, &Store) -> Result<T, KvError>,
    ) -> wasmtime::Result<Result<T, types::Error>> {
        if let Err(e) = self.kv(ops)? {
            return Ok(Err(e));
        }
        if let Turn::Waiting(gate) = &self.turn {
            let Some(held) = bounded(self.deadline, gate.clone().lock_owned()).await else {
                return Err(self.deadline_passed());
            };
            self.turn = Turn::Held { _guard: held };
        }
        let services = self.services.clone();
        // Taken out for the call, so the store's state stays borrowable for the journal.
        let Some(mut txn) = self.txn.take() else {
            return Ok(Err(types::Error::Internal("kv is unavailable".into())));
        };
        let result = self
            .timed("kv", function, operation(&mut txn, &services.kv))
            .await;
        self.txn = Some(txn);
        Ok(result?.map_err(|e| self.kv_error(e)))
    }
}

fn to_entry(entry: Entry) -> kv::Entry {
    kv::Entry {
        value: entry.value,
        version: entry.version,
    }
}

impl kv::Host for State {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<kv::Entry>, types::Error>> {
        let found = self
            .kv_call("get", async |txn, store| txn.get(store, &key).await)
            .await?;
        Ok(found.map(|e| e.map(to_entry)))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<kv::CasOutcome, types::Error>> {
        let swapped = self
            .kv_call("compare-and-swap", async |txn, store| {
                txn.compare_and_swap(store, &key, expected, &value).await
            })
            .await?;
        Ok(swapped.map(|outcome| match outcome {
            Cas::Stored(v) => kv::CasOutcome::Stored(v),
            Cas::Conflict(e) => kv::CasOutcome::Conflict(e.map(to_entry)),
        }))
    }

    async fn delete(
        &mut self,
        key: String,
        expected: Option<u64>,
    ) -> wasmtime::Result<Result<bool, types::Error>> {
        self.kv_call("delete", async |txn, store| {
            txn.delete(store, &key, expected).await
        })
        .await
    }

    async fn list(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<kv::Page, types::Error>> {
        let page = self
            .kv_call("list", async |txn, store| {
                txn.list(store, &prefix, after.as_deref(), limit).await
            })
            .await?;
        Ok(page.map(|(items, next)| kv::Page {
            items: items
                .into_iter()
                .map(|(key, entry)| kv::Item {
                    key,
                    entry: to_entry(entry),
                })
                .collect(),
            next,
        }))
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, types::Error>> {
        self.kv_call("increment", async |txn, store| {
            txn.increment(store, &key, delta).await
        })
        .await
    }
}

/// A batch's size as operations: one a key (an empty batch is still a call).
fn batch_ops(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX).max(1)
}

/// A batch over the cap is bad input, refused before it is counted against the call's
/// operations.
fn oversized(len: usize) -> Option<types::Error> {
    (len > MAX_BATCH)
        .then(|| types::Error::InvalidInput(format!("a batch holds at most {MAX_BATCH} keys")))
}

impl kv_batch::Host for State {
    async fn get_many(
        &mut self,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<kv::Entry>>, types::Error>> {
        if let Some(refused) = oversized(keys.len()) {
            return Ok(Err(refused));
        }
        let found = self
            .kv_calls("get-many", batch_ops(keys.len()), async |txn, store| {
                txn.get_many(store, &keys).await
            })
            .await?;
        Ok(found.map(|entries| entries.into_iter().map(|e| e.map(to_entry)).collect()))
    }

    async fn write_many(
        &mut self,
        writes: Vec<kv_batch::Write>,
    ) -> wasmtime::Result<Result<kv_batch::BatchOutcome, types::Error>> {
        if let Some(refused) = oversized(writes.len()) {
            return Ok(Err(refused));
        }
        let writes: Vec<BatchWrite> = writes
            .into_iter()
            .map(|w| BatchWrite {
                key: w.key,
                value: w.value,
                expected: match w.expected {
                    kv_batch::Expected::Any => Expect::Any,
                    kv_batch::Expected::Absent => Expect::Absent,
                    kv_batch::Expected::Version(v) => Expect::Version(v),
                },
            })
            .collect();
        let done = self
            .kv_calls("write-many", batch_ops(writes.len()), async |txn, store| {
                txn.write_many(store, &writes).await
            })
            .await?;
        Ok(done.map(|batch| match batch {
            Batch::Stored(versions) => kv_batch::BatchOutcome::Stored(versions),
            Batch::Conflict(index, found) => kv_batch::BatchOutcome::Conflict((
                u32::try_from(index).unwrap_or(u32::MAX),
                found.map(to_entry),
            )),
        }))
    }
}
