use super::{Error, Result, to_json};
use crate::host::kv as raw;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::bindings::trellis::plugin0_1_0::kv::{CasOutcome, Entry, Item, Page};

/// How often [`update`] retries after losing a race before giving up with
/// [`Error::Conflict`].
pub const UPDATE_ATTEMPTS: u32 = 8;

/// Reads a key.
pub fn get(key: &str) -> Result<Option<Entry>> {
    raw::get(key)
}

/// Reads a key holding JSON, with its version.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<(T, u64)>> {
    match raw::get(key)? {
        None => Ok(None),
        Some(entry) => {
            let value = serde_json::from_slice(&entry.value)
                .map_err(|e| Error::Internal(format!("kv {key}: {e}")))?;
            Ok(Some((value, entry.version)))
        }
    }
}

/// Writes `value` if the key is at version `expected` (`None`: only if absent).
pub fn compare_and_swap(key: &str, expected: Option<u64>, value: &[u8]) -> Result<CasOutcome> {
    raw::compare_and_swap(key, expected, value)
}

/// Stores JSON under a key only if the key does not exist; true when it was stored.
/// The usual way to deduplicate: `if !kv::insert_json(&format!("seen/{}", ev.id), &())?`.
pub fn insert_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<bool> {
    let bytes = to_json(value)?;
    Ok(matches!(
        raw::compare_and_swap(key, None, bytes.as_bytes())?,
        CasOutcome::Stored(_)
    ))
}

/// Stores JSON under a key whatever it held before.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<u64> {
    let bytes = to_json(value)?;
    let mut expected = raw::get(key)?.map(|e| e.version);
    for _ in 0..UPDATE_ATTEMPTS {
        match raw::compare_and_swap(key, expected, bytes.as_bytes())? {
            CasOutcome::Stored(version) => return Ok(version),
            CasOutcome::Conflict(current) => expected = current.map(|e| e.version),
        }
    }
    Err(Error::Conflict(format!(
        "kv {key}: too many concurrent writers"
    )))
}

/// Reads the JSON under `key`, applies `f` and writes the result, retrying on a
/// concurrent write (up to [`UPDATE_ATTEMPTS`] times). `f` may run more than once, so
/// it must not have side effects. Returns the value written.
pub fn update<T, F>(key: &str, mut f: F) -> Result<T>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> T,
{
    match try_update(key, |old| Ok(Some(f(old))))? {
        Some(value) => Ok(value),
        None => Err(Error::Internal("update wrote nothing".into())),
    }
}

/// Like [`update`], but `f` may fail (nothing is written) or return `None` (nothing is
/// written and `None` is returned).
pub fn try_update<T, F>(key: &str, mut f: F) -> Result<Option<T>>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> Result<Option<T>>,
{
    let mut current = raw::get(key)?;
    for _ in 0..UPDATE_ATTEMPTS {
        let (old, expected) = match current {
            None => (None, None),
            Some(entry) => (
                Some(
                    serde_json::from_slice(&entry.value)
                        .map_err(|e| Error::Internal(format!("kv {key}: {e}")))?,
                ),
                Some(entry.version),
            ),
        };
        let Some(new) = f(old)? else { return Ok(None) };
        let bytes = to_json(&new)?;
        match raw::compare_and_swap(key, expected, bytes.as_bytes())? {
            CasOutcome::Stored(_) => return Ok(Some(new)),
            CasOutcome::Conflict(now) => current = now,
        }
    }
    Err(Error::Conflict(format!(
        "kv {key}: too many concurrent writers"
    )))
}

/// Deletes a key; true when it existed.
pub fn delete(key: &str) -> Result<bool> {
    raw::delete(key, None)
}

/// Deletes a key only if it is still at `version`.
pub fn delete_if(key: &str, version: u64) -> Result<bool> {
    raw::delete(key, Some(version))
}

/// Lists keys starting with `prefix`, in key order, after `after`, at most `limit`.
pub fn list(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page> {
    raw::list(prefix, after, limit)
}

/// Adds `delta` to a counter and returns the new value. `increment(key, 0)` reads the counter
/// (0 when missing) without writing, so a route that only shows a count stays a read.
pub fn increment(key: &str, delta: i64) -> Result<i64> {
    raw::increment(key, delta)
}

/// A key made of `segments` joined by `/`, each escaped so that no value — a buyer id, a
/// name a person typed — can add a level or reach another key: `%` and `/` become `%25` and
/// `%2F`, control characters `%XX`. `kv::key(&["stamps", buyer])`.
pub fn key(segments: &[&str]) -> String {
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        for c in segment.chars() {
            match c {
                '%' => out.push_str("%25"),
                '/' => out.push_str("%2F"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
                c => out.push(c),
            }
        }
    }
    out
}

/// Runs `work` once per `(source, id)` — an event id, a request id another system sends —
/// and returns its result, or `None` when that pair was already done. The mark and
/// everything `work` writes are kept together when the call succeeds, and none of it when
/// anything fails, so a failure never leaves the work marked as done.
pub fn once<T>(source: &str, id: &str, work: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    if !insert_json(&key(&["once", source, id]), &true)? {
        return Ok(None);
    }
    work().map(Some)
}

pub use crate::bindings::trellis::plugin0_2_0::kv_batch::{BatchOutcome, Expected, Write};

/// Reads up to 256 keys in one host call; the entries in the order of `keys` (host-api
/// 0.2).
pub fn get_many(keys: &[String]) -> Result<Vec<Option<Entry>>> {
    crate::host::kv_batch::get_many(keys)
}

/// Makes up to 256 writes in one host call, all or none: when one write finds something
/// other than it expected, none is made and the outcome says which (host-api 0.2).
pub fn write_many(writes: &[Write]) -> Result<BatchOutcome> {
    crate::host::kv_batch::write_many(writes)
}

impl Write {
    /// Writes `value` whatever the key holds.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Write {
            key: key.into(),
            value: Some(value.into()),
            expected: Expected::Any,
        }
    }

    /// Writes `value` only if the key does not exist yet.
    pub fn insert(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Write {
            key: key.into(),
            value: Some(value.into()),
            expected: Expected::Absent,
        }
    }

    /// Deletes the key whatever it holds.
    pub fn delete(key: impl Into<String>) -> Self {
        Write {
            key: key.into(),
            value: None,
            expected: Expected::Any,
        }
    }

    /// Makes the write only if the key is at `version`.
    pub fn at(mut self, version: u64) -> Self {
        self.expected = Expected::Version(version);
        self
    }
}
